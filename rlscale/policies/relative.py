"""Scale-free observations and actions for the generalist policy (DESIGN.md section 10).

A user's cluster never matches a training scenario: it has other prices, other
replica counts, other delays, another number of services. So every feature
here is a ratio (load over the capacity a service has and will have, latency
over its SLO, a pool's price over the cheapest one, demand now over demand k
intervals ago), and every action is relative: a target utilisation per
service, which the decoder turns into replicas with *that* service's own
capacity and limits. Nothing is an absolute count, price or rate, and nothing
is clamped to a training-time maximum.

Arrays are ``[N, S]`` (N clusters, S services); a policy network sees one row
per service (``[N * S, F]``), so one set of weights serves any number of
services in one batched call.

The decoder also owns the margin no policy can talk its way out of
(``floor``): capacity for the demand projected over the service's lead time
(provisioning + cold start) at ``U_MAX``, and no scale-down while the SLO is
being violated or requests are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from rlscale.config import Scenario
from rlscale.policies import history as hist
from rlscale.spaces import REBALANCE_CONSOLIDATE, REBALANCE_DRAIN, REBALANCE_NONE, Action, Metrics, ObsSpec

LAGS = (1, 2, 5, 10, 15)
HISTORY = max(LAGS) + 1
LEVELS = (0.40, 0.50, 0.58, 0.65, 0.72, 0.78, 0.84, 0.90)
"""Target utilisation of the capacity a service will have: the per-service action."""
U_MAX = 0.92
"""The floor sizes the projected demand at this utilisation: the margin the policy cannot remove."""
TOLERANCE = 0.1
"""As Kubernetes' HPA: demand within 10% of the current capacity at the target level is no change (bounds churn)."""
DOWN_WINDOW_STEPS = 3
"""Scale-down takes the highest proposal of the last 3 intervals, as HPA's stabilisation window does (bounds churn).
In intervals, not seconds, so a cluster on a compressed clock behaves as one on a real one."""
GROWTH_CLIP = (1.0, 2.0)
CAPACITY_CLIP = (0.5, 2.0)
CAPACITY_EMA = 0.1
CLIP = 10.0
FEATURES = (
    "load_soon", "load_ready", "utilisation", "slo_ratio", "backlog_steps", "dropped_fraction", "pending",
    *(f"log_ratio_lag{k}" for k in LAGS),
    "volatility", "log_forecast_lead", "forecast_load_soon", "lead_steps", "cold_steps", "capacity_vs_declared",
    "at_min", "to_max", "log_price_ratio", "log_replicas_per_node", "packing", "hot_spot",
    "rebalancing", "batch", "floor_ratio",
)
assert LEVELS == hist.OVERRUN_LEVELS  # the history reports past overruns at exactly these levels
N_FEATURES = len(FEATURES)
"""The history-free row (cards without ``history``: the generalist as first shipped)."""
AHEAD = (None, 0, 1)
"""The history policy's third head: size for demand now, or for the forecast at the lead time at its error
quantile q50 or q90 (indices into ``history.QUANTILES``), whichever is higher (DESIGN.md section 15)."""


BASE_FEATURE = "base"
"""The last column of a network that sees its calibrated base (``calibration.sees_base``), as a utilisation."""


def feature_names(history: bool, sees_base: bool = False) -> list[str]:
    """A generalist's row: the history-free features, then ``history.FEATURES``, then the base where it sees it."""
    return [*FEATURES, *(hist.FEATURES if history else ()), *((BASE_FEATURE,) if sees_base else ())]


def n_features(history: bool, sees_base: bool = False) -> int:
    return len(feature_names(history, sees_base))


def nvec(history: bool) -> np.ndarray:
    """The per-service action: a level, a rebalance verb (pooled over services) and, with history, ``AHEAD``."""
    return np.array([len(LEVELS), 3, *((len(AHEAD),) if history else ())], dtype=np.int64)


