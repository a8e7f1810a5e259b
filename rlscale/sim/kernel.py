"""The cluster model's step, compiled with numba and looped over N clusters.

Node-level detail (placement, hot spots, provisioning) does not vectorise
well across clusters in plain numpy, so one compiled loop steps every
cluster; each cluster's randomness comes from a counter-based hash of its own
key, which makes a cluster's trajectory independent of the batch it runs in.

Approximations, chosen to be simple and conservative:
- a service's ready replicas share one queue (a load balancer with a
  backend queue, as HAProxy with maxconn does), an M/M/c queue whose p95 wait
  uses Sakasegawa's approximation for the probability of waiting; its service
  time is the slowest node's that takes at least 5% of the capacity (or the
  slowest node's, when none does), which is
  how hot spots show in the tail; a backlog left at the end of a sub-step adds
  its drain time to the p95;
- the service p95 of an interval is the worst sub-step's;
- replicas placed on the same node while others still warm up share the
  later ready time;
- a node's speed is its pool's speed times a mean-reverting random drift,
  slowed by contention in proportion to the square of its CPU packing (the
  cores its replicas use, which is their request unless they declare
  ``cpu_used``), and shared out when they use more cores than it has.
"""

from __future__ import annotations

import math
import os
import sys
import types

import numpy as np
from numba import njit, prange

from rlscale.sim import params as _params
from rlscale.sim.params import (
    P_DELAY, P_GPU, P_IDLE, P_MEM, P_MIN, P_PRICE, P_SPEED, P_SPOT, P_VCPU,
    S_BATCH, S_COLD, S_CPU, S_GPU, S_MAX, S_MEM, S_MIN, S_QLIMIT, S_SERVERS, S_SLO, S_USED, S_WAIT, S_WORK,
)

ABSENT, PROVISIONING, READY = 0, 1, 2
# node_f columns
N_TIMER, N_IDLE, N_DRIFT = 0, 1, 2
# svc_i columns
I_DESIRED, I_UNPLACED = 0, 1
# out_s columns
O_ARRIVED, O_SERVED, O_DROPPED, O_BACKLOG, O_P95, O_UTIL, O_READY, O_DESIRED, O_UNPLACED, O_BUSY = range(10)
N_OUT_S = 10
# out_p columns
O_NODES_READY, O_NODES_PROV, O_PACKING = range(3)
N_OUT_P = 3
# out_c columns
O_COST, O_USEFUL_CPU, O_PAID_CPU, O_CHURN, O_REBALANCED, O_HOT_SPOT, O_REBALANCING, O_COST_RATE = range(8)
O_VIOLATION, O_DROPPED_FRACTION, O_ARRIVED_TOTAL, O_DROPPED_TOTAL, O_READY_TOTAL, O_NODES, O_P95_MAX = range(8, 15)
N_OUT_C = 15

MAX_LATENCY_S = 3600.0
# memo columns: one sub-step's outputs per service, reused while nothing changes
M_VALID, M_BACKLOG_IN, M_LEFT, M_SERVED, M_DROP, M_BUSY, M_UTIL, M_P95, M_HOT = range(9)
N_MEMO = 9
STREAM_DRIFT, STREAM_SPOT = 1, 3

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31, _S11, _S32 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11), np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)


@njit(cache=True, inline="always")
def _mix(x: np.uint64) -> np.uint64:
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


@njit(cache=True, inline="always")
def _uniform(key: np.uint64, t: int, m: int, stream: int) -> float:
    x = key ^ _mix(np.uint64(t) * _GOLD + _mix(np.uint64(m) * _GOLD + np.uint64(stream)))
    return (float(_mix(x) >> _S11) + 0.5) * (1.0 / 9007199254740992.0)


@njit(cache=True, inline="always")
def _normal(key: np.uint64, t: int, m: int) -> float:
    """A cheap unit-variance, zero-mean draw (triangular: the sum of two uniforms from one hash).

    Speed drift only needs a symmetric, bounded shock of the right variance;
    Box-Muller's log and cos per node per step cost about a third of the kernel.
    """
    x = _mix(key ^ _mix(np.uint64(t) * _GOLD + _mix(np.uint64(m) * _GOLD + np.uint64(STREAM_DRIFT))))
    u1 = float(x >> _S32) * (1.0 / 4294967296.0)
    u2 = float(x & _LOW32) * (1.0 / 4294967296.0)
    return (u1 + u2 - 1.0) * 2.449489742783178


