"""The perfect-foresight oracle, and the proven cost floor that brackets the optimum.

What it is for
    Every policy's ``cost_usd`` is reported as a ratio to the oracle's: the
    oracle knows the whole episode in advance (every interval's arrivals, and
    the simulator itself), and buys the least capacity that keeps every
    interval within the SLO. The true optimum of an episode, the cheapest
    sequence of actions after which no interval violates its SLO in the real
    simulator, is bracketed by two numbers computed here::

        cost_floor(...)  <=  optimum  <=  cost of the oracle policy

    The oracle's cost is an achieved cost (it runs through the real
    simulator like any policy, so its SLO record is checked, not assumed);
    the floor is a lower bound proven below for any policy. Both are exact
    statements about the simulator in ``rlscale/sim/kernel.py``; neither relies
    on an idealised model of it.

The oracle policy (an upper bound on the optimum)
    1. *Plan* in the planning model: service ``s`` runs every replica at speed
       ``v_s = min(speed of its pools) * (1 - contention)`` (a fully packed
       node, no drift), so ``R`` ready replicas serve ``R * servers * v_s /
       work_s`` requests/s with the simulator's own p95 formula
       (``kernel._queue_p95``). ``need[t]`` is the fewest replicas (within
       [min, max]) whose p95 at interval ``t``'s arrivals is within the SLO
       (batch services: whose capacity covers the arrivals, so no backlog
       ages). A replica asked for at step ``t`` is ready for the whole of
       interval ``t + L`` with ``L = ceil((provision_delay + cold_start -
       dt) / step_s)`` (``dt`` the sub-step; the kernel counts both timers in
       sub-steps), even if it needs a new node. The plan is
       ``desired[t] = max(need[t], ..., need[t + L])``.

       *Exact in the planning model.* A plan is feasible iff every replica
       needed at ``k`` is asked for by ``k - L`` and kept until ``k``, i.e.
       ``desired[t] >= need[k]`` for all ``t`` in ``[k - L, k]``; so the
       feasible plans are exactly those with ``desired >= max(need[t..t+L])``
       pointwise, and that pointwise minimum is itself feasible. Node cost is
       non-decreasing in the replicas asked for at every step (more replicas
       never need fewer nodes, nor release one sooner), so the pointwise
       minimum is the cheapest feasible plan: no search or DP is needed.
    2. *Repair* against the real simulator: the planning model cannot see
       node speed drift, hot spots or spot interruptions, so the oracle
       replays its plan on a copy of the episode's simulator (the episode is
       deterministic given its seed and the actions), and wherever an
       interval violates the SLO or drops a request it raises that interval's
       ``need`` (by ``max(1, 3%)``) and replays the affected episodes, until
       no interval violates or ``MAX_REPAIRS`` passes are spent (then the
       episode is infeasible for this scheme, e.g. ``max_nodes`` too small,
       and ``unresolved`` says how many intervals still violate). ``need``
       only grows, so this terminates; it grows only where the real simulator
       showed a violation, so the plan stays as close to the planning-model
       optimum as the SLO allows.

    The oracle never rebalances (moving a replica restarts it, which only
    costs capacity), and acting from the repaired plan reproduces the
    replayed episode exactly, so its SLO record in ``run_policy`` is the one
    the repair loop checked.

The cost floor (a lower bound on the optimum, proven)
    Claim: on an episode (its arrivals and simulator key), every policy whose
    run meets the SLO in every interval and drops no request pays at least
    ``cost_floor``. Proof, interval by interval; write ``dt`` for the
    sub-step, ``lam`` for the interval's arrival rate of a service and
    ``cap`` for its ready capacity (requests/s) at some sub-step:

    (a) *Node speeds are bounded.* A node's drift ``x`` starts at 0 when its
        slot is opened by placement or released idle, is frozen while the
        slot is interrupted by a spot event (and may be restored from there),
        and otherwise follows ``x <- a x + sigma z(key, t, m)`` at the end of
        interval ``t``, where ``z`` is the kernel's counter-based normal of
        the episode key, the interval and the slot, and spot events are the
        kernel's counter-based uniforms: neither depends on the policy. So
        ``x`` at interval ``k`` is at most ``U_k(m)`` with ``U_0 = 0``,
        ``U_{k+1} = max(0, a U_k + sigma z_k, U_k if a spot event hits m at k,
        F_k)`` and ``F_{k+1} = max(F_k, U_k if spot at k)`` (the values a
        frozen slot can hold), by induction over the three transitions. A
        node's speed is ``pool_speed * exp(x) * (1 - c pack^2) <= vmax_p(k) =
        pool_speed * max over the pool's slots of exp(U_k(m))``.
    (b) *Needed capacity.* The kernel's p95 at a sub-step is
        ``f = _queue_p95(lam / cap, servers, cap, slowest)`` plus a
        non-negative backlog term. ``f`` grows with ``slowest`` and, below
        utilisation 0.999, shrinks as ``cap`` or the server count grows. The
        server count is at most ``max_replicas * servers_per_replica``.
        ``slowest`` is the largest ``work / speed`` among nodes holding at
        least 5% of the capacity; it is at least ``work / vmax`` unless every
        node holds less than 5%, which needs at least 21 nodes. So in an
        interval that meets the SLO either (A) ``cap >= C_A``, the least
        capacity at which ``f`` with ``slowest = work / vmax`` and the
        largest server count is within the SLO (and if ``20 * work / vmax``
        is within the SLO, at utilisation >= 0.999 only the backlog can
        violate: see (B)), or (B) the service spans at least 21 nodes and
        ``cap >= C_B = lam * min(0.95, dt / (dt + slo))``: with less, a
        sub-step leaves a backlog ``left >= (lam - cap) dt > 0.05 lam dt``
        (no request is dropped, so none leaves the queue otherwise), whose
        term ``left / cap`` exceeds the SLO. Batch services have only the
        backlog term, so ``cap >= C_B`` with ``min(1, ...)``; ``lam > 0``
        needs a ready replica.
    (c) *Nodes that capacity needs.* Ready replicas sit on ready nodes, and
        a node that is ready at any sub-step of an interval exists (is paid)
        for the whole interval: nodes are opened at its start and removed
        only at its end. On a node of pool ``p`` holding ``r`` ready replicas
        of a service, and nothing else, the ready capacity is at most
        ``r (1 - c (r cpu / vcpu)^2) servers vmax_p / work``, at most
        ``h_p`` (its maximum over the ``r`` that fit). So a single-service
        cluster pays at least the cheapest (LP relaxation over pools, integer
        for one pool) set of nodes with ``sum n_p h_p >= C`` and ``n_p >=
        min_nodes`` for pools without spot interruptions (those never drop
        below their minimum). With several services, each ready replica's
        capacity is at most ``servers vmax_p / work`` per ``cpu`` (and per
        GiB, per GPU) it holds, and a pool's nodes cost ``price / vcpu`` per
        vCPU, which bounds the cost by the sum over services of the cheapest
        price per unit of capacity; the floor takes the largest of the vCPU,
        memory and GPU bounds and the minimum nodes' cost.
    (d) Each interval costs at least the smaller of the costs of cases (A)
        and (B) (case (B) with at least 21 nodes of the service's cheapest
        pool), times ``step_s / 3600``; the floor is their sum.

    The floor is loose by the drift bound (a policy cannot pick its nodes'
    drift, the bound assumes it can) and by nodes that linger idle,
    provision or warm up, which no bound here charges for.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from rlscale.config import ConfigError, Scenario
from rlscale.policies.base import no_rebalance, replica_bounds
from rlscale.sim import Simulator
from rlscale.sim import kernel as K
from rlscale.sim.params import (
    P_MIN, P_PRICE, P_SPEED, P_SPOT,
    S_BATCH, S_MAX, S_QLIMIT, S_SERVERS, S_SLO, S_WORK,
    build_params,
)
from rlscale.spaces import REBALANCE_CONSOLIDATE, Action, Metrics

MAX_REPAIRS = 40
REPAIR_STEP = 0.03
CONSOLIDATE_HOLD = (0.0, 0.34, 0.67)
"""Trial levels between the plan (0) and the current replicas (1) at which the replay tries to consolidate."""
SPREAD_NODES = 21
"""With at least this many nodes, each can hold under 5% of a service's capacity, so the kernel's ``slowest`` is 0."""
_BIG = 1e300

__all__ = ["OraclePolicy", "cost_floor", "lead_steps", "make_policy", "plan_desired", "required_replicas"]


# --------------------------------------------------------------------------- planning model


def plan_speed(scenario: Scenario) -> np.ndarray:
    """``[S]`` planning speed: a fully packed node of the service's first-choice pool, no drift.

    Replicas that land on a slower pool, or on a node that drifted slow, show
    up as violations in the replay, which the repair then pays for.
    """
    speed = {p.name: p.speed for p in scenario.pools}
    c = scenario.imbalance.contention
    return np.array([speed[s.pools[0]] * (1.0 - c) for s in scenario.services])


def lead_steps(scenario: Scenario) -> np.ndarray:
    """``[S]`` steps from asking for a replica to its being ready for a whole interval, new node included."""
    delay = {p.name: p.provision_delay_s for p in scenario.pools}
    dt = scenario.step_s / scenario.substeps
    lead = []
    for s in scenario.services:
        wait = max(delay[name] for name in s.pools) + s.cold_start_s
        lead.append(max(0, math.ceil((wait - dt) / scenario.step_s - 1e-9)))
    return np.array(lead, dtype=np.int64)


@njit(cache=True)
def _online_ok(lam, r, svc_f, s, v):
    cap = r * svc_f[s, S_SERVERS] * v / svc_f[s, S_WORK]
    return K._queue_p95(lam / cap, r * svc_f[s, S_SERVERS], cap, svc_f[s, S_WORK] / v) <= svc_f[s, S_SLO]


@njit(cache=True)
def _batch_left(backlog, lam, cap, dt, substeps, slo, qlimit, check):
    """Backlog after one interval at capacity ``cap``; with ``check``, -1 if a sub-step's backlog age or size breaks the SLO."""
    left = backlog
    for _ in range(substeps):
        demand = left + lam * dt
        left = demand - min(demand, cap * dt)
        if check and (left > qlimit or (left > 0.0 and (cap <= 0.0 or left / cap > slo))):
            return -1.0
    return min(left, qlimit)


