"""The perfect-foresight oracle, and the proven cost floor that brackets the optimum.

What it is for
    Every policy's ``cost_usd`` is reported as a ratio to the oracle's. The
    oracle knows the whole episode in advance (every interval's arrivals, and
    the simulator itself, whose randomness is fixed by the episode's key) and
    buys as little capacity as keeps every interval within the SLO. The true
    optimum of an episode, the cheapest run in the real simulator
    (``rlscale/sim/kernel.py``) with no interval over its SLO and no request
    dropped, is bracketed by two numbers computed here::

        cost_floor(...)  <=  optimum  <=  cost of the oracle policy

    The oracle's cost is achieved: it acts through the real simulator like
    any policy, so its SLO record is measured, not assumed. The floor is a
    lower bound, proven below, for every policy. Computing the optimum itself
    is a search over every action sequence through node placement, drift and
    restarts, which no one does; the bracket says how far from it the oracle
    can be at most (``cost_floor / oracle``, reported next to every result).

The oracle policy
    1. *Plan* in the planning model: service ``s`` runs every replica at
       ``v_s = speed of its first-choice pool * (1 - contention)`` (a fully
       packed node, no drift), so ``R`` ready replicas serve ``R * servers *
       v_s / work_s`` requests/s, with the kernel's own p95 formula
       (``kernel._queue_p95``). ``need[t]`` is the fewest replicas in [min,
       max] that keep interval ``t`` within the SLO: for an online service its
       p95 at ``t``'s arrivals; for a batch service the age of the backlog the
       plan carries into ``t``, sub-step by sub-step as the kernel counts it
       (greedily: serving work earlier than that only lowers later needs by a
       fraction ``dt / (dt + slo)`` of what it costs, so it never pays in the
       fluid model). A replica asked for at step ``t`` is ready for the whole
       of interval ``t + L``, ``L = ceil((provision_delay + cold_start - dt) /
       step_s)`` (the kernel counts both timers in sub-steps of ``dt``), even
       if it needs a new node; the plan is ``desired[t] = max(need[t .. t +
       L])``. Intervals that even ``max_replicas`` cannot serve (and, for an
       online service, those its queue then takes to drain) are ``capped``:
       the plan runs ``max_replicas`` there and does not count them as its
       failures.

       *Exact in the planning model for online services.* A plan is feasible
       iff every replica needed at ``k`` is asked for by ``k - L`` and kept
       until ``k``, i.e. ``desired[t] >= need[k]`` for ``t`` in ``[k - L,
       k]``: the feasible plans are exactly those above ``max(need[t..t+L])``
       pointwise, and that pointwise minimum is feasible. Node cost does not
       decrease when more replicas are asked for at any step, so the pointwise
       minimum is the cheapest: no search or DP is needed.
    2. *Replay* the plan on a copy of the episode's simulator, step by step:
       - at a step that scales nothing up within ``L``, try on a scratch copy
         "scale down to ``plan + f (current - plan)`` and consolidate" for
         ``f`` in ``CONSOLIDATE_HOLD``, over the intervals the moved replicas
         take to restart, and keep the first trial that frees a node with no
         bad interval. (A ReplicaSet scale-down leaves holes spread over the
         nodes; only a consolidation turns them into released nodes, and the
         moved replicas restart, so it needs headroom.)
       - otherwise scale down only where that empties a node, and hold the
         replicas elsewhere: there removing them frees nothing, and holding
         them is the headroom a later consolidation needs.
    3. *Repair*: the planning model cannot see node drift, hot spots, slower
       pools or spot interruptions, so wherever the replay shows a bad
       interval (p95 over the SLO or a request dropped) that is not capped,
       that interval's ``need`` grows (by ``max(1, 3%)``, doubling each time
       the same interval fails again) and the affected episodes are replayed,
       until none is bad or ``MAX_REPAIRS`` passes are spent. An interval
       still bad at ``max_replicas`` becomes capped. ``need`` only grows, so
       this ends, and only where the real simulator showed a violation.

    What it does not do: steer placement. It sizes each service for its
    first-choice pool and never uses ``spread``, so in a cluster where a
    policy can move a service onto a cheaper pool (the API onto spot nodes
    in ``mixed-pools``) such a policy can undercut it at some SLO cost.

    The replay is deterministic, so acting from its recorded actions
    (``replicas``, ``rebalance``) in ``run_policy`` reproduces it exactly:
    the oracle's SLO record there is the one the repair loop checked.
    ``unresolved`` counts the intervals still bad (0 unless capped or out of
    repairs).

The cost floor (a lower bound on the optimum, proven)
    Claim: on an episode (its arrivals and simulator key), every policy whose
    run keeps every interval within the SLO and drops no request pays at
    least ``cost_floor``. Proof; write ``dt`` for the sub-step, ``lam`` for an
    interval's arrival rate of a service and ``cap`` for its ready capacity
    (requests/s) at some sub-step:

    (a) *Node speeds are bounded.* A slot's drift ``x`` is 0 when the slot is
        opened (placement, spot replacement) and follows ``x <- a x + sigma
        z(key, k, m)`` at the end of each interval ``k`` while the node
        exists; ``z`` is the kernel's counter-based normal of the episode key,
        the interval and the slot, the same whatever the policy does. So the
        drift at interval ``k`` is a discounted sum of ``sigma z`` over the
        intervals since some opening, at most ``U_k(m)``, the largest such
        sum over every opening time: ``U_0 = 0``, ``U_{k+1} = max(0, a U_k +
        sigma z_k)``. A node's speed is ``pool_speed exp(x) (1 - c pack^2)
        <= vmax_p(k) = pool_speed * max over the pool's slots of
        exp(U_k(m))``.
    (b) *Capacity an online service needs.* The kernel's p95 at a sub-step is
        ``f = _queue_p95(lam / cap, servers, cap, slowest)`` plus a
        non-negative backlog term. ``f`` grows with ``slowest`` and, below
        utilisation 0.999, falls as ``cap`` or the server count grows; the
        server count is at most ``max_replicas * servers_per_replica``.
        ``slowest`` is the largest ``work / speed`` among nodes holding at
        least 5% of the capacity: at least ``work / vmax``, unless every node
        holds less than 5%, which takes ``SPREAD_NODES`` = 21 nodes. So an
        interval within the SLO has either (A) ``cap >= C_A``, the least
        capacity at which ``f`` (``slowest = work / vmax``, most servers) is
        within the SLO, or (B) at least 21 nodes and ``cap >= C_B = lam *
        min(0.95, dt / (dt + slo))``: with less, a sub-step leaves a backlog
        ``left >= (lam - cap) dt > 0.05 lam dt`` (nothing is dropped), whose
        term ``left / cap`` is over the SLO. (When ``20 work / vmax`` is
        within the SLO, utilisation >= 0.999 is allowed too, and ``C_A`` is
        ``C_B``.)
    (c) *Nodes that must be paid.* Ready replicas sit on ready nodes, and a
        node ready at any sub-step of an interval exists for the whole of it
        (nodes are opened at an interval's start and removed at its end), so
        is paid for all of it. Pools without spot interruptions never drop
        below ``min_nodes``. Any service with arrivals needs a ready replica
        (with none, its backlog's age is unbounded). On a node of pool ``p``
        holding ``r`` ready replicas of one service and nothing else, their
        capacity is at most ``r (1 - c (r cpu / vcpu)^2) servers vmax_p /
        work``, at most ``h_p`` over the ``r`` that fit. A cluster of one
        online service therefore pays, per interval, at least the cheapest
        node set (integer for one pool, LP relaxation over several) with
        ``sum n_p h_p >= C`` and ``n_p >= min_nodes``. With several services,
        a ready replica's capacity is at most ``servers vmax_p / work``, it
        holds ``cpu`` vCPU (and memory, GPUs), and pool ``p``'s nodes cost
        ``price / vcpu`` per vCPU they have: the cost is at least the sum over
        services of their capacity at the cheapest price per unit of capacity
        (per vCPU; per GiB; per GPU: each is a bound), and at least the nodes
        that must exist.
    (d) Per interval, the cost is at least the cheaper of cases (A) and (B)
        (B with 21 nodes of the cheapest allowed pool), times ``step_s /
        3600``.
    (e) *Batch services* can defer work, so they are bounded over the whole
        episode: what arrives is served or still queued at the end, and the
        final backlog is at most ``min(slo * cap, queue_limit)`` with ``cap``
        at most ``max_replicas`` at ``vmax``; so the capacity-seconds they use
        are at least the work that arrived minus that. Paid for at the
        cheapest price per unit of capacity, that work first uses up what the
        nodes that must exist anyway leave idle, and the rest adds to the
        bound.

    The floor is loose by the drift bound (a policy cannot pick its nodes'
    drift; the bound lets it), by placement (the bound lets a service use its
    cheapest allowed pool, while first-fit follows preference order), and by
    idle, provisioning and warming nodes, which no bound here charges for.
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
    P_PRICE, P_SPEED,
    S_BATCH, S_MAX, S_QLIMIT, S_SERVERS, S_SLO, S_WAIT, S_WORK,
    build_params,
)
from rlscale.spaces import REBALANCE_CONSOLIDATE, Action, Metrics

MAX_REPAIRS = 40
"""Replay passes the repair may spend; each replays only the episodes that still have a bad interval."""
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
    return K._queue_p95(lam / cap, r * svc_f[s, S_SERVERS], cap, svc_f[s, S_WORK] / v, svc_f[s, S_WAIT]) <= svc_f[s, S_SLO]


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
            saturated = bad & (self.need[rows] >= self.hi)
            self.capped[rows] |= saturated  # bad even at max_replicas: nothing left to add
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
def _speed_bound(key, T, pool_f, node_pool, misc):
    """``[T, P]``: no node of pool p is faster than this in interval k, whatever the policy (proof (a))."""
    P, M = pool_f.shape[0], node_pool.shape[0]
    sigma, a = misc[2], 1.0 - misc[3]
    U = np.zeros(M)
    out = np.zeros((T, P))
    for k in range(T):
        for m in range(M):
            p = node_pool[m]
            out[k, p] = max(out[k, p], pool_f[p, P_SPEED] * math.exp(U[m]))
        if sigma > 0.0:
            for m in range(M):
                U[m] = max(0.0, a * U[m] + sigma * K._normal(key, k, m))
    return out


@njit(cache=True)
def _p95_at(lam, cap, c_max, slowest, wait_scale):
    return K._queue_p95(lam / cap, c_max, cap, slowest, wait_scale)


@njit(cache=True)
def _capacity_a(lam, c_max, slowest, slo, dt, wait_scale):
    """Least capacity with the p95 at ``slowest`` within ``slo`` (case A of proof (b))."""
    backlog_bound = lam * min(0.95, dt / (dt + slo))
    if 20.0 * slowest <= slo:
        return backlog_bound
    lo = lam / 0.999
    if slowest > slo:
        return lo  # no policy meets the SLO here, so any bound holds
    hi = lo * 2.0
    while _p95_at(lam, hi, c_max, slowest, wait_scale) > slo:
        hi *= 2.0
    if _p95_at(lam, lo * (1.0 + 1e-12), c_max, slowest, wait_scale) <= slo:
        return lo
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _p95_at(lam, mid, c_max, slowest, wait_scale) <= slo:
            hi = mid
        else:
            lo = mid
    return lo


@njit(cache=True)
def _online_capacity(arrivals, vmax, allowed, svc_f, dt):
    """``(C_A, C_B)`` ``[T, S]``: capacity an online service needs in each interval, cases A and B of proof (b)."""
    T, S = arrivals.shape
    need_a = np.zeros((T, S))
    need_b = np.zeros((T, S))
    for k in range(T):
        for s in range(S):
            lam = arrivals[k, s]
            if lam <= 0.0 or svc_f[s, S_BATCH] > 0.5:
                continue
            v = 0.0
            for p in range(vmax.shape[1]):
                if allowed[s, p]:
                    v = max(v, vmax[k, p])
            slo = svc_f[s, S_SLO]
            c_max = svc_f[s, S_MAX] * svc_f[s, S_SERVERS]
            need_a[k, s] = _capacity_a(lam, c_max, svc_f[s, S_WORK] / v, slo, dt, svc_f[s, S_WAIT])
            need_b[k, s] = lam * min(0.95, dt / (dt + slo))
    return need_a, need_b


@njit(cache=True)
def _nodes_cost(need, h, allowed, pool_f, guaranteed, min_count):
    """Least USD/h of nodes holding ``need`` capacity of one service, ``h[p]`` per node (proof (c))."""
    P = pool_f.shape[0]
    base = 0.0
    have = 0.0
    for p in range(P):
        base += guaranteed[p] * pool_f[p, P_PRICE]
        if allowed[p]:
            have += guaranteed[p] * h[p]
    n_allowed = 0
    only = -1
    for p in range(P):
        if allowed[p] and h[p] > 0.0:
            n_allowed += 1
            only = p
    if n_allowed == 1:
        nodes = max(guaranteed[only], float(math.ceil(need / h[only] - 1e-12)), float(min_count))
        return base + (nodes - guaranteed[only]) * pool_f[only, P_PRICE]
    best = _BIG
    cheapest = _BIG
    for p in range(P):
        if allowed[p] and h[p] > 0.0:
            best = min(best, pool_f[p, P_PRICE] / h[p])
            cheapest = min(cheapest, pool_f[p, P_PRICE])
    cost = base + max(0.0, need - have) * best
    return max(cost, min_count * cheapest)


@njit(cache=True)
def _single_online(need_a, need_b, vmax, h_coef, allowed, pool_f, guaranteed):
    """USD/h per interval for a cluster of one online service: the cheaper of cases A and B (proof (d))."""
    T, P = vmax.shape
    out = np.zeros(T)
    h = np.zeros(P)
    for k in range(T):
        for p in range(P):
            h[p] = h_coef[p] * vmax[k, p] if allowed[p] else 0.0
        if need_a[k] <= 0.0:
            out[k] = _nodes_cost(0.0, h, allowed, pool_f, guaranteed, 0)
            continue
        cost_a = _nodes_cost(need_a[k], h, allowed, pool_f, guaranteed, 1)
        cost_b = _nodes_cost(need_b[k], h, allowed, pool_f, guaranteed, SPREAD_NODES)
        out[k] = min(cost_a, cost_b)
    return out


class _FloorModel:
    """The scenario's constants that the floor needs, computed once."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.params = build_params(scenario)
        c = scenario.imbalance.contention
        S, P = len(scenario.services), len(scenario.pools)
        self.allowed = np.zeros((S, P), dtype=np.bool_)
        self.h = np.zeros((S, P))  # most ready capacity per node at speed 1, one service alone on it
        self.unit = np.full((3, S, P), _BIG)  # USD/h per request/s at speed 1, through vCPU, memory, GPU
        for i, s in enumerate(scenario.services):
            per_replica = s.servers_per_replica / s.work_s
            for j, p in enumerate(scenario.pools):
                if p.name not in s.pools:
                    continue
                limits = [p.vcpu / s.replica.cpu, p.memory_gib / s.replica.memory_gib]
                if s.replica.gpus > 0:
                    limits.append(p.gpus / s.replica.gpus)
                fit = int(math.floor(min(limits) + 1e-9))
                if fit < 1:
                    continue
                self.allowed[i, j] = True
                r = np.arange(1, fit + 1)
                used = s.replica.cpu if s.replica.cpu_used is None else s.replica.cpu_used
                pack = r * used / p.vcpu
                self.h[i, j] = float((r * (1.0 - c * np.minimum(pack, 1.0) ** 2) / np.maximum(pack, 1.0)).max()) * per_replica
                self.unit[0, i, j] = p.price_per_hour / p.vcpu * s.replica.cpu / per_replica
                self.unit[1, i, j] = p.price_per_hour / p.memory_gib * s.replica.memory_gib / per_replica
                self.unit[2, i, j] = p.price_per_hour / p.gpus * s.replica.gpus / per_replica if s.replica.gpus else 0.0
        self.price = np.array([p.price_per_hour for p in scenario.pools])
        self.guaranteed = np.array([float(p.min_nodes) if p.spot_interruptions_per_hour == 0 else 0.0 for p in scenario.pools])
        self.batch = np.array([s.kind == "batch" for s in scenario.services])
        self.slo = np.array([s.slo_target_s for s in scenario.services])
        self.qlimit = np.array([s.queue_limit for s in scenario.services])
        self.max_rps = np.array([s.max_replicas * s.servers_per_replica / s.work_s for s in scenario.services])

    def episode(self, arrivals: np.ndarray, key: np.uint64) -> float:
        sc, prm = self.scenario, self.params
        T, S = arrivals.shape
        step_s, dt = sc.step_s, sc.step_s / sc.substeps
        vmax = _speed_bound(key, T, prm.pool_f, prm.node_pool, prm.misc)
        need_a, need_b = _online_capacity(arrivals, vmax, self.allowed, prm.svc_f, dt)
        if S == 1 and not self.batch[0]:
            rate = _single_online(need_a[:, 0], need_b[:, 0], vmax, self.h[0], self.allowed[0], prm.pool_f, self.guaranteed)
            return float(rate.sum() * step_s / 3600.0)
        presence = self._presence(arrivals > 0.0)
        # USD/h per request/s of capacity, cheapest allowed pool, at each interval's speed bound: [T, 3, S]
        per = np.where(self.allowed[None, None], self.unit[None] / vmax[:, None, None, :], _BIG).min(axis=3)
        online = ~self.batch[None, :] & (arrivals > 0.0)
        sum_a = np.where(online[:, None], need_a[:, None] * per, 0.0).sum(axis=2)
        sum_ab = np.where(online[:, None], np.minimum(need_a, need_b)[:, None] * per, 0.0).sum(axis=2)
        cheapest = np.where(self.allowed, self.price[None], _BIG).min(axis=1)
        spread = SPREAD_NODES * np.where(online, cheapest[None], _BIG).min(axis=1)
        x = np.where(online.any(axis=1)[:, None], np.minimum(sum_a, np.maximum(sum_ab, spread[:, None])), 0.0)
        # batch services, over the whole episode (proof (e))
        top = np.where(self.allowed, vmax.max(axis=0)[None], 0.0).max(axis=1)
        left = np.minimum(self.slo * self.max_rps * top, self.qlimit)
        work = np.maximum(0.0, arrivals.sum(axis=0) * step_s - left) / step_s
        per_best = np.where(self.allowed[None], self.unit / np.maximum(vmax.max(axis=0), 1e-300)[None, None], _BIG).min(axis=2)
        batch = (np.where(self.batch[None], work[None] * per_best, 0.0)).sum(axis=1)
        paid = np.maximum(presence[:, None], x)
        slack = np.maximum(0.0, presence[:, None] - x).sum(axis=0)
        total = paid.sum(axis=0) + np.maximum(0.0, batch - slack)
        return float(total.max() * step_s / 3600.0)

    def _presence(self, active: np.ndarray) -> np.ndarray:
        """USD/h of nodes that must exist in each interval: minimums, and a node for every active service (proof (c))."""
        base = float((self.guaranteed * self.price).sum())
        covered = (self.allowed & (self.guaranteed > 0)[None]).any(axis=1)
        need = active & ~covered[None]
        single = self.allowed.sum(axis=1) == 1
        only = self.allowed.argmax(axis=1)
        T, P = active.shape[0], len(self.price)
        pools = np.zeros((T, P), dtype=bool)
        for s in np.flatnonzero(single):
            pools[:, only[s]] |= need[:, s]
        out = base + (pools * self.price[None]).sum(axis=1)
        cheapest = np.where(self.allowed, self.price[None], _BIG).min(axis=1)
        for s in np.flatnonzero(~single):
            alone = need[:, s] & ~(pools & self.allowed[s][None]).any(axis=1)
            out = np.maximum(out, base + (pools * self.price[None]).sum(axis=1) + np.where(alone, cheapest[s], 0.0))
        return out


def cost_floor(scenario: Scenario, arrivals: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """USD ``[N]``: no policy meeting the SLO in every interval without dropping a request pays less (proof above).

    ``arrivals`` ``[N, T, S]`` are the episodes' rates, ``keys`` ``[N]`` their
    simulator keys (``Simulator.key`` after reset).
    """
    model = _FloorModel(scenario)
    arrivals = np.asarray(arrivals, dtype=np.float64)
    keys = np.asarray(keys, dtype=np.uint64)
    return np.array([model.episode(np.ascontiguousarray(arrivals[i]), keys[i]) for i in range(arrivals.shape[0])])