@njit(cache=True, inline="always")
def _used(n, m, rep, svc_f, col):
    total = 0.0
    for s in range(rep.shape[1]):
        total += rep[n, s, m] * svc_f[s, col]
    return total


@njit(cache=True, inline="always")
def _fits_on(n, s, m, rep, svc_f, pool_f, node_pool):
    p = node_pool[m]
    eps = 1e-9
    if _used(n, m, rep, svc_f, S_CPU) + svc_f[s, S_CPU] > pool_f[p, P_VCPU] + eps:
        return False
    if _used(n, m, rep, svc_f, S_MEM) + svc_f[s, S_MEM] > pool_f[p, P_MEM] + eps:
        return False
    if _used(n, m, rep, svc_f, S_GPU) + svc_f[s, S_GPU] > pool_f[p, P_GPU] + eps:
        return False
    return True


@njit(cache=True, inline="always")
def _add_warming(n, s, m, count, rep, warming, warm_left, node_state, node_f, svc_f):
    if count <= 0:
        return
    wait = node_f[n, m, N_TIMER] if node_state[n, m] == PROVISIONING else 0.0
    rep[n, s, m] += count
    warming[n, s, m] += count
    warm_left[n, s, m] = max(warm_left[n, s, m], wait + svc_f[s, S_COLD])
    node_f[n, m, N_IDLE] = 0.0


@njit(cache=True, inline="always")
def _remove_from_node(n, s, m, count, rep, warming, warm_left):
    """Remove replicas from one node, warming ones first."""
    w = min(count, warming[n, s, m])
    warming[n, s, m] -= w
    if warming[n, s, m] == 0:
        warm_left[n, s, m] = 0.0
    rep[n, s, m] -= count


@njit(cache=True, inline="always")
def _place(n, s, rep, warming, warm_left, node_state, node_f, svc_f, pool_f, pool_range, node_pool, pref, fits, svc_i):
    """First fit in pool preference order; opens a node (cluster-autoscaler style) when nothing fits."""
    P = pool_f.shape[0]
    while svc_i[n, s, I_UNPLACED] > 0:
        target = -1
        for r in range(P):
            p = pref[s, r]
            if p < 0:
                break
            for m in range(pool_range[p, 0], pool_range[p, 1]):
                if node_state[n, m] != ABSENT and _fits_on(n, s, m, rep, svc_f, pool_f, node_pool):
                    target = m
                    break
            if target >= 0:
                break
        if target < 0:
            for r in range(P):
                p = pref[s, r]
                if p < 0:
                    break
                if not fits[s, p]:
                    continue
                for m in range(pool_range[p, 0], pool_range[p, 1]):
                    if node_state[n, m] == ABSENT:
                        node_state[n, m] = PROVISIONING
                        node_f[n, m, N_TIMER] = pool_f[p, P_DELAY]
                        node_f[n, m, N_IDLE] = 0.0
                        node_f[n, m, N_DRIFT] = 0.0
                        if pool_f[p, P_DELAY] <= 0.0:
                            node_state[n, m] = READY
                        target = m
                        break
                if target >= 0:
                    break
        if target < 0:
            return
        _add_warming(n, s, target, 1, rep, warming, warm_left, node_state, node_f, svc_f)
        svc_i[n, s, I_UNPLACED] -= 1


@njit(cache=True, inline="always")
def _scale_to(n, s, desired, rep, warming, warm_left, node_state, node_f, svc_f, svc_i):
    """Add unplaced replicas, or remove them the way a Kubernetes ReplicaSet picks victims.

    Unscheduled first, then not-ready (warming), then ready replicas on the node
    that holds the most replicas of the service (newest node on ties). That
    keeps replicas spread, and so leaves half-empty nodes behind after a
    scale-down: the fragmentation that 'consolidate' exists to repair.
    """
    M = rep.shape[2]
    placed = 0
    for m in range(M):
        placed += rep[n, s, m]
    total = placed + svc_i[n, s, I_UNPLACED]
    if desired >= total:
        svc_i[n, s, I_UNPLACED] += desired - total
        return
    excess = total - desired
    take = min(excess, svc_i[n, s, I_UNPLACED])
    svc_i[n, s, I_UNPLACED] -= take
    excess -= take
    for m in range(M):
        if excess == 0:
            break
        w = min(excess, warming[n, s, m])
        if w > 0:
            _remove_from_node(n, s, m, w, rep, warming, warm_left)
            excess -= w
    while excess > 0:
        best = -1
        most = 0
        for m in range(M):
            if rep[n, s, m] >= most and rep[n, s, m] > 0:
                most = rep[n, s, m]
                best = m
        if best < 0:
            break
        _remove_from_node(n, s, best, 1, rep, warming, warm_left)
        excess -= 1