@njit(cache=True)
def _required(arrivals, svc_f, speed, lo, hi, dt, substeps, out, capped):
    n, T, S = arrivals.shape
    for i in range(n):
        for s in range(S):
            per = svc_f[s, S_SERVERS] * speed[s] / svc_f[s, S_WORK]
            slo, qlimit = svc_f[s, S_SLO], svc_f[s, S_QLIMIT]
            batch = svc_f[s, S_BATCH] > 0.5
            backlog = 0.0
            for t in range(T):
                lam = arrivals[i, t, s]
                r = lo[s]
                if batch:
                    if lam > 0.0 or backlog > 0.0:
                        first = (backlog + lam * dt) / (dt + slo) / per
                        r = max(r, max(1, int(math.ceil(first - 1e-12))))
                    r = min(r, hi[s])
                    while True:
                        left = _batch_left(backlog, lam, r * per, dt, substeps, slo, qlimit, True)
                        if left >= 0.0 or r >= hi[s]:
                            break
                        r += 1
                    if left < 0.0:
                        capped[i, t, s] = True
                        left = _batch_left(backlog, lam, r * per, dt, substeps, slo, qlimit, False)
                    backlog = left
                elif lam > 0.0 or backlog > 0.0:
                    r = min(max(r, max(1, int(math.ceil(lam / per - 1e-12)))), hi[s])
                    while backlog > 0.0 or not _online_ok(lam, r, svc_f, s, speed[s]):
                        if r >= hi[s]:
                            capped[i, t, s] = True
                            break
                        r += 1
                    if capped[i, t, s]:
                        # overloaded even at max_replicas: the queue it builds up drains in the intervals that follow
                        backlog = _batch_left(backlog, lam, r * per, dt, substeps, slo, qlimit, False)
                        if backlog <= 0.05 * lam * dt:
                            backlog = 0.0
                out[i, t, s] = r


