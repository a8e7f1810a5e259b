"""Observation builder and action decoder, shared by the env and the controller.

A policy must never see a feature at serve time that was computed differently
at train time, so both the Gymnasium env and the controller build observations
from the same ``Metrics`` with the same ``ObservationBuilder``, and decode
actions with the same ``ActionDecoder``. Everything is batched: arrays carry a
leading axis of N clusters (N = 1 for a single cluster).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from numba import njit

from rlscale.config import Scenario

REBALANCE_NONE, REBALANCE_CONSOLIDATE, REBALANCE_SPREAD, REBALANCE_DRAIN = 0, 1, 2, 3
REBALANCE_NAMES = ("none", "consolidate", "spread", "drain")
HISTORY_LAGS = (1, 2, 5, 10, 15)
HISTORY_LEN = max(HISTORY_LAGS) + 1
OBS_CLIP = 10.0
SECONDS_PER_DAY = 86_400.0
SECONDS_PER_WEEK = 7 * SECONDS_PER_DAY


@dataclass
class Metrics:
    """What a cluster reports once per decision interval, batched over N clusters.

    Shapes: ``[N]`` for cluster-wide values, ``[N, S]`` per service, ``[N, P]`` per pool.
    A real cluster fills this from Prometheus; the simulator fills it directly.
    ``latency_p95_s`` is the p95 request latency for online services and the
    backlog age for batch services: in both cases the quantity the SLO bounds.
    """

    time_s: np.ndarray
    arrivals_rps: np.ndarray
    ready: np.ndarray
    desired: np.ndarray
    utilisation: np.ndarray
    latency_p95_s: np.ndarray
    backlog: np.ndarray
    dropped: np.ndarray
    nodes_ready: np.ndarray
    nodes_provisioning: np.ndarray
    packing: np.ndarray
    cost_rate_usd_h: np.ndarray
    hot_spot: np.ndarray
    rebalancing: np.ndarray

    @property
    def n(self) -> int:
        return int(self.arrivals_rps.shape[0])

    def row(self, i: int) -> "Metrics":
        """Cluster i alone, still batched (N = 1)."""
        return self.select(np.array([i]))

    def select(self, rows: np.ndarray) -> "Metrics":
        """The clusters of ``rows`` (indices or a boolean mask), still batched."""
        return Metrics(**{f.name: np.asarray(getattr(self, f.name))[rows] for f in fields(self)})

    def to_dict(self) -> dict[str, list[Any]]:
        return {k: np.asarray(v).tolist() for k, v in asdict(self).items()}


# The ``Metrics`` fields in the order of ``ObservationBuilder.build_packed``'s ``columns``:
# per-service fields, then per-pool, then cluster-wide ones.
PACKED_FIELDS = (
    "ready", "desired", "utilisation", "latency_p95_s", "backlog", "dropped",
    "nodes_ready", "nodes_provisioning", "packing",
    "cost_rate_usd_h", "hot_spot", "rebalancing",
)


@dataclass
class Action:
    """What every backend understands: desired replicas per service and a rebalance verb.

    ``replicas`` is ``[N, S]`` int64 (absolute, like a Deployment's ``spec.replicas``);
    ``rebalance`` is ``[N]`` int64 in {0 none, 1 consolidate (repack every node),
    2 spread, 3 drain (move the emptiest node's replicas onto the others)}.
    A policy's action space holds the first three; the generalist's decoder
    drains unasked.
    """

    replicas: np.ndarray
    rebalance: np.ndarray

    def row(self, i: int) -> "Action":
        return Action(self.replicas[i : i + 1].copy(), self.rebalance[i : i + 1].copy())


@dataclass(frozen=True)
class ObsSpec:
    """The constants that turn metrics into an O(1) observation; saved in a policy's card."""

    services: tuple[str, ...]
    pools: tuple[str, ...]
    replica_rps: tuple[float, ...]
    ref_replicas: tuple[float, ...]
    slo_target_s: tuple[float, ...]
    max_nodes: tuple[float, ...]
    step_s: float
    cost_ref_usd_h: float

    @classmethod
    def from_scenario(cls, scenario: Scenario) -> "ObsSpec":
        speed = {p.name: p.speed for p in scenario.pools}
        return cls(
            services=tuple(s.name for s in scenario.services),
            pools=tuple(p.name for p in scenario.pools),
            replica_rps=tuple(s.replica_rps * speed[s.pools[0]] for s in scenario.services),
            ref_replicas=tuple(float(s.max_replicas) for s in scenario.services),
            slo_target_s=tuple(s.slo_target_s for s in scenario.services),
            max_nodes=tuple(float(p.max_nodes) for p in scenario.pools),
            step_s=scenario.step_s,
            cost_ref_usd_h=scenario.reward.cost_scale * 3600.0 / scenario.step_s,
        )

    def mismatch(self, scenario: Scenario) -> str | None:
        """Why a policy trained with this spec cannot run on ``scenario`` (other services or pools), or None.

        The one check behind ``make_policy``'s refusal and the controller's
        ``model_mismatch`` fallback, so both say the same thing.
        """
        cluster = ObsSpec.from_scenario(scenario)
        if self.services == cluster.services and self.pools == cluster.pools:
            return None
        return (f"trained for services {list(self.services)} and pools {list(self.pools)}, "
                f"but scenario {scenario.name!r} has {list(cluster.services)} and {list(cluster.pools)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ObsSpec":
        return cls(**{f.name: tuple(data[f.name]) if isinstance(data[f.name], list) else data[f.name] for f in fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @property
    def n_services(self) -> int:
        return len(self.services)

    @property
    def n_pools(self) -> int:
        return len(self.pools)

    @property
    def per_service(self) -> int:
        return 1 + len(HISTORY_LAGS) + 9

    @property
    def size(self) -> int:
        return self.n_services * self.per_service + 3 * self.n_pools + 7

    def feature_names(self) -> list[str]:
        per = ["load"] + [f"load_lag{lag}" for lag in HISTORY_LAGS] + [
            "trend", "ready", "desired", "pending", "utilisation", "slo_ratio",
            "backlog", "dropped_fraction", "load_per_ready",
        ]
        names = [f"{s}.{f}" for s in self.services for f in per]
        names += [f"{p}.{f}" for p in self.pools for f in ("nodes_ready", "nodes_provisioning", "packing")]
        names += ["cost_rate", "day_sin", "day_cos", "week_sin", "week_cos", "hot_spot", "rebalancing"]
        return names


class ObservationBuilder:
    """Turns ``Metrics`` into observations, keeping the short load history the policy needs.

    The history is the only state, so training (env) and serving (controller)
    stay identical as long as both call ``build`` once per decision interval.
    """

    def __init__(self, spec: ObsSpec, n: int = 1) -> None:
        self.spec = spec
        self._rps = np.asarray(spec.replica_rps, dtype=np.float64)
        self._ref = np.asarray(spec.ref_replicas, dtype=np.float64)
        self._cap = self._rps * self._ref
        self._slo = np.asarray(spec.slo_target_s, dtype=np.float64)
        self._max_nodes = np.asarray(spec.max_nodes, dtype=np.float64)
        self._lags = np.asarray(HISTORY_LAGS)
        self._consts = (self._rps, self._ref, self._slo, self._max_nodes, float(spec.step_s), float(spec.cost_ref_usd_h))
        self.history = np.zeros((n, HISTORY_LEN, spec.n_services))
        self._fresh = np.ones(n, dtype=bool)
        self._head = np.zeros(n, dtype=np.int64)
        self._all = np.arange(n, dtype=np.int64)
        self._size = spec.size

    def reset(self, mask: np.ndarray | None = None) -> None:
        """Forget the history of the masked clusters (all when mask is None)."""
        if mask is None:
            self._fresh[:] = True
        else:
            self._fresh[mask] = True

    def build(self, m: Metrics, rows: np.ndarray | None = None) -> np.ndarray:
        """float32 ``[len(rows), size]``; pushes this interval's load into those rows' history.

        ``m`` holds the metrics of ``rows`` only (all clusters when rows is None).
        """
        rows = self._all if rows is None else np.asarray(rows, dtype=np.int64)
        out = np.empty((rows.shape[0], self._size), dtype=np.float32)
        _features(*self.feature_args(m, rows), out)
        return out

    def feature_args(self, m: Metrics, rows: np.ndarray | None = None) -> tuple[Any, ...]:
        """``_features``' arguments but its output, for a compiled caller that builds the observation itself."""
        return (
            self.history, self._head, self._fresh, self._all if rows is None else rows, self._lags, m.arrivals_rps, m.ready,
            m.desired, m.utilisation, m.latency_p95_s, m.backlog, m.dropped, m.nodes_ready, m.nodes_provisioning,
            m.packing, m.time_s, m.cost_rate_usd_h, m.hot_spot, m.rebalancing, self._consts,
        )

    def build_packed(self, time_s: np.ndarray, arrivals_rps: np.ndarray, per_service: np.ndarray,
                     per_pool: np.ndarray, cluster: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """``build`` of every cluster from metrics packed column-wise, as the simulator keeps them.

        Same features, same arithmetic as ``build(Metrics(...))``, but the
        columns are sliced in compiled code: wrapping the simulator's buffers
        in a ``Metrics`` of 14 arrays, 11 of them new views, costs more than
        building the observation of a small cluster. ``per_service`` is
        ``[N, S, *]``, ``per_pool`` ``[N, P, *]``, ``cluster`` ``[N, *]``;
        ``columns`` (int64, in ``PACKED_FIELDS`` order) says where each
        ``Metrics`` field sits in them.
        """
        out = np.empty((self._all.shape[0], self._size), dtype=np.float32)
        _features_packed(self.history, self._head, self._fresh, self._all, self._lags, time_s, arrivals_rps,
                         per_service, per_pool, cluster, columns, self._consts, out)
        return out


@njit(cache=True)
def _clip(x: float) -> float:
    if x != x:
        return 0.0
    return min(OBS_CLIP, max(-OBS_CLIP, x))


@njit(cache=True)
def _features_packed(history, head, fresh, rows, lags, time_s, arrivals, per_service, per_pool, cluster, columns,
                     consts, out):
    """``_features`` over column slices of packed buffers (taken here, where a slice costs nothing)."""
    c = columns
    _features(
        history, head, fresh, rows, lags, arrivals, per_service[:, :, c[0]], per_service[:, :, c[1]],
        per_service[:, :, c[2]], per_service[:, :, c[3]], per_service[:, :, c[4]], per_service[:, :, c[5]],
        per_pool[:, :, c[6]], per_pool[:, :, c[7]], per_pool[:, :, c[8]], time_s, cluster[:, c[9]],
        cluster[:, c[10]], cluster[:, c[11]], consts, out,
    )


@njit(cache=True)
def _features(history, head, fresh, rows, lags, arrivals, ready, desired, util, p95, backlog, dropped,
              nodes_ready, nodes_prov, packing, time_s, cost_rate, hot, rebal, consts, out):
    """Push each row's load into its history, then write the ObsSpec.feature_names() vector (NaN -> 0, clipped)
    of each row into ``out`` ``[n, size]`` float32.

    ``out`` comes from the caller, as in the other compiled helpers here: numba returns a new array through a
    Python-level call, a measurable share of a single-cluster step.
    """
    rps, ref, slo, max_nodes, step_s, cost_ref = consts
    n, S = arrivals.shape
    P = nodes_ready.shape[1]
    H = history.shape[1]
    L = lags.shape[0]
    per = 1 + L + 9
    for i in range(n):
        row = rows[i]
        h = (head[row] + 1) % H
        head[row] = h
        for s in range(S):
            load = arrivals[i, s] / (rps[s] * ref[s])
            if fresh[row]:
                history[row, :, s] = load
            else:
                history[row, h, s] = load
        fresh[row] = False
        j = 0
        for s in range(S):
            load = history[row, h, s]
            out[i, j] = _clip(load)
            for lag in range(L):
                out[i, j + 1 + lag] = _clip(history[row, (h - lags[lag]) % H, s])
            k = j + 1 + L
            out[i, k] = _clip(load - history[row, (h - lags[2]) % H, s])
            out[i, k + 1] = _clip(ready[i, s] / ref[s])
            out[i, k + 2] = _clip(desired[i, s] / ref[s])
            out[i, k + 3] = _clip((desired[i, s] - ready[i, s]) / ref[s])
            out[i, k + 4] = _clip(util[i, s])
            out[i, k + 5] = _clip(p95[i, s] / slo[s])
            out[i, k + 6] = _clip(backlog[i, s] / (rps[s] * ref[s] * step_s))
            out[i, k + 7] = _clip(dropped[i, s] / max(arrivals[i, s] * step_s, 1.0))
            out[i, k + 8] = _clip(arrivals[i, s] / (max(ready[i, s], 1.0) * rps[s]))
            j += per
        for p in range(P):
            out[i, j + p] = _clip(nodes_ready[i, p] / max_nodes[p])
            out[i, j + P + p] = _clip(nodes_prov[i, p] / max_nodes[p])
            out[i, j + 2 * P + p] = _clip(packing[i, p])
        j += 3 * P
        day = 2.0 * np.pi * (time_s[i] % SECONDS_PER_DAY) / SECONDS_PER_DAY
        week = 2.0 * np.pi * (time_s[i] % SECONDS_PER_WEEK) / SECONDS_PER_WEEK
        out[i, j] = _clip(cost_rate[i] / cost_ref)
        out[i, j + 1] = np.sin(day)
        out[i, j + 2] = np.cos(day)
        out[i, j + 3] = np.sin(week)
        out[i, j + 4] = np.cos(week)
        out[i, j + 5] = _clip(hot[i])
        out[i, j + 6] = _clip(rebal[i])


@dataclass(frozen=True)
class ActionSpec:
    """MultiDiscrete layout: per service a delta in {-k..k}, then one rebalance verb."""

    n_services: int
    max_step: int
    min_replicas: tuple[int, ...]
    max_replicas: tuple[int, ...]

    @classmethod
    def from_scenario(cls, scenario: Scenario) -> "ActionSpec":
        return cls(
            n_services=len(scenario.services),
            max_step=scenario.actions.max_step,
            min_replicas=tuple(s.min_replicas for s in scenario.services),
            max_replicas=tuple(s.max_replicas for s in scenario.services),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ActionSpec":
        return cls(
            n_services=int(data["n_services"]),
            max_step=int(data["max_step"]),
            min_replicas=tuple(int(v) for v in data["min_replicas"]),
            max_replicas=tuple(int(v) for v in data["max_replicas"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @property
    def nvec(self) -> np.ndarray:
        return np.array([2 * self.max_step + 1] * self.n_services + [3], dtype=np.int64)


class InvalidAction(ValueError):
    """A raw action outside its MultiDiscrete space (a negative entry, or one >= its ``nvec``)."""


class ActionDecoder:
    """Turns a raw MultiDiscrete action into a typed ``Action`` relative to the current replicas."""

    def __init__(self, spec: ActionSpec) -> None:
        self.spec = spec
        self._lo = np.asarray(spec.min_replicas, dtype=np.int64)
        self._hi = np.asarray(spec.max_replicas, dtype=np.int64)
        self._nvec = spec.nvec
        self._width = spec.n_services + 1
        self.bounds = (spec.max_step, self._lo, self._hi, self._nvec)  # _decode's arguments after desired

    def decode(self, raw: np.ndarray, desired: np.ndarray) -> Action:
        """``raw`` is ``[N, S + 1]`` (or one ``[S + 1]`` row); raises ``InvalidAction`` if it is outside the space.

        Checked and decoded in one compiled call: on a single cluster the numpy
        version's dozen small array operations cost more than the simulator step.
        """
        raw = np.asarray(raw)
        if raw.dtype != np.int64:
            # checked in its own dtype first, as a Gymnasium space would: -0.5 is outside, not action 0
            if (raw < 0).any() or (raw.reshape(-1, self._width) >= self._nvec).any():
                raise InvalidAction(f"action {raw!r} is not in MultiDiscrete({self._nvec})")
            raw = raw.astype(np.int64)
        if raw.ndim != 2 or raw.shape[1] != self._width:
            raw = raw.reshape(-1, self._width)
        n = raw.shape[0]
        desired = np.asarray(desired, dtype=np.int64)
        if desired.shape != (n, self._width - 1):
            desired = np.ascontiguousarray(np.broadcast_to(desired, (n, self._width - 1)))
        replicas = np.empty((n, self._width - 1), dtype=np.int64)
        rebalance = np.empty(n, dtype=np.int64)
        if not _decode(raw, desired, *self.bounds, replicas, rebalance):
            raise InvalidAction(f"action {raw!r} is not in MultiDiscrete({self._nvec})")
        return Action(replicas=replicas, rebalance=rebalance)

    def encode(self, action: Action, desired: np.ndarray) -> np.ndarray:
        """The raw action closest to a typed one (deltas clipped to {-k..k})."""
        k = self.spec.max_step
        delta = np.clip(action.replicas - np.asarray(desired, dtype=np.int64), -k, k) + k
        return np.concatenate([delta, action.rebalance[:, None]], axis=1)


@njit(cache=True)
def _decode(raw, desired, max_step, lo, hi, nvec, replicas, rebalance):
    """Write replicas ``clip(desired + raw - max_step, lo, hi)`` and the rebalance verbs of ``raw``.

    False, leaving the outputs partly written, if an entry of ``raw`` is outside ``[0, nvec)``.
    """
    n, width = raw.shape
    S = width - 1
    for i in range(n):
        for j in range(width):
            if raw[i, j] < 0 or raw[i, j] >= nvec[j]:
                return False
        for s in range(S):
            replicas[i, s] = min(max(desired[i, s] + (raw[i, s] - max_step), lo[s]), hi[s])
        rebalance[i] = raw[i, S]
    return True