@njit(cache=True, inline="always")
def _apply_layout(n, new, rep, warming, warm_left, node_state, node_f, svc_f):
    """Move to a new replica layout on ready nodes; moved replicas restart (cold start)."""
    S, M = rep.shape[1], rep.shape[2]
    moved = 0
    for s in range(S):
        for m in range(M):
            if node_state[n, m] != READY:
                continue
            diff = new[s, m] - rep[n, s, m]
            if diff < 0:
                _remove_from_node(n, s, m, -diff, rep, warming, warm_left)
    for s in range(S):
        for m in range(M):
            if node_state[n, m] != READY:
                continue
            diff = new[s, m] - rep[n, s, m]
            if diff > 0:
                _add_warming(n, s, m, diff, rep, warming, warm_left, node_state, node_f, svc_f)
                moved += diff
    return moved


@njit(cache=True, inline="always")
def _has_room(s, m, used_cpu, used_mem, used_gpu, svc_f, pool_f, node_pool, pref):
    """One more replica of ``s`` may go on node ``m`` of a layout being built: its pool is one of the service's, and it fits.

    Every array is read up front, with ``|`` rather than ``or`` and no early
    return. Inlining binds each array argument to a new reference (an
    NRT_incref) that is released after its last read (an NRT_decref); with
    reads behind short-circuits and early returns, those releases land in
    different branches, numba's reference-count pruning leaves four pairs in
    place, and the calls ran for every (replica, node) that consolidate,
    spread and drain tried: their rebalances took about 8x as long.
    """
    p = node_pool[m]
    over = ((used_cpu[m] + svc_f[s, S_CPU] > pool_f[p, P_VCPU] + 1e-9)
            | (used_mem[m] + svc_f[s, S_MEM] > pool_f[p, P_MEM] + 1e-9)
            | (used_gpu[m] + svc_f[s, S_GPU] > pool_f[p, P_GPU] + 1e-9))
    allowed = False
    for r in range(pref.shape[1]):
        if pref[s, r] == p:
            allowed = True
    return allowed and not over


@njit(cache=True, inline="always")
def _rebalance(n, verb, rep, warming, warm_left, node_state, node_f, svc_f, pool_f, node_pool, pref, new):
    """consolidate: first-fit-decreasing into the fullest nodes; spread: even out replicas per node."""
    S, M = rep.shape[1], rep.shape[2]
    counts = np.zeros(S, dtype=np.int64)
    for s in range(S):
        for m in range(M):
            new[s, m] = 0
            if node_state[n, m] == READY:
                counts[s] += rep[n, s, m]
    order_nodes = np.argsort(np.array([-_used(n, m, rep, svc_f, S_CPU) for m in range(M)]))
    order_svc = np.argsort(-svc_f[:, S_CPU])
    used_cpu = np.zeros(M)
    used_mem = np.zeros(M)
    used_gpu = np.zeros(M)
    ok = True
    for si in range(S):
        s = order_svc[si]
        for _ in range(counts[s]):
            best = -1
            best_score = 1e300
            for mi in range(M):
                m = order_nodes[mi] if verb == 1 else mi
                if node_state[n, m] != READY:
                    continue
                if not _has_room(s, m, used_cpu, used_mem, used_gpu, svc_f, pool_f, node_pool, pref):
                    continue
                if verb == 1:
                    best = m
                    break
                score = new[s, m] * 1e6 + used_cpu[m] / pool_f[node_pool[m], P_VCPU]
                if score < best_score:
                    best_score = score
                    best = m
            if best < 0:
                ok = False
                break
            new[s, best] += 1
            used_cpu[best] += svc_f[s, S_CPU]
            used_mem[best] += svc_f[s, S_MEM]
            used_gpu[best] += svc_f[s, S_GPU]
        if not ok:
            break
    if not ok:
        return 0
    if verb == 1:
        freed = 0
        for m in range(M):
            if node_state[n, m] == READY and used_cpu[m] == 0.0 and _used(n, m, rep, svc_f, S_CPU) > 0.0:
                freed += 1
        if freed == 0:
            return 0
    moved = _apply_layout(n, new, rep, warming, warm_left, node_state, node_f, svc_f)
    if verb == 1:
        for m in range(M):
            if node_state[n, m] == READY and _used(n, m, rep, svc_f, S_CPU) == 0.0:
                node_f[n, m, N_IDLE] = pool_f[node_pool[m], P_IDLE]
    return moved