def required_replicas(
    scenario: Scenario, arrivals: np.ndarray, speed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``need`` int64 ``[N, T, S]``: fewest replicas meeting each interval's SLO in the planning model,
    and ``capped`` bool ``[N, T, S]``: intervals where even ``max_replicas`` do not (the plan can only do its best).

    Online services: independent per interval. Batch services: greedy along the
    episode, carrying the backlog the plan leaves (see the module docstring).
    """
    arrivals = np.ascontiguousarray(arrivals, dtype=np.float64)
    params = build_params(scenario)
    lo, hi = replica_bounds(scenario)
    v = plan_speed(scenario) if speed is None else np.asarray(speed, dtype=np.float64)
    out = np.zeros(arrivals.shape, dtype=np.int64)
    capped = np.zeros(arrivals.shape, dtype=np.bool_)
    _required(arrivals, params.svc_f, v, lo, hi, scenario.step_s / scenario.substeps, scenario.substeps, out, capped)
    return out, capped


def plan_desired(need: np.ndarray, lead: np.ndarray) -> np.ndarray:
    """``desired[t] = max(need[t .. t + lead])`` per service: the pointwise-least feasible plan."""
    desired = need.copy()
    T = need.shape[1]
    for s, L in enumerate(np.asarray(lead).tolist()):
        for j in range(1, min(int(L), T - 1) + 1):
            np.maximum(desired[:, : T - j, s], need[:, j:, s], out=desired[:, : T - j, s])
    return desired


# --------------------------------------------------------------------------- the policy


def _state_arrays(sim: Simulator) -> list[str]:
    return [k for k, v in vars(sim).items() if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == sim.n]


def _clone(sim: Simulator, rows: np.ndarray) -> Simulator:
    """A fresh simulator holding a copy of ``rows`` of ``sim``'s state."""
    copy = Simulator(sim.scenario, len(rows))
    for name in _state_arrays(sim):
        getattr(copy, name)[...] = getattr(sim, name)[rows]
    return copy


def _copy_into(dst: Simulator, src: Simulator, names: list[str]) -> None:
    for name in names:
        np.copyto(getattr(dst, name), getattr(src, name))


class OraclePolicy:
    """Follows a plan made with the whole episode in view (see the module docstring).

    ``prepare(arrivals, sim)`` must be called after ``reset(n)`` and before the
    first ``act``: ``run_policy`` does so for any policy that has ``prepare``.
    ``arrivals`` is ``[N, T, S]`` (interval ``t``'s rate at ``[:, t]``) and
    ``sim`` the episodes' simulator right after reset; without ``sim`` the
    plan is neither repaired nor consolidated. After ``prepare``:
    ``replicas`` ``[N, T, S]`` and ``rebalance`` ``[N, T]`` are the actions,
    ``capped`` ``[N, T, S]`` marks intervals that even ``max_replicas`` cannot
    serve within the SLO in the planning model, and ``unresolved`` ``[N]``
    counts intervals that still violate in the replay (0 unless capped or out
    of repairs).
    """

    name = "oracle"

    def __init__(self, scenario: Scenario, max_repairs: int = MAX_REPAIRS) -> None:
        self.scenario = scenario
        self.max_repairs = max_repairs
        self.lead = lead_steps(scenario)
        self.restart_steps = max(1, math.ceil(max(s.cold_start_s for s in scenario.services) / scenario.step_s))
        self.lo, self.hi = replica_bounds(scenario)
        self._slo = np.array([s.slo_target_s for s in scenario.services])
        self.reset(1)

    def reset(self, n: int = 1) -> None:
        S = len(self._slo)
        self.n = n
        self.replicas: np.ndarray | None = None
        self.rebalance = np.zeros((n, 0), dtype=np.int64)
        self.need = np.zeros((n, 0, S), dtype=np.int64)
        self.capped = np.zeros((n, 0, S), dtype=bool)
        self.repairs = 0
        self.unresolved = np.zeros(n, dtype=np.int64)
        self._t = 0

    def prepare(self, arrivals: np.ndarray, sim: Simulator | None = None) -> None:
        arrivals = np.ascontiguousarray(arrivals, dtype=np.float64)
        if arrivals.ndim != 3 or arrivals.shape[0] != self.n or arrivals.shape[2] != len(self._slo):
            raise ValueError(f"oracle: arrivals must be [{self.n}, T, {len(self._slo)}], got {arrivals.shape}")
        self.need, self.capped = required_replicas(self.scenario, arrivals)
        self.replicas = plan_desired(self.need, self.lead)
        self.rebalance = np.zeros(self.need.shape[:2], dtype=np.int64)
        self._t = 0
        if sim is not None:
            self._repair(arrivals, sim)

    def _repair(self, arrivals: np.ndarray, sim: Simulator) -> None:
        assert self.replicas is not None
        rows = np.arange(self.n)
        fails = np.zeros(self.need.shape, dtype=np.int64)
        while True:
            replicas, verbs, bad = self._replay(sim, rows, plan_desired(self.need[rows], self.lead), arrivals[rows])
            self.replicas[rows], self.rebalance[rows] = replicas, verbs
            self.unresolved[rows] = bad.sum(axis=(1, 2))
            fixable = bad & ~self.capped[rows]
            failing = fixable.any(axis=(1, 2))
            if not failing.any() or self.repairs >= self.max_repairs:
                return
            rows, fixable = rows[failing], fixable[failing]
            need = self.need[rows]
            # an interval that stays bad after a repair gets twice the step next time
            step = np.maximum(1, np.ceil(need * REPAIR_STEP * 2.0 ** fails[rows])).astype(np.int64)
            self.need[rows] = np.where(fixable, np.minimum(need + step, self.hi), need)
            fails[rows] += fixable
            self.repairs += 1

    def _replay(
        self, sim: Simulator, rows: np.ndarray, plan: np.ndarray, arrivals: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Play ``plan`` on a copy of ``sim``'s ``rows``, consolidating wherever a trial shows it safe.

        At a step that scales nothing up within the lead time, the replay tries
        "scale down to ``plan + f * (current - plan)`` and consolidate" for
        ``f`` in ``CONSOLIDATE_HOLD`` on a scratch copy, over the intervals the
        moved replicas take to restart, and keeps the first trial that frees a
        node without a bad interval. Holding replicas back this way costs
        nothing while their node exists anyway, and gives the moved replicas'
        restart the headroom it needs. Returns the replicas and rebalance verbs
        played, and the bad intervals ``[R, T, S]``.
        """
        main = _clone(sim, rows)
        trial = _clone(sim, rows)
        names = _state_arrays(main)
        R, T, S = plan.shape
        replicas = np.zeros_like(plan)
        verbs = np.zeros((R, T), dtype=np.int64)
        bad = np.zeros((R, T, S), dtype=bool)
        none = np.zeros(R, dtype=np.int64)
        consolidate = np.full(R, REBALANCE_CONSOLIDATE, dtype=np.int64)
        lead = int(self.lead.max())
        horizon = self.restart_steps
        for t in range(T):
            target = plan[:, t]
            current = main.desired.copy()
            ahead = plan[:, t : t + lead + 1].max(axis=1)
            chosen = np.maximum(target, current)  # hold: removing replicas frees no node without a consolidation
            verb = none.copy()
            open_rows = (ahead <= current).all(axis=1) & (main.rebalance_left <= 0.0) & (t > 0)
            if open_rows.any() and t + horizon <= T:
                for hold in CONSOLIDATE_HOLD:
                    if not open_rows.any():
                        break
                    level = target + np.ceil(hold * (current - target)).astype(np.int64)
                    _copy_into(trial, main, names)
                    ok = open_rows.copy()
                    first = trial.step(Action(level, np.where(open_rows, consolidate, none)), np.ascontiguousarray(arrivals[:, t]))
                    ok &= first.rebalanced > 0.0
                    ok &= ~((first.latency_p95_s > self._slo) | (first.dropped > 0.0)).any(axis=1)
                    for w in range(1, horizon):
                        later = trial.step(Action(np.ascontiguousarray(plan[:, t + w]), none), np.ascontiguousarray(arrivals[:, t + w]))
                        ok &= ~((later.latency_p95_s > self._slo) | (later.dropped > 0.0)).any(axis=1)
                    chosen[ok] = level[ok]
                    verb[ok] = REBALANCE_CONSOLIDATE
                    open_rows &= ~ok
            # without a consolidation, scale down only where that empties a node (else holding is free headroom)
            down = (target < current).any(axis=1) & (verb == 0)
            if down.any():
                _copy_into(trial, main, names)
                occupied = (main.rep.sum(axis=1) > 0).sum(axis=1)
                trial.step(Action(np.ascontiguousarray(target), none), np.ascontiguousarray(arrivals[:, t]))
                empties = down & ((trial.rep.sum(axis=1) > 0).sum(axis=1) < occupied)
                chosen[empties] = target[empties]
            result = main.step(Action(chosen, verb), np.ascontiguousarray(arrivals[:, t]))
            replicas[:, t], verbs[:, t] = chosen, verb
            bad[:, t] = (result.latency_p95_s > self._slo) | (result.dropped > 0.0)
        return replicas, verbs, bad

    def act(self, metrics: Metrics) -> Action:
        if self.replicas is None:
            raise ConfigError("oracle: it needs the episode in advance, so it runs only in simulation (rlscale simulate/evaluate)")
        if metrics.n != self.n:
            raise ValueError(f"oracle policy was prepared for {self.n} clusters but got metrics for {metrics.n}")
        t = min(self._t, self.replicas.shape[1] - 1)
        self._t += 1
        rebalance = self.rebalance[:, t].copy() if self.rebalance.shape[1] else no_rebalance(self.n)
        return Action(replicas=self.replicas[:, t].copy(), rebalance=rebalance)


def make_policy(scenario: Scenario) -> OraclePolicy:
    return OraclePolicy(scenario)


# --------------------------------------------------------------------------- the floor


@njit(cache=True)
def _p95_at(lam, cap, c_max, slowest):
    return K._queue_p95(lam / cap, c_max, cap, slowest)


@njit(cache=True)
def _capacity_a(lam, c_max, slowest, slo, dt):
    """Least capacity with the p95 at ``slowest`` within ``slo`` (case A of the floor's proof)."""
    backlog_bound = lam * min(0.95, dt / (dt + slo))
    if 20.0 * slowest <= slo:
        return backlog_bound
    lo = lam / 0.999
    if slowest > slo:
        return lo  # no policy meets the SLO here, so any bound holds
    hi = lo * 2.0
    while _p95_at(lam, hi, c_max, slowest) > slo:
        hi *= 2.0
    if _p95_at(lam, lo * (1.0 + 1e-12), c_max, slowest) <= slo:
        return lo
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _p95_at(lam, mid, c_max, slowest) <= slo:
            hi = mid
        else:
            lo = mid
    return lo


@njit(cache=True)
def _single_cost(need, h, allowed, pool_f, pool_spot, min_count):
    """Least node cost per hour holding ``need`` capacity of one service; ``h[p]`` per node (0 = not allowed)."""
    P = pool_f.shape[0]
    base = 0.0
    have = 0.0
    for p in range(P):
        if pool_spot[p] == 0.0:
            base += pool_f[p, P_MIN] * pool_f[p, P_PRICE]
            if allowed[p]:
                have += pool_f[p, P_MIN] * h[p]
    n_allowed = 0
    only = -1
    for p in range(P):
        if allowed[p]:
            n_allowed += 1
            only = p
    if n_allowed == 1:
        p = only
        floor_min = pool_f[p, P_MIN] if pool_spot[p] == 0.0 else 0.0
        nodes = max(floor_min, float(math.ceil(need / h[p] - 1e-12)), float(min_count))
        return base + (nodes - floor_min) * pool_f[p, P_PRICE]
    rest = need - have
    cost = base
    # LP relaxation: extra capacity at the cheapest price per unit, then the node count bound
    best = _BIG
    cheapest_node = _BIG
    for p in range(P):
        if allowed[p] and h[p] > 0.0:
            best = min(best, pool_f[p, P_PRICE] / h[p])
            cheapest_node = min(cheapest_node, pool_f[p, P_PRICE])
    if rest > 0.0:
        cost += rest * best
    if min_count > 0:
        cost = max(cost, min_count * cheapest_node)
    return cost


@njit(cache=True)
def _floor_episode(arrivals, key, pool_f, pool_range, node_pool, svc_f, pref, misc, h_coef, unit_cost):
    T, S = arrivals.shape
    P, M = pool_f.shape[0], node_pool.shape[0]
    step_s, dt = misc[0], misc[0] / misc[1]
    sigma, a = misc[2], 1.0 - misc[3]
    U = np.zeros(M)
    F = np.zeros(M)
    vmax = np.zeros(P)
    allowed = np.zeros((S, P), dtype=np.bool_)
    for s in range(S):
        for r in range(P):
            if pref[s, r] >= 0:
                allowed[s, pref[s, r]] = True
    spot_p = np.zeros(P)
    for p in range(P):
        r = pool_f[p, P_SPOT]
        spot_p[p] = 1.0 - math.exp(-r * step_s / 3600.0) if r > 0.0 else 0.0
    need_a = np.zeros(S)
    need_b = np.zeros(S)
    h = np.zeros(P)
    total = 0.0
    for k in range(T):
        for p in range(P):
            vmax[p] = 0.0
        for m in range(M):
            p = node_pool[m]
            vmax[p] = max(vmax[p], pool_f[p, P_SPEED] * math.exp(U[m]))
        for s in range(S):
            lam = arrivals[k, s]
            need_a[s] = 0.0
            need_b[s] = 0.0
            if lam <= 0.0:
                continue
            v = 0.0
            for p in range(P):
                if allowed[s, p]:
                    v = max(v, vmax[p])
            work, slo = svc_f[s, S_WORK], svc_f[s, S_SLO]
            if svc_f[s, S_BATCH] > 0.5:
                need_a[s] = lam * min(1.0, dt / (dt + slo))
                need_b[s] = need_a[s]
            else:
                c_max = svc_f[s, S_MAX] * svc_f[s, S_SERVERS]
                need_a[s] = _capacity_a(lam, c_max, work / v, slo, dt)
                need_b[s] = lam * min(0.95, dt / (dt + slo))
        if S == 1:
            for p in range(P):
                h[p] = h_coef[0, p] * vmax[p] if allowed[0, p] else 0.0
            cost_a = _single_cost(need_a[0], h, allowed[0], pool_f, spot_p, 1 if need_a[0] > 0.0 else 0)
            cost_b = _single_cost(need_b[0], h, allowed[0], pool_f, spot_p, SPREAD_NODES if need_b[0] > 0.0 else 0)
            cost = min(cost_a, cost_b)
        else:
            base = 0.0
            for p in range(P):
                if spot_p[p] == 0.0:
                    base += pool_f[p, P_MIN] * pool_f[p, P_PRICE]
            cost = base
            for res in range(3):
                sum_a = 0.0
                sum_ab = 0.0
                cheapest = _BIG
                for s in range(S):
                    if need_a[s] <= 0.0:
                        continue
                    best_a = _BIG
                    best_b = _BIG
                    for p in range(P):
                        if allowed[s, p] and unit_cost[res, s, p] < _BIG:
                            per = unit_cost[res, s, p] / vmax[p]
                            best_a = min(best_a, need_a[s] * per)
                            best_b = min(best_b, need_b[s] * per)
                            cheapest = min(cheapest, pool_f[p, P_PRICE])
                    if best_a < _BIG:
                        sum_a += best_a
                        sum_ab += min(best_a, best_b)
                if cheapest < _BIG:
                    cost = max(cost, min(sum_a, max(sum_ab, SPREAD_NODES * cheapest)))
        total += cost * step_s / 3600.0
        for m in range(M):
            p = node_pool[m]
            spot = spot_p[p] > 0.0 and K._uniform(key, k, m, K.STREAM_SPOT) < spot_p[p]
            nxt = 0.0
            if sigma > 0.0:
                nxt = a * U[m] + sigma * K._normal(key, k, m)
            else:
                nxt = a * U[m]
            nxt = max(0.0, nxt, F[m])
            if spot:
                nxt = max(nxt, U[m])
                F[m] = max(F[m], U[m])
            U[m] = nxt
    return total


def _floor_coefficients(scenario: Scenario) -> tuple[np.ndarray, np.ndarray]:
    """``h_coef [S, P]``: most ready capacity per node at speed 1 (one service alone on it, contention included);
    ``unit_cost [3, S, P]``: USD/h per request/s of capacity at speed 1, through vCPU, memory and GPU."""
    c = scenario.imbalance.contention
    S, P = len(scenario.services), len(scenario.pools)
    h = np.zeros((S, P))
    unit = np.full((3, S, P), _BIG)
    for i, s in enumerate(scenario.services):
        per_replica = s.servers_per_replica / s.work_s
        for j, p in enumerate(scenario.pools):
            if p.name not in s.pools:
                continue
            limits = [p.vcpu / s.replica.cpu, p.memory_gib / s.replica.memory_gib]
            if s.replica.gpus > 0:
                limits.append(p.gpus / s.replica.gpus)
            fit = int(math.floor(min(limits) + 1e-9))
            if fit >= 1:
                r = np.arange(1, fit + 1)
                h[i, j] = float((r * (1.0 - c * (r * s.replica.cpu / p.vcpu) ** 2)).max()) * per_replica
            unit[0, i, j] = p.price_per_hour / p.vcpu * s.replica.cpu / per_replica
            unit[1, i, j] = p.price_per_hour / p.memory_gib * s.replica.memory_gib / per_replica
            if s.replica.gpus > 0 and p.gpus > 0:
                unit[2, i, j] = p.price_per_hour / p.gpus * s.replica.gpus / per_replica
            elif s.replica.gpus == 0:
                unit[2, i, j] = 0.0
    return h, unit


def cost_floor(scenario: Scenario, arrivals: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """USD ``[N]``: no policy meeting the SLO in every interval without drops pays less (proof above).

    ``arrivals`` ``[N, T, S]`` are the episodes' rates, ``keys`` ``[N]`` their
    simulator keys (``Simulator.key`` after reset).
    """
    params = build_params(scenario)
    h, unit = _floor_coefficients(scenario)
    arrivals = np.asarray(arrivals, dtype=np.float64)
    keys = np.asarray(keys, dtype=np.uint64)
    return np.array([
        _floor_episode(np.ascontiguousarray(arrivals[i]), keys[i], params.pool_f, params.pool_range, params.node_pool,
                       params.svc_f, params.pref, params.misc, h, unit)
        for i in range(arrivals.shape[0])
    ])