@dataclass(frozen=True)
class ServiceTraits:
    """What a cluster declares about its services, ``[S]`` each: the only constants the generalist uses.

    ``rps`` is the declared requests/s one replica serves at 100% on its
    preferred pool; the builder corrects it online from measured utilisation,
    so a declaration that is off by 20% does not make the policy under-provision.
    """

    services: tuple[str, ...]
    rps: tuple[float, ...]
    slo_s: tuple[float, ...]
    min_replicas: tuple[int, ...]
    max_replicas: tuple[int, ...]
    lead_s: tuple[float, ...]
    cold_start_s: tuple[float, ...]
    price_ratio: tuple[float, ...]
    replicas_per_node: tuple[float, ...]
    batch: tuple[bool, ...]
    step_s: float
    uniform_speed: tuple[bool, ...] = ()
    """Per service: all of its pools run at one speed, so repacking cannot move it onto slower nodes (empty: all)."""

    @classmethod
    def from_scenario(cls, scenario: Scenario) -> "ServiceTraits":
        pools = {p.name: p for p in scenario.pools}
        first = [pools[s.pools[0]] for s in scenario.services]

        def per_replica(s: Any, p: Any) -> float:
            fit = min(p.vcpu // s.replica.cpu, p.memory_gib // s.replica.memory_gib,
                      p.gpus // s.replica.gpus if s.replica.gpus else float("inf"))
            return p.price_per_hour / fit if fit >= 1 else float("inf")

        def price_ratio(s: Any) -> float:
            """The preferred pool's price per replica over the cheapest of the service's pools."""
            prices = [per_replica(s, pools[name]) for name in s.pools]
            cheapest = min(prices)
            return prices[0] / cheapest if 0 < cheapest < float("inf") else 1.0

        return cls(
            services=tuple(s.name for s in scenario.services),
            rps=ObsSpec.from_scenario(scenario).replica_rps,
            slo_s=tuple(s.slo_target_s for s in scenario.services),
            min_replicas=tuple(s.min_replicas for s in scenario.services),
            max_replicas=tuple(s.max_replicas for s in scenario.services),
            lead_s=tuple(p.provision_delay_s + s.cold_start_s for s, p in zip(scenario.services, first)),
            cold_start_s=tuple(s.cold_start_s for s in scenario.services),
            price_ratio=tuple(price_ratio(s) for s in scenario.services),
            replicas_per_node=tuple(max(1.0, p.vcpu // s.replica.cpu) for s, p in zip(scenario.services, first)),
            batch=tuple(s.kind == "batch" for s in scenario.services),
            step_s=float(scenario.step_s),
            uniform_speed=tuple(len({pools[name].speed for name in s.pools}) == 1 for s in scenario.services),
        )

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: np.asarray(getattr(self, f.name), dtype=np.float64) for f in fields(self)
                if f.name not in ("services", "step_s", "uniform_speed")}

    @property
    def n_services(self) -> int:
        return len(self.services)


def _finite(x: Any, fill: float = 0.0) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.where(np.isfinite(x), x, fill)


@dataclass
class _Clean:
    """One interval's metrics with NaN/inf replaced, computed once per ``build``."""

    arrivals: np.ndarray
    ready: np.ndarray
    desired: np.ndarray
    util: np.ndarray
    p95: np.ndarray
    backlog: np.ndarray
    dropped: np.ndarray

    @classmethod
    def of(cls, m: Metrics) -> "_Clean":
        return cls(
            arrivals=np.maximum(_finite(m.arrivals_rps), 0.0),
            ready=np.maximum(_finite(m.ready), 0.0),
            desired=np.rint(np.maximum(_finite(m.desired), 0.0)),
            util=_finite(m.utilisation),
            p95=_finite(m.latency_p95_s),
            backlog=np.maximum(_finite(m.backlog), 0.0),
            dropped=np.maximum(_finite(m.dropped), 0.0),
        )


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


class RelativeObservation:
    """Builds ``[N * S, N_FEATURES]`` per-service rows from ``Metrics``; keeps each cluster's short history.

    State per cluster: the last ``HISTORY`` arrival rates and the online
    estimate of each service's true per-replica capacity. Training (the
    generalist env) and serving (``GeneralPolicy``) both call ``build`` once per
    decision interval, so they cannot drift apart.
    """

    def __init__(self, traits: ServiceTraits, n: int = 1, history: bool = False,
                 history_days: float = hist.DEFAULT_DAYS) -> None:
        self.traits = traits
        self.uses_history = history
        self.history_days = history_days
        a = traits.arrays()
        self._rps, self._slo = a["rps"], a["slo_s"]
        self._min, self._max = a["min_replicas"], a["max_replicas"]
        self._lead = a["lead_s"] / traits.step_s
        self._cold = a["cold_start_s"] / traits.step_s
        self._price = np.log(np.maximum(a["price_ratio"], 1e-6))
        self._per_node = np.log(a["replicas_per_node"]) / 3.0
        self._batch = a["batch"]
        self.uniform_speed = all(traits.uniform_speed)
        """No service of the cluster can be repacked onto slower nodes (``calm_repack`` needs this)."""
        self.node_steps = float(np.max(self._lead - self._cold))
        """The slowest node provisioning of the cluster's services, in intervals (``hole_reserve`` reads it)."""
        self.reset_all(n)

    def reset_all(self, n: int) -> None:
        S = self.traits.n_services
        self.n = n
        self.history = np.zeros((n, HISTORY, S))
        self.rps_hat = np.tile(self._rps, (n, 1))
        self.count = np.zeros(n, dtype=np.int64)
        # what ``build`` measured for this interval's decision, [n, S] each: read by ``RelativeDecoder``
        self.current = np.zeros((n, S))
        self.demand = np.zeros((n, S))
        self.floor = np.zeros((n, S))
        self.rise = np.ones((n, S))  # growth() of this interval
        self.hurting = np.zeros((n, S), dtype=bool)  # over the SLO or dropping requests
        self.clean: _Clean | None = None  # this interval's metrics, NaN/inf replaced
        self.long = (hist.DemandHistory(n, S, self.traits.step_s, self._lead, self.history_days)
                     if self.uses_history else None)
        self.past = np.zeros((n, S, hist.N_FEATURES))  # this interval's history features

    def reset(self, mask: np.ndarray | None = None) -> None:
        """Forget the masked clusters' history (all when None)."""
        rows = slice(None) if mask is None else np.asarray(mask)
        self.history[rows] = 0.0
        self.rps_hat[rows] = self._rps
        self.count[rows] = 0
        if self.long is not None:
            self.long.reset(None if mask is None else np.asarray(mask))

    def load_history(self, i: int, past: np.ndarray, end_s: float) -> None:
        """Cluster ``i``'s past demand ``[L, S]`` (req/s, oldest first, NaN for gaps) up to the interval ending at
        ``end_s``: a trace's preceding days, a generator's warm-up days, or what Prometheus kept."""
        if self.long is not None:
            self.long.load(i, past, end_s)

    def history_days_available(self) -> np.ndarray:
        """``[N, S]`` days of demand history each service has (0 without history)."""
        return self.long.days() if self.long is not None else np.zeros((self.n, self.traits.n_services))

    def _push(self, c: _Clean, m: Metrics) -> np.ndarray:
        a = c.arrivals
        self.history = np.roll(self.history, 1, axis=1)
        fresh = self.count == 0
        self.history[:, 0] = a
        self.history[fresh] = a[fresh][:, None, :]
        self.count += 1
        ready, util = c.ready, c.util
        ok = (ready >= 1) & (util > 0.05) & (util < 0.97) & (a > 0) & ~(_finite(m.rebalancing)[:, None] > 0)
        measured = np.clip(_ratio(a, ready * util), self._rps * CAPACITY_CLIP[0], self._rps * CAPACITY_CLIP[1])
        self.rps_hat = np.where(ok, (1 - CAPACITY_EMA) * self.rps_hat + CAPACITY_EMA * measured, self.rps_hat)
        return a

    def growth(self) -> np.ndarray:
        """Demand growth projected over each service's lead time, ``[N, S]`` in ``GROWTH_CLIP``.

        The per-interval rate of the last five intervals, compounded over the
        lead time (provisioning + cold start): what a rise will have added by
        the time capacity asked for now is ready.
        """
        h = self.history
        base = np.maximum(h[:, 5], 1e-9)
        per_step = np.clip(_ratio(h[:, 0], base), *GROWTH_CLIP) ** (1.0 / 5.0)
        return np.clip(per_step ** np.maximum(self._lead, 1.0), *GROWTH_CLIP)

    def _demand(self, c: _Clean) -> np.ndarray:
        """Replicas' worth of demand now: arrivals over estimated capacity, plus the backlog drained over the lead time."""
        drain = _ratio(c.backlog, self.rps_hat * self.traits.step_s * np.maximum(self._lead, 1.0))
        return self.history[:, 0] / self.rps_hat + drain

    def _floor(self, c: _Clean, demand: np.ndarray) -> np.ndarray:
        """The margin: ``[N, S]`` replicas the decoder never goes below (before min/max)."""
        need = np.ceil(demand * self.rise / U_MAX - 1e-9)
        return np.where(self.hurting, np.maximum(need, c.desired), need)

    def build(self, m: Metrics) -> np.ndarray:
        """float32 ``[N * S, N_FEATURES]`` (service-major within a cluster); pushes this interval into the history.

        Also leaves this interval's ``current``, ``demand`` and ``floor`` for the decoder, so the
        decision sizes with exactly the numbers the policy saw (and ``clean``, ``rise`` and ``hurting``,
        which ``calm_repack`` reads).
        """
        c = _Clean.of(m)
        a = self._push(c, m)
        n, S = a.shape
        h = self.history
        ready, desired = c.ready, c.desired
        self.clean = c
        self.current = desired
        self.demand = self._demand(c)
        self.rise = self.growth()
        self.hurting = (c.p95 > self._slo) | (c.dropped > 0)
        self.floor = self._floor(c, self.demand)
        cap_soon = np.maximum(desired, 1.0) * self.rps_hat
        cap_ready = np.maximum(ready, 1.0) * self.rps_hat
        scale = h.mean(axis=1) * 1e-3 + 1e-9
        logs = np.log(h + scale[:, None, :])
        steps = np.diff(logs[:, : LAGS[-1] + 1], axis=1)
        slope = (logs[:, 0] - logs[:, 5]) / 5.0
        lead = np.maximum(self._lead, 1.0)
        forecast = np.clip(slope * lead, -2.0, 2.0)
        backlog, dropped = c.backlog, c.dropped
        cols = [
            a / cap_soon,
            a / cap_ready,
            c.util,
            c.p95 / self._slo,
            backlog / (cap_soon * self.traits.step_s),
            _ratio(dropped, a * self.traits.step_s),
            (desired - ready) / np.maximum(desired, 1.0),
            *(logs[:, 0] - logs[:, k] for k in LAGS),
            steps.std(axis=1) * 10.0,
            forecast,
            a * np.exp(forecast) / cap_soon,
            self._lead / 10.0,
            self._cold / 10.0,
            self.rps_hat / self._rps,
            (desired <= self._min).astype(np.float64),
            _ratio(self._max - desired, np.maximum(desired, 1.0)),
            self._price,
            self._per_node,
            _finite(m.packing, 1.0).mean(axis=1)[:, None],
            _finite(m.hot_spot)[:, None],
            _finite(m.rebalancing)[:, None],
            self._batch,
            self.floor / np.maximum(desired, 1.0),
        ]
        width = n_features(self.uses_history)
        out = np.empty((n, S, width))
        for j, col in enumerate(cols):
            out[:, :, j] = col
        if self.long is not None:
            self.long.append(a, _finite(m.time_s))
            self.past = self.long.features(a)
            out[:, :, N_FEATURES:] = self.past
        out = np.clip(np.where(np.isnan(out), 0.0, out), -CLIP, CLIP)
        return out.reshape(n * S, width).astype(np.float32)


class RelativeDecoder:
    """Turns a per-service target utilisation into replicas, through the churn bounds and the floor.

    ``proposal = ceil(demand / level)``; scale-down takes the highest proposal
    of the last ``DOWN_WINDOW_STEPS`` intervals; demand within ``TOLERANCE`` of the
    current count at the level holds it; the result never goes below the observation's
    ``floor`` and is clamped to *this* cluster's min/max only.
    """

    def __init__(self, traits: ServiceTraits, n: int = 1, history: bool = False) -> None:
        self.traits = traits
        self.demand_window = history
        """With history, the scale-down window holds the highest *demand* of the last intervals, not the highest
        proposal: a hotter level then frees replicas in the interval it is picked, so the choice is learnable."""
        a = traits.arrays()
        self._min = a["min_replicas"].astype(np.int64)
        self._max = a["max_replicas"].astype(np.int64)
        self.window = DOWN_WINDOW_STEPS
        self.reset_all(n)

    def reset_all(self, n: int) -> None:
        self.recent = np.zeros((n, self.window, self.traits.n_services))

    def reset(self, mask: np.ndarray | None = None) -> None:
        rows = slice(None) if mask is None else np.asarray(mask)
        self.recent[rows] = 0.0

    def replicas_at(self, level: np.ndarray, obs: RelativeObservation, ahead: np.ndarray | None = None) -> np.ndarray:
        """``[N, S]`` int64 desired replicas for target utilisations ``[N, S]`` in (0, 1] (after ``obs.build`` of
        this interval); ``ahead`` ``[N, S]`` indexes ``AHEAD`` (the history policy's forecast head).

        Hand-made level rules (``experiments/level_rules.py``) go through here, so
        they are judged with exactly the windows, floor and limits the network's
        levels get.
        """
        demand, current = obs.demand, obs.current
        if self.demand_window:
            return self._replicas_history(level, obs, ahead)
        # HPA's tolerance is on the usage ratio, not on the count: a few replicas must not flap by one
        ratio = demand / (np.maximum(current, 1.0) * level)
        proposal = np.where(np.abs(ratio - 1.0) <= TOLERANCE, current, np.ceil(demand / level - 1e-9))
        self.recent = np.roll(self.recent, 1, axis=1)
        self.recent[:, 0] = proposal
        stable = self.recent.max(axis=1)
        target = np.where(proposal > current, proposal, np.minimum(stable, current))
        target = np.maximum(target, obs.floor)
        return np.clip(target, self._min, self._max).astype(np.int64)

    def _replicas_history(self, level: np.ndarray, obs: RelativeObservation, ahead: np.ndarray | None) -> np.ndarray:
        """The history policy's sizing: demand now or the forecast at the lead time (never below now), through
        the tolerance band and a scale-down window over demand, and never under the floor."""
        demand, current = obs.demand, obs.current
        if ahead is not None:
            pick = np.clip(np.asarray(ahead, dtype=np.int64), 0, len(AHEAD) - 1)
            ratio_at = np.stack([np.ones_like(demand), *(hist.forecast_ratio(obs.past, q) for q in AHEAD[1:])])
            lift = np.take_along_axis(ratio_at, pick[None], axis=0)[0]
            demand = demand * np.maximum(lift, 1.0)
        self.recent = np.roll(self.recent, 1, axis=1)
        self.recent[:, 0] = demand
        peak = self.recent.max(axis=1)
        ratio = demand / (np.maximum(current, 1.0) * level)
        up = np.ceil(demand / level - 1e-9)
        down = np.minimum(np.ceil(peak / level - 1e-9), current)
        target = np.where(np.abs(ratio - 1.0) <= TOLERANCE, current, np.where(up > current, up, down))
        target = np.maximum(target, obs.floor)
        return np.clip(target, self._min, self._max).astype(np.int64)


PACK_UTILISATION = 0.75
"""Repack only while every service would stay under this utilisation without the replicas that restart."""


HOLE_FREE_STEPS = 2.0
"""Nodes that come within this many intervals need no warm room kept for them."""
HOLE_PER_STEP = 0.04
"""Warm room kept per interval of node provisioning beyond ``HOLE_FREE_STEPS`` (chosen on validation seeds)."""


def hole_reserve(node_steps: float) -> float:
    """Warm room to keep on ready nodes, as a share of the requested CPU, for nodes that take ``node_steps`` to come.

    The holes a repack removes were room a sudden crowd fills at a replica's
    cold start; without them it waits for a new node as well.
    """
    return HOLE_PER_STEP * max(0.0, node_steps - HOLE_FREE_STEPS)


def calm_repack(m: Metrics, obs: RelativeObservation, drain: bool = True) -> np.ndarray:
    """``[N]`` rebalance verbs the decoder runs unasked: consolidate, drain one node, or none.

    Reads what ``obs.build`` kept of this interval; call it after ``build``.

    A ReplicaSet scale-down leaves holes on every node, and the cluster
    autoscaler drains a node only below half full: a cluster run by HPA pays
    for about a fifth more node CPU than its replicas request. Repacking
    restarts the moved replicas, so it waits for a calm interval: a node can be
    freed, load is not rising, nothing is pending, violated or dropped, no
    repack is in progress, every service keeps ``PACK_UTILISATION`` without the
    replicas that restart, and no service can be moved onto slower nodes.
    Where repacking the whole cluster at once would restart too many replicas
    (after a sudden fall in load, many nodes are freeable), draining the
    emptiest node restarts at most its share, one node per calm interval.
    """
    none = np.zeros(m.n, dtype=np.int64)
    c = obs.clean
    if c is None or not obs.uniform_speed:
        return none
    nodes = np.maximum(_finite(m.nodes_ready), 0.0)
    packing = np.clip(_finite(m.packing, 1.0), 0.0, 1.0)
    spare = nodes - np.ceil(packing * nodes - 1e-9)
    busy = (obs.hurting | (c.desired > c.ready)).any(axis=1)
    calm = ((spare >= 1).any(axis=1) & ~busy & (obs.rise <= 1.0).all(axis=1) & ~(_finite(m.rebalancing) > 0))

    def cool(share: np.ndarray) -> np.ndarray:
        left = c.ready * (1.0 - share[:, None])
        hot = np.where(left >= 1.0, _ratio(c.arrivals, left * obs.rps_hat) >= PACK_UTILISATION, True)
        return ~hot.any(axis=1)

    reserve = hole_reserve(obs.node_steps) * packing * nodes  # node units of warm room to keep
    free = nodes - packing * nodes
    whole = calm & cool(np.max(_ratio(spare, nodes), axis=1)) & (reserve < 1e-9).all(axis=1)
    one = calm & ~whole & cool(np.max(_ratio(np.minimum(spare, 1.0), nodes), axis=1)) & (free - 1.0 >= reserve).any(axis=1)
    one &= drain
    return np.where(whole, REBALANCE_CONSOLIDATE, np.where(one, REBALANCE_DRAIN, REBALANCE_NONE)).astype(np.int64)


def decide(level: np.ndarray, rebalance: np.ndarray, obs: RelativeObservation, dec: RelativeDecoder,
           ahead: np.ndarray | None = None) -> Action:
    """The typed action for per-service target utilisations ``[N, S]``, a rebalance verb ``[N]`` and (history)
    ``AHEAD`` ``[N, S]``."""
    return Action(replicas=dec.replicas_at(level, obs, ahead), rebalance=np.asarray(rebalance, dtype=np.int64))