@njit(cache=True, inline="always")
def _drain_one(n, rep, warming, warm_left, node_state, node_f, svc_f, pool_f, node_pool, pref, new):
    """drain: move the replicas of the least-used ready node into the others' room, fullest first; all or nothing.

    What the cluster autoscaler and Kubernetes' cordon-and-evict do: one node
    at a time, so only that node's replicas restart, where 'consolidate'
    repacks the whole cluster at once.
    """
    S, M = rep.shape[1], rep.shape[2]
    used_cpu = np.zeros(M)
    used_mem = np.zeros(M)
    used_gpu = np.zeros(M)
    victim = -1
    for m in range(M):
        used_cpu[m] = _used(n, m, rep, svc_f, S_CPU)
        used_mem[m] = _used(n, m, rep, svc_f, S_MEM)
        used_gpu[m] = _used(n, m, rep, svc_f, S_GPU)
        if node_state[n, m] == READY and used_cpu[m] > 0.0 and (victim < 0 or used_cpu[m] < used_cpu[victim]):
            victim = m
    if victim < 0:
        return 0
    for m in range(M):
        for s in range(S):
            new[s, m] = rep[n, s, m] if m != victim else 0
    order_nodes = np.argsort(-used_cpu)
    order_svc = np.argsort(-svc_f[:, S_CPU])
    for si in range(S):
        s = order_svc[si]
        for _ in range(rep[n, s, victim]):
            best = -1
            for mi in range(M):
                m = order_nodes[mi]
                if m == victim or node_state[n, m] != READY:
                    continue
                if not _has_room(s, m, used_cpu, used_mem, used_gpu, svc_f, pool_f, node_pool, pref):
                    continue
                best = m
                break
            if best < 0:
                return 0
            new[s, best] += 1
            used_cpu[best] += svc_f[s, S_CPU]
            used_mem[best] += svc_f[s, S_MEM]
            used_gpu[best] += svc_f[s, S_GPU]
    moved = _apply_layout(n, new, rep, warming, warm_left, node_state, node_f, svc_f)
    node_f[n, victim, N_IDLE] = pool_f[node_pool[victim], P_IDLE]
    return moved


@njit(cache=True, inline="always")
def _queue_p95(rho, c, rate, service_s, wait_scale):
    """p95 response of a G/G/c queue: the slow-node service time plus the M/M/c wait tail (Sakasegawa's P(wait)).

    ``wait_scale`` is Kingman's (1 + cv^2) / 2 for Poisson arrivals: 1 for
    exponential service (M/M/c exactly), 1/2 for constant service.
    """
    if rho >= 0.999:
        return service_s * 20.0
    if rho <= 0.0:
        return service_s
    pw = min(1.0, rho ** (math.sqrt(2.0 * (max(1.0, c) + 1.0)) - 1.0))
    wait = math.log(pw / 0.05) / (rate * (1.0 - rho)) if pw > 0.05 else 0.0
    return service_s + wait * wait_scale


def _step_batch(
    pool_f, pool_range, node_pool, svc_f, pref, fits, misc,
    node_state, node_f, rep, warming, warm_left, svc_i, backlog, rebalance_left, key, t, time_s,
    desired_in, rebalance_in, arrivals, out_s, out_p, out_c, buf_i, buf_f, buf_m,
):
    """Advance every cluster by one decision interval, writing its metrics into out_*.

    Its step count ``t`` and clock ``time_s`` advance here too.
    """
    N, S, M = rep.shape
    P = pool_f.shape[0]
    step_s = misc[0]
    substeps = int(misc[1])
    dt = step_s / substeps
    drift_sigma, drift_rev, contention = misc[2], misc[3], misc[4]
    for n in prange(N):
        speed = buf_f[n, 0]
        active = buf_i[n, 0, 0]
        scratch = buf_i[n, 1]
        memo = buf_m[n]
        out_s[n, :, :] = 0.0
        out_p[n, :, :] = 0.0
        out_c[n, :] = 0.0
        # 1. scale each service to its (clamped) desired count
        churn = 0
        for s in range(S):
            d = min(max(int(desired_in[n, s]), int(svc_f[s, S_MIN])), int(svc_f[s, S_MAX]))
            churn += abs(d - svc_i[n, s, I_DESIRED])
            svc_i[n, s, I_DESIRED] = d
            _scale_to(n, s, d, rep, warming, warm_left, node_state, node_f, svc_f, svc_i)
        out_c[n, O_CHURN] = churn
        # 2. rebalance (refused while a previous one is still restarting replicas)
        verb = int(rebalance_in[n])
        if verb != 0 and rebalance_left[n] <= 0.0:
            if verb == 3:
                moved = _drain_one(n, rep, warming, warm_left, node_state, node_f, svc_f, pool_f, node_pool, pref, scratch)
            else:
                moved = _rebalance(n, verb, rep, warming, warm_left, node_state, node_f, svc_f, pool_f, node_pool, pref, scratch)
            if moved > 0:
                out_c[n, O_REBALANCED] = 1.0
                cold = 0.0
                for s in range(S):
                    cold = max(cold, svc_f[s, S_COLD])
                rebalance_left[n] = cold
        # 3. place pending replicas, opening nodes when needed
        for s in range(S):
            _place(n, s, rep, warming, warm_left, node_state, node_f, svc_f, pool_f, pool_range, node_pool, pref, fits, svc_i)
        # node speeds for this interval; only nodes that exist take part below
        n_active = 0
        for m in range(M):
            if node_state[n, m] != ABSENT:
                active[n_active] = m
                n_active += 1
        for ai in range(n_active):
            m = active[ai]
            p = node_pool[m]
            pack = _used(n, m, rep, svc_f, S_USED) / pool_f[p, P_VCPU]
            # replicas that use more cores than the node has share it (pack > 1 only with replica.cpu_used > cpu)
            full = min(pack, 1.0)
            speed[m] = pool_f[p, P_SPEED] * math.exp(node_f[n, m, N_DRIFT]) * (1.0 - contention * full * full) / max(pack, 1.0)
        # 4. sub-steps: provisioning, warm-up, traffic, latency, cost
        hot = 0.0
        memo[:, M_VALID] = 0.0
        for k in range(substeps):
            changed = False
            for ai in range(n_active):
                m = active[ai]
                if node_state[n, m] == PROVISIONING:
                    node_f[n, m, N_TIMER] -= dt
                    if node_f[n, m, N_TIMER] <= 1e-9:
                        node_f[n, m, N_TIMER] = 0.0
                        node_state[n, m] = READY
                        changed = True
                if node_state[n, m] != ABSENT:
                    p = node_pool[m]
                    out_c[n, O_COST] += pool_f[p, P_PRICE] * dt / 3600.0
                    out_c[n, O_PAID_CPU] += pool_f[p, P_VCPU] * dt
            for s in range(S):
                for ai in range(n_active):
                    m = active[ai]
                    if warming[n, s, m] > 0:
                        warm_left[n, s, m] -= dt
                        if warm_left[n, s, m] <= 1e-9:
                            warming[n, s, m] = 0
                            warm_left[n, s, m] = 0.0
                            changed = True
            hot_k = 0.0
            for s in range(S):
                lam = arrivals[n, s]
                if not changed and memo[s, M_VALID] > 0.0 and memo[s, M_BACKLOG_IN] == backlog[n, s]:
                    # same inputs as the previous sub-step: same outputs, without the arithmetic
                    backlog[n, s] = memo[s, M_LEFT]
                    out_s[n, s, O_ARRIVED] += lam * dt
                    out_s[n, s, O_SERVED] += memo[s, M_SERVED]
                    out_s[n, s, O_DROPPED] += memo[s, M_DROP]
                    out_s[n, s, O_BUSY] += memo[s, M_BUSY]
                    out_c[n, O_USEFUL_CPU] += memo[s, M_BUSY]
                    out_s[n, s, O_UTIL] += memo[s, M_UTIL]
                    out_s[n, s, O_P95] = max(out_s[n, s, O_P95], memo[s, M_P95])
                    hot_k = max(hot_k, memo[s, M_HOT])
                    continue
                memo[s, M_BACKLOG_IN] = backlog[n, s]
                busy = 0.0
                hot_s = 0.0
                util_add = 0.0
                work = svc_f[s, S_WORK]
                servers = svc_f[s, S_SERVERS]
                batch = svc_f[s, S_BATCH] > 0.5
                ready = 0
                cap_rate = 0.0
                for ai in range(n_active):
                    m = active[ai]
                    if node_state[n, m] == READY:
                        r = rep[n, s, m] - warming[n, s, m]
                        ready += r
                        cap_rate += r * servers * speed[m] / work
                demand = lam * dt + backlog[n, s]
                served = min(demand, cap_rate * dt)
                p95 = 0.0
                if ready > 0:
                    c = ready * servers
                    busy = served * ready * svc_f[s, S_USED] / cap_rate
                    util_add = min(1.0, served / (cap_rate * dt)) / substeps
                    slowest = 0.0
                    slowest_any = 0.0
                    for ai in range(n_active):
                        m = active[ai]
                        if node_state[n, m] == READY:
                            r = rep[n, s, m] - warming[n, s, m]
                            if r > 0:
                                slowest_any = max(slowest_any, work / speed[m])
                                if r * servers * speed[m] / work >= 0.05 * cap_rate:
                                    slowest = max(slowest, work / speed[m])
                    if slowest == 0.0:
                        slowest = slowest_any  # no node holds 5% of the capacity: the slowest one still serves
                    hot_s = slowest * cap_rate / c - 1.0
                    if not batch:
                        p95 = _queue_p95(lam / cap_rate, c, cap_rate, slowest, svc_f[s, S_WAIT])
                elif demand > 0.0:
                    util_add = 1.0 / substeps
                left = demand - served
                drop = max(0.0, left - svc_f[s, S_QLIMIT])
                left -= drop
                backlog[n, s] = left
                if left > 0.0 and (batch or left > 0.05 * lam * dt):
                    p95 += left / cap_rate if cap_rate > 0.0 else MAX_LATENCY_S
                p95 = min(MAX_LATENCY_S, p95)
                out_s[n, s, O_ARRIVED] += lam * dt
                out_s[n, s, O_SERVED] += served
                out_s[n, s, O_DROPPED] += drop
                out_s[n, s, O_BUSY] += busy
                out_c[n, O_USEFUL_CPU] += busy
                out_s[n, s, O_UTIL] += util_add
                out_s[n, s, O_P95] = max(out_s[n, s, O_P95], p95)
                hot_k = max(hot_k, hot_s)
                memo[s, M_VALID] = 1.0
                memo[s, M_LEFT] = left
                memo[s, M_SERVED] = served
                memo[s, M_DROP] = drop
                memo[s, M_BUSY] = busy
                memo[s, M_UTIL] = util_add
                memo[s, M_P95] = p95
                memo[s, M_HOT] = hot_s
            hot = max(hot, hot_k)
        rebalance_left[n] = max(0.0, rebalance_left[n] - step_s)
        # 5. end of interval: spot interruptions, speed drift, idle release
        for m in range(M):
            if node_state[n, m] == ABSENT:
                continue
            p = node_pool[m]
            rate = pool_f[p, P_SPOT]
            if rate > 0.0 and _uniform(key[n], t[n], m, STREAM_SPOT) < 1.0 - math.exp(-rate * step_s / 3600.0):
                for s in range(S):
                    svc_i[n, s, I_UNPLACED] += rep[n, s, m]
                    rep[n, s, m] = 0
                    warming[n, s, m] = 0
                    warm_left[n, s, m] = 0.0
                node_state[n, m] = ABSENT
                continue
            if drift_sigma > 0.0:
                node_f[n, m, N_DRIFT] = (1.0 - drift_rev) * node_f[n, m, N_DRIFT] + drift_sigma * _normal(key[n], t[n], m)
        for p in range(P):
            alive = 0
            for m in range(pool_range[p, 0], pool_range[p, 1]):
                if node_state[n, m] != ABSENT:
                    alive += 1
            for m in range(pool_range[p, 0], pool_range[p, 1]):
                if node_state[n, m] == ABSENT:
                    if alive < pool_f[p, P_MIN]:
                        # the node group replaces an interrupted spot node to keep its minimum size
                        node_state[n, m] = PROVISIONING if pool_f[p, P_DELAY] > 0.0 else READY
                        node_f[n, m, N_TIMER] = pool_f[p, P_DELAY]
                        node_f[n, m, N_IDLE] = 0.0
                        node_f[n, m, N_DRIFT] = 0.0
                        alive += 1
                    continue
                if _used(n, m, rep, svc_f, S_CPU) > 0.0 or _used(n, m, rep, svc_f, S_GPU) > 0.0:
                    node_f[n, m, N_IDLE] = 0.0
                    continue
                node_f[n, m, N_IDLE] += step_s
                if node_f[n, m, N_IDLE] >= pool_f[p, P_IDLE] and alive > pool_f[p, P_MIN]:
                    node_state[n, m] = ABSENT
                    node_f[n, m, N_TIMER] = 0.0
                    node_f[n, m, N_IDLE] = 0.0
                    node_f[n, m, N_DRIFT] = 0.0
                    alive -= 1
        # 6. end-of-interval gauges
        for s in range(S):
            ready = 0
            for m in range(M):
                if node_state[n, m] == READY:
                    ready += rep[n, s, m] - warming[n, s, m]
            out_s[n, s, O_READY] = ready
            out_c[n, O_READY_TOTAL] += ready
            out_c[n, O_P95_MAX] = max(out_c[n, O_P95_MAX], out_s[n, s, O_P95])
            out_s[n, s, O_DESIRED] = svc_i[n, s, I_DESIRED]
            out_s[n, s, O_UNPLACED] = svc_i[n, s, I_UNPLACED]
            out_s[n, s, O_BACKLOG] = backlog[n, s]
        for p in range(P):
            req = 0.0
            for m in range(pool_range[p, 0], pool_range[p, 1]):
                if node_state[n, m] == READY:
                    out_p[n, p, O_NODES_READY] += 1.0
                    req += _used(n, m, rep, svc_f, S_CPU)
                elif node_state[n, m] == PROVISIONING:
                    out_p[n, p, O_NODES_PROV] += 1.0
                if node_state[n, m] != ABSENT:
                    out_c[n, O_COST_RATE] += pool_f[p, P_PRICE]
                    out_c[n, O_NODES] += 1.0
            if out_p[n, p, O_NODES_READY] > 0:
                out_p[n, p, O_PACKING] = req / (out_p[n, p, O_NODES_READY] * pool_f[p, P_VCPU])
        arrived = 0.0
        dropped = 0.0
        for s in range(S):
            arrived += out_s[n, s, O_ARRIVED]
            dropped += out_s[n, s, O_DROPPED]
            if out_s[n, s, O_P95] > svc_f[s, S_SLO]:
                out_c[n, O_VIOLATION] += 1.0 / S
        # min(): with a deep backlog and a trickle of arrivals, rounding can drop a hair more than arrived
        out_c[n, O_DROPPED_FRACTION] = min(1.0, dropped / arrived) if arrived > 0.0 else 0.0
        out_c[n, O_ARRIVED_TOTAL] = arrived
        out_c[n, O_DROPPED_TOTAL] = dropped
        out_c[n, O_HOT_SPOT] = min(10.0, hot)
        out_c[n, O_REBALANCING] = 1.0 if rebalance_left[n] > 0.0 else 0.0
        t[n] += 1
        time_s[n] += step_s  # here, not in numpy: an in-place add on a small array costs ~1 us there


@njit(cache=True, inline="always")
def reset_cluster(
    n, desired0, pool_f, pool_range, node_pool, svc_f, pref, fits,
    node_state, node_f, rep, warming, warm_left, svc_i, backlog, rebalance_left, t,
):
    """Empty cluster n, open each pool's minimum nodes, and place desired0 replicas already warm."""
    S, M = rep.shape[1], rep.shape[2]
    node_state[n, :] = ABSENT
    node_f[n, :, :] = 0.0
    rep[n, :, :] = 0
    warming[n, :, :] = 0
    warm_left[n, :, :] = 0.0
    backlog[n, :] = 0.0
    rebalance_left[n] = 0.0
    t[n] = 0
    for p in range(pool_f.shape[0]):
        for i in range(int(pool_f[p, P_MIN])):
            node_state[n, pool_range[p, 0] + i] = READY
    for s in range(S):
        d = min(max(int(desired0[s]), int(svc_f[s, S_MIN])), int(svc_f[s, S_MAX]))
        svc_i[n, s, I_DESIRED] = d
        svc_i[n, s, I_UNPLACED] = d
        _place(n, s, rep, warming, warm_left, node_state, node_f, svc_f, pool_f, pool_range, node_pool, pref, fits, svc_i)
    for m in range(M):
        if node_state[n, m] == PROVISIONING:
            node_state[n, m] = READY
            node_f[n, m, N_TIMER] = 0.0
    for s in range(S):
        for m in range(M):
            warming[n, s, m] = 0
            warm_left[n, s, m] = 0.0


def _renamed(func, name: str):
    """A copy of ``func`` under another name: numba's on-disk cache is keyed by the function's name,
    so the serial and the parallel compilation of one function would otherwise load each other."""
    copy = types.FunctionType(func.__code__, func.__globals__, name, func.__defaults__, func.__closure__)
    copy.__qualname__ = name
    return copy


step_serial = njit(cache=True)(_step_batch)
step_parallel = njit(cache=True, parallel=True)(_renamed(_step_batch, "_step_batch_parallel"))
PARALLEL_FROM = 256


COMPILE_NOTICE = "compiling the simulator, once per machine, ~1 min (numba caches it on disk)"
_ready: set[int] = set()  # id() of the kernels this process has already called


def will_compile(dispatcher) -> bool:
    """Whether the first call of a ``cache=True`` numba function will compile it rather than load it from disk.

    True when this process has no compilation of it and the on-disk cache holds
    none that matches the source file (numba's index is stamped with the
    file's modification time and size, and comes back empty when they differ).
    """
    if dispatcher.signatures:
        return False
    try:
        return not dispatcher._cache._cache_file._load_index()
    except Exception:  # noqa: BLE001 - a numba without this cache layout: say nothing rather than fail
        return False


def announce_compile(dispatcher, out=None) -> bool:
    """Print ``COMPILE_NOTICE`` once per process, to stderr, if ``dispatcher`` is about to compile; returns whether it did."""
    global _announced
    if _announced or not will_compile(dispatcher):
        return False
    _announced = True
    print(COMPILE_NOTICE, file=out or sys.stderr, flush=True)
    return True


_announced = False


def first_call(dispatcher) -> None:
    """Before each call of a compiled entry point: on the first one, which may spend a minute compiling, say so."""
    if id(dispatcher) not in _ready:
        announce_compile(dispatcher)
        _ready.add(id(dispatcher))


def stale_with(dispatcher, *modules: types.ModuleType) -> None:
    """Make ``dispatcher``'s on-disk cache stale when the source of any of ``modules`` changes, not only its own.

    numba stamps a cached compilation with its own file's modification time and size only, yet it holds the
    code of the compiled functions it calls and the constants it reads from other files: without this, a
    caller in another file would keep running an edited kernel's old code from its cache.
    """
    try:
        cache_file = dispatcher._cache._cache_file
        stamps = [(os.stat(m.__file__).st_mtime, os.stat(m.__file__).st_size) for m in modules]
        cache_file._source_stamp = (cache_file._source_stamp, *stamps)
    except AttributeError:  # a numba without this cache layout: compile in each process rather than run stale code
        from numba.core.caching import NullCache

        dispatcher._cache = NullCache()


SOURCES = (sys.modules[__name__], _params)
"""The modules whose source the kernels' compiled code comes from: a caller that fuses a kernel is stale with them."""
stale_with(step_serial, _params)
stale_with(step_parallel, _params)


def step_batch(*args):
    """Step every cluster; threads pay off only for large batches."""
    n = args[7].shape[0]
    kernel = step_parallel if n >= PARALLEL_FROM else step_serial
    first_call(kernel)
    return kernel(*args)
