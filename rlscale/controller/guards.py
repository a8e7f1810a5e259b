"""Guard rails: pure functions between a policy's recommendation and the cluster.

Kubernetes' HPA controller computes a recommendation and then, as a separate
step, applies its behaviour (stabilisation, rate policies, min/max) and records
why. We do the same: a policy recommends replicas, and the functions here
(numpy arrays in, numpy arrays out, no clocks, no I/O) check the metrics the
recommendation came from and bound the change, each bound reporting what it
did so that every decision can explain itself in the audit log.

Defaults are chosen so that any action a PPO policy can emit on a healthy
cluster (a delta of at most ``k = actions.max_step`` per service per step,
within min/max) passes unchanged: serving then equals evaluation. The
scale-down cooldown is therefore off by default (a policy trained without it
would be served differently with it).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from numba import njit

from rlscale.clusters.base import (  # noqa: F401 - the reasons are named here too, beside the guards
    FALLBACK_REASONS,
    METRICS_DEGRADED,
    METRICS_INVALID,
    METRICS_MISSING,
    METRICS_STALE,
    MODEL_MISMATCH,
    POLICY_ERROR,
)
from rlscale.config import ConfigError, Scenario
from rlscale.spaces import REBALANCE_NAMES, Metrics, ObsSpec

RATE_WINDOW_S = 60.0
"""The window of the per-minute limit: changes applied strictly after ``now - 60 s`` count."""

STALE_INTERVALS = 2.0
"""Metrics older than this many decision intervals are stale."""


# Guard names: the Prometheus label values and the audit log's adjustments[].guard.
CLAMP = "clamp"
COOLDOWN = "scale_down_cooldown"
STEP_LIMIT = "max_step_change"
MINUTE_LIMIT = "max_change_per_minute"
REBALANCE_BUSY = "rebalance_in_progress"
REBALANCE_INVALID = "rebalance_invalid"
GUARD_NAMES = (CLAMP, COOLDOWN, STEP_LIMIT, MINUTE_LIMIT, REBALANCE_BUSY, REBALANCE_INVALID)

PER_SERVICE = ("arrivals_rps", "ready", "desired", "utilisation", "latency_p95_s", "backlog", "dropped")
PER_POOL = ("nodes_ready", "nodes_provisioning", "packing")
CLUSTER_WIDE = ("time_s", "cost_rate_usd_h", "hot_spot", "rebalancing")
METRIC_FIELDS = tuple(f.name for f in fields(Metrics))
LATENCY_FIELDS = ("latency_p95_s",)
"""Readings a backend may not have (a load balancer's own counters carry no percentiles): unknown, not garbage."""

FIXED_LIMITS = {
    "arrivals_rps": 1e9,
    "utilisation": 10.0,
    "latency_p95_s": 1e7,
    "backlog": 1e12,
    "dropped": 1e12,
    "packing": 10.0,
    "time_s": 1e11,
    "cost_rate_usd_h": 1e7,
    "hot_spot": 1e3,
    "rebalancing": 1.0,
}
"""Upper bounds beyond which a reading is garbage, not a busy cluster (replicas and nodes use the scenario's maxima)."""


@dataclass(frozen=True)
class GuardConfig:
    """The guard rails of one cluster; ``from_scenario`` gives the defaults.

    ``max_step_change`` and ``max_change_per_minute`` are per service, in
    replicas, measured from the replicas the cluster reports as desired.
    ``scale_down_cooldown_s`` forbids a scale-down of a service within that
    many seconds of its last scale-up (0 = off).
    """

    services: tuple[str, ...]
    min_replicas: np.ndarray
    max_replicas: np.ndarray
    max_nodes: np.ndarray
    interval_s: float
    max_step_change: int
    max_change_per_minute: int
    scale_down_cooldown_s: float = 0.0
    stale_after_s: float = 0.0

    @classmethod
    def from_scenario(
        cls,
        scenario: Scenario,
        interval_s: float | None = None,
        max_step_change: int | None = None,
        max_change_per_minute: int | None = None,
        scale_down_cooldown_s: float = 0.0,
        stale_after_s: float | None = None,
    ) -> "GuardConfig":
        interval = float(interval_s if interval_s is not None else scenario.step_s)
        k = scenario.actions.max_step
        step = int(max_step_change if max_step_change is not None else k)
        per_minute = max_change_per_minute
        if per_minute is None:
            per_minute = step * decisions_per_window(interval)
        config = cls(
            services=tuple(s.name for s in scenario.services),
            min_replicas=np.array([s.min_replicas for s in scenario.services], dtype=np.int64),
            max_replicas=np.array([s.max_replicas for s in scenario.services], dtype=np.int64),
            max_nodes=np.asarray(ObsSpec.from_scenario(scenario).max_nodes, dtype=np.float64),
            interval_s=interval,
            max_step_change=step,
            max_change_per_minute=int(per_minute),
            scale_down_cooldown_s=float(scale_down_cooldown_s),
            stale_after_s=float(stale_after_s if stale_after_s is not None else STALE_INTERVALS * interval),
        )
        config.check()
        return config

    def __post_init__(self) -> None:
        uppers = [np.broadcast_to(self._upper(name), self._shape(name)).ravel() for name in METRIC_FIELDS]
        object.__setattr__(self, "_upper_flat", np.concatenate(uppers).astype(np.float64))
        start = sum(int(np.prod(self._shape(n))) for n in METRIC_FIELDS[: METRIC_FIELDS.index("desired")])
        object.__setattr__(self, "_desired_slice", slice(start, start + len(self.services)))
        object.__setattr__(self, "_shape_list", [self._shape(name) for name in METRIC_FIELDS])
        object.__setattr__(self, "_full_budget", np.full(len(self.services), max(self.max_change_per_minute, 0), dtype=np.int64))
        object.__setattr__(self, "_never", np.full(len(self.services), -np.inf))
        object.__setattr__(self, "_max_replicas_f", np.asarray(self.max_replicas, dtype=np.float64))
        d = self._desired_slice  # type: ignore[attr-defined]
        object.__setattr__(self, "_range_args", (self._upper_flat, d.start, d.stop, len(self.services), len(self.max_nodes)))  # type: ignore[attr-defined]

    def _shape(self, name: str) -> tuple[int, ...]:
        if name in PER_SERVICE:
            return (1, len(self.services))
        return (1, len(self.max_nodes)) if name in PER_POOL else (1,)

    def _upper(self, name: str) -> np.ndarray:
        if name in ("ready", "desired"):
            return self.max_replicas.astype(np.float64)[None]
        if name in ("nodes_ready", "nodes_provisioning"):
            return np.asarray(self.max_nodes, dtype=np.float64)[None]
        return np.float64(FIXED_LIMITS[name])

    def check(self) -> None:
        if not self.interval_s > 0:
            raise ConfigError(f"--interval {self.interval_s}: expected a number of seconds > 0")
        if self.max_step_change < 0:
            raise ConfigError(f"--max-step-change {self.max_step_change}: expected >= 0 replicas")
        if self.max_change_per_minute < 0:
            raise ConfigError(f"--max-change-per-minute {self.max_change_per_minute}: expected >= 0 replicas")
        if not self.scale_down_cooldown_s >= 0:
            raise ConfigError(f"--scale-down-cooldown {self.scale_down_cooldown_s}: expected >= 0 seconds")
        if not self.stale_after_s > 0:
            raise ConfigError(f"--stale-after {self.stale_after_s}: expected a number of seconds > 0")

    def to_dict(self) -> dict[str, Any]:
        return {
            "min_replicas": self.min_replicas.tolist(),
            "max_replicas": self.max_replicas.tolist(),
            "interval_s": self.interval_s,
            "max_step_change": self.max_step_change,
            "max_change_per_minute": self.max_change_per_minute,
            "scale_down_cooldown_s": self.scale_down_cooldown_s,
            "stale_after_s": self.stale_after_s,
        }


def decisions_per_window(interval_s: float) -> int:
    """How many decisions ``interval_s`` apart fall strictly inside one rate window (the current one included)."""
    return max(1, math.ceil(RATE_WINDOW_S / interval_s - 1e-9))


@dataclass
class GuardState:
    """What the stateful guard rails remember between decisions of one cluster.

    ``last_replicas`` is the last replicas the controller applied (None before
    the first), ``changes`` the (time, |change| per service) of applied
    decisions inside the rate window, ``last_scale_up_s`` per service.
    """

    last_replicas: np.ndarray | None = None
    changes: list[tuple[float, np.ndarray]] = field(default_factory=list)
    last_scale_up_s: np.ndarray | None = None


@dataclass(frozen=True)
class Assessment:
    """Whether a metrics sample can be trusted; ``reason`` is None when it can."""

    reason: str | None
    detail: str = ""
    bad_services: np.ndarray | None = None


_OK = Assessment(None)


def assess(metrics: Metrics | None, age_s: float | None, config: GuardConfig, degraded: bool = False) -> Assessment:
    """Check one cluster's metrics (N = 1): present, fresh, finite, non-negative and in range.

    Missing fields (None) or no sample at all: ``metrics_missing``; an age
    beyond ``stale_after_s``, unknown or negative: ``metrics_stale``; NaN,
    infinite, negative, out of range or misshapen values: ``metrics_invalid``.
    ``bad_services`` marks the services whose own readings are unusable.

    Latency is the exception to "missing or NaN is unusable": a backend that
    lost its metrics store still counts arrivals and busy slots, and the HPA
    rule needs only those. A sample the backend marks ``degraded``, or whose
    only missing or NaN readings are latencies (``LATENCY_FIELDS``), is
    ``metrics_degraded``: not good enough for the policy, good enough for HPA
    (its services are not marked bad). Any other problem in the same sample
    takes precedence.
    """
    if metrics is None:
        return Assessment(METRICS_MISSING, "no metrics sample")
    values = _FIELDS_OF(metrics)
    if age_s is not None and 0.0 <= age_s <= config.stale_after_s and not degraded and _all_in_range(values, config):
        return _OK  # the common case, checked first; a NaN or infinite age fails the comparison and is reported below
    absent = [name for name, value in zip(METRIC_FIELDS, values) if value is None]
    missing = [name for name in absent if name not in LATENCY_FIELDS]
    if missing:
        return Assessment(METRICS_MISSING, f"missing fields: {', '.join(missing)}")
    if age_s is None or not math.isfinite(age_s) or age_s < 0:
        return Assessment(METRICS_STALE, f"metrics age {age_s!r} s is unknown or in the future")
    if age_s > config.stale_after_s:
        return Assessment(METRICS_STALE, f"metrics are {age_s:g} s old (limit {config.stale_after_s:g} s)")
    problems: list[str] = []
    unknown = list(absent)
    bad = np.zeros(len(config.services), dtype=bool)
    for name in METRIC_FIELDS:
        raw = getattr(metrics, name)
        if raw is None:
            continue
        value = np.asarray(raw, dtype=np.float64) if _numeric(raw) else None
        shape = config._shape(name)
        if value is None or value.shape != shape:
            problems.append(f"{name} has shape {None if value is None else value.shape}, expected {shape}")
            if name in PER_SERVICE:
                bad[:] = True
            continue
        with np.errstate(invalid="ignore"):
            wrong = ~np.isfinite(value) | (value < 0) | (value > config._upper(name))
            if name == "desired":
                wrong |= np.abs(value - np.rint(value)) > 1e-6
            if name in LATENCY_FIELDS and np.isnan(value).any():
                unknown.append(name)
                wrong &= ~np.isnan(value)
        if wrong.any():
            problems.append(f"{name}={_fmt_values(value)} is not finite, negative or out of range")
            if name in PER_SERVICE:
                bad |= wrong[0]
    if problems:
        return Assessment(METRICS_INVALID, "; ".join(problems), bad)
    if degraded or unknown:
        head = ["the backend marked the sample degraded"] if degraded else []
        tail = [f"{', '.join(unknown)} not measured"] if unknown else []
        return Assessment(METRICS_DEGRADED, "; ".join(head + tail) + "; the HPA rule acts on utilisation")
    return Assessment(None)


def _all_in_range(values: tuple[Any, ...], config: GuardConfig) -> bool:
    """The fast path of ``assess`` over the ``METRIC_FIELDS`` values: each an array of the right shape, finite
    and within its bounds."""
    try:  # one compiled call over the 14 float64 arrays as they are (it checks their shapes too)
        return bool(_fields_in_bounds(*values, *config._range_args))  # type: ignore[attr-defined]
    except TypeError:  # not all float64 arrays of the right number of dimensions
        pass
    d = config._desired_slice  # type: ignore[attr-defined]
    for value, shape in zip(values, config._shape_list):  # type: ignore[attr-defined]
        if type(value) is not np.ndarray or value.shape != shape:
            return False
    try:
        flat = np.concatenate(values, axis=None, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return bool(_in_bounds(flat, config._upper_flat, d.start, d.stop))  # type: ignore[attr-defined]


_FIELDS_OF = operator.attrgetter(*METRIC_FIELDS)


@njit(cache=True)
def _span_in_bounds(a: np.ndarray, upper: np.ndarray, at: int, d0: int, d1: int) -> int:
    """0 <= value <= upper (NaN fails) for values ``a`` that start at ``upper[at]``, whole numbers (within
    1e-6) at positions ``[d0, d1)``: the position after ``a``, or -1."""
    for i in range(a.shape[0]):
        v = a[i]
        if not (v >= 0.0 and v <= upper[at + i]):
            return -1
        if d0 <= at + i < d1 and abs(v - np.rint(v)) > 1e-6:
            return -1
    return at + a.shape[0]


@njit(cache=True)
def _in_bounds(flat: np.ndarray, upper: np.ndarray, d0: int, d1: int) -> bool:
    return _span_in_bounds(flat, upper, 0, d0, d1) >= 0


@njit(cache=True)
def _whole_replicas(row: np.ndarray, upper: np.ndarray, out: np.ndarray) -> bool:
    """``row`` rounded into ``out`` if every value is a whole number in ``[0, upper]``."""
    if _span_in_bounds(row, upper, 0, 0, row.shape[0]) < 0:
        return False
    for i in range(row.shape[0]):
        out[i] = np.int64(np.rint(row[i]))
    return True


_V1, _V2 = "f8[:]", "f8[:, :]"


@njit(f"b1({_V1}, {', '.join([_V2] * 10)}, {_V1}, {_V1}, {_V1}, {_V1}, i8, i8, i8, i8)", cache=True)
def _fields_in_bounds(time_s, arrivals, ready, desired, util, p95, backlog, dropped, nodes_ready, nodes_prov, packing,  # type: ignore[no-untyped-def]
                      cost, hot, rebal, upper, d0, d1, S, P):
    """``_span_in_bounds`` over the ``Metrics`` fields in their order (N = 1, S services, P pools), without
    joining them first; False for a field of the wrong shape."""
    for a in (time_s, cost, hot, rebal):
        if a.shape[0] != 1:
            return False
    for a in (arrivals, ready, desired, util, p95, backlog, dropped):
        if a.shape[0] != 1 or a.shape[1] != S:
            return False
    for a in (nodes_ready, nodes_prov, packing):
        if a.shape[0] != 1 or a.shape[1] != P:
            return False
    at = _span_in_bounds(time_s, upper, 0, d0, d1)
    for a in (arrivals, ready, desired, util, p95, backlog, dropped, nodes_ready, nodes_prov, packing):
        if at < 0:
            return False
        at = _span_in_bounds(a[0], upper, at, d0, d1)
    for a in (cost, hot, rebal):
        if at < 0:
            return False
        at = _span_in_bounds(a, upper, at, d0, d1)
    return at >= 0


def _numeric(value: Any) -> bool:
    try:
        np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return True


def _fmt_values(value: np.ndarray) -> str:
    flat = value.ravel().tolist()
    return "[" + ", ".join(f"{v:g}" for v in flat[:8]) + (", ..." if len(flat) > 8 else "") + "]"


def current_replicas(metrics: Metrics | None, assessment: Assessment, state: GuardState, config: GuardConfig) -> np.ndarray | None:
    """The replicas to measure changes from: the cluster's own report when it is fresh and valid, else our last action."""
    if metrics is not None and assessment.reason is None:
        return np.rint(metrics.desired[0]).astype(np.int64)
    if metrics is not None and assessment.reason not in (METRICS_MISSING, METRICS_STALE):
        reported = valid_desired(metrics.desired, config)
        if reported is not None:
            return reported
    if state.last_replicas is not None:
        return state.last_replicas.copy()
    return None


def valid_desired(desired: Any, config: GuardConfig) -> np.ndarray | None:
    """The reported desired replicas ``[S]`` as int64 if they are whole numbers within [0, max_replicas], else None."""
    if type(desired) is not np.ndarray:
        if desired is None or not _numeric(desired):
            return None
        desired = np.asarray(desired, dtype=np.float64)
    if desired.shape != (1, len(config.services)):
        return None
    if desired.dtype == np.float64:
        out = np.empty(desired.shape[1], dtype=np.int64)
        return out if _whole_replicas(desired[0], config._max_replicas_f, out) else None  # type: ignore[attr-defined]
    row = desired[0].tolist()
    for value, upper in zip(row, config.max_replicas.tolist()):
        if not (0.0 <= value <= upper) or abs(value - round(value)) > 1e-6:
            return None
    return np.array([round(v) for v in row], dtype=np.int64)


def fallback_metrics(metrics: Metrics | None, assessment: Assessment, current: np.ndarray, config: GuardConfig) -> Metrics:
    """Metrics the HPA rule can act on safely: untrusted services read as "no utilisation" so HPA holds them.

    HPA skips a service whose utilisation is NaN (Kubernetes skips a cycle
    without metrics), so a service with any unusable reading, or every service
    when the whole sample is missing or stale, is held at ``current``. A
    ``metrics_degraded`` sample holds nobody: HPA reads only utilisation,
    ready and desired, which such a sample has (a service whose utilisation
    is itself unknown is still held).
    """
    S, P = len(config.services), len(config.max_nodes)

    def take(name: str, shape: tuple[int, ...]) -> np.ndarray:
        raw = None if metrics is None else getattr(metrics, name)
        if raw is None or not _numeric(raw) or np.asarray(raw).shape != shape:
            return np.full(shape, np.nan)
        return np.asarray(raw, dtype=np.float64).copy()

    out = Metrics(**{
        name: take(name, (1, S) if name in PER_SERVICE else (1, P) if name in PER_POOL else (1,))
        for name in METRIC_FIELDS
    })
    held = np.ones(S, dtype=bool) if assessment.reason in (METRICS_MISSING, METRICS_STALE) else np.zeros(S, dtype=bool)
    if assessment.bad_services is not None:
        held |= assessment.bad_services
    out.desired[0] = current
    out.ready[0] = np.where(held, current, out.ready[0])
    with np.errstate(invalid="ignore"):
        unusable = ~np.isfinite(out.utilisation[0]) | (out.utilisation[0] < 0) | ~np.isfinite(out.ready[0]) | (out.ready[0] < 0)
    out.utilisation[0] = np.where(held | unusable, np.nan, out.utilisation[0])
    out.ready[0] = np.where(unusable, current, out.ready[0])
    return out


@dataclass(frozen=True)
class Adjustment:
    """One guard rail changing one value: which guard, which service (or "cluster"), from what, to what."""

    guard: str
    target: str
    before: int
    after: int

    def to_dict(self) -> dict[str, Any]:
        return {"guard": self.guard, "target": self.target, "from": self.before, "to": self.after}


@njit(cache=True)
def guard_chain(
    proposed: np.ndarray, current: np.ndarray, lo: np.ndarray, hi: np.ndarray, last_scale_up_s: np.ndarray, now: float,
    cooldown_s: float, step_limit: int, budget: np.ndarray, out: np.ndarray,
) -> int:
    """Write into ``out`` ``[4, S]`` the replicas after each bound in turn: clamp, cooldown, per-step limit,
    per-minute limit; return how many values the bounds changed (0: the recommendation passes as it is).

    Clamp: within [min_replicas, max_replicas]. Cooldown: no scale-down of a
    service within ``cooldown_s`` of its last scale-up (stops flapping; off at
    0). The two limits move at most ``step_limit`` and ``budget[s]`` replicas
    away from ``current``, towards the recommendation. Every row is kept so
    that each bound can report what it changed.
    """
    S = proposed.shape[0]
    step = max(step_limit, 0)
    changes = 0
    for s in range(S):
        v = min(max(proposed[s], lo[s]), hi[s])
        out[0, s] = v
        if cooldown_s > 0 and (now - last_scale_up_s[s]) < cooldown_s and v < current[s]:
            v = current[s]
        out[1, s] = v
        v = current[s] + min(max(v - current[s], -step), step)
        out[2, s] = v
        b = max(budget[s], 0)
        out[3, s] = current[s] + min(max(v - current[s], -b), b)
        for k in range(4):
            if out[k, s] != (proposed[s] if k == 0 else out[k - 1, s]):
                changes += 1
    return changes


def window_budget(changes: list[tuple[float, np.ndarray]], now: float, per_window: int, n_services: int) -> np.ndarray:
    """Replicas each service may still change: ``per_window`` minus the changes applied in ``(now - 60 s, now]``."""
    recent = [delta for t, delta in changes if t > now - RATE_WINDOW_S]
    if not recent:
        return np.full(n_services, max(per_window, 0), dtype=np.int64)
    return np.maximum(per_window - np.sum(recent, axis=0), 0).astype(np.int64)


def check_rebalance(verb: int, rebalancing: float | None) -> tuple[int, str | None]:
    """The rebalance verb to run: none while one is in progress (or unknown), none for a verb we do not know."""
    if verb == 0:
        return 0, None
    if not 0 <= verb < len(REBALANCE_NAMES):
        return 0, REBALANCE_INVALID
    if rebalancing is None or not math.isfinite(rebalancing) or rebalancing > 0:
        return 0, REBALANCE_BUSY
    return verb, None


def apply_guards(
    replicas: np.ndarray,
    rebalance: int,
    current: np.ndarray,
    rebalancing: float | None,
    now: float,
    state: GuardState,
    config: GuardConfig,
) -> tuple[np.ndarray, int, list[Adjustment]]:
    """The final replicas ``[S]`` and rebalance verb, and every adjustment made on the way.

    Order: clamp to [min, max], scale-down cooldown, per-step limit, per-minute
    limit. The limits are measured from ``current``, so a cluster that is
    outside its bounds (scaled by hand) is brought back at the permitted rate,
    never in one jump.
    """
    adjustments: list[Adjustment] = []
    names = config.services
    proposed, current = _int_row(replicas), _int_row(current)
    last_up = config._never if state.last_scale_up_s is None else state.last_scale_up_s  # type: ignore[attr-defined]
    budget = window_budget(state.changes, now, config.max_change_per_minute, len(names)) if state.changes else config._full_budget  # type: ignore[attr-defined]
    stages = np.empty((4, proposed.shape[0]), dtype=np.int64)
    if type(last_up) is not np.ndarray or last_up.dtype != np.float64:
        last_up = np.asarray(last_up, dtype=np.float64)
    if guard_chain(proposed, current, config.min_replicas, config.max_replicas, last_up,
                   float(now), float(config.scale_down_cooldown_s), int(config.max_step_change), budget, stages):
        before = proposed.tolist()
        for guard, after in zip(_CHAIN, stages.tolist()):
            if after != before:
                adjustments.extend(Adjustment(guard, names[s], before[s], after[s]) for s in range(len(after)) if before[s] != after[s])
            before = after
    final = stages[3]
    verb, refused = check_rebalance(int(rebalance), rebalancing)
    if refused:
        adjustments.append(Adjustment(refused, "cluster", int(rebalance), verb))
    return final, verb, adjustments


_CHAIN = (CLAMP, COOLDOWN, STEP_LIMIT, MINUTE_LIMIT)
_I64 = np.dtype(np.int64)


def _int_row(values: Any) -> np.ndarray:
    """``values`` as one int64 row ``[S]`` (as it usually comes already: then without a copy or a call into numpy)."""
    if type(values) is np.ndarray and values.dtype is _I64 and values.ndim == 1:
        return values
    return np.asarray(values, dtype=np.int64).reshape(-1)


def record_applied(state: GuardState, now: float, current: np.ndarray, applied: np.ndarray) -> GuardState:
    """The guard state after ``applied`` replicas were set on a cluster that had ``current``."""
    applied = np.asarray(applied, dtype=np.int64).copy()
    changes = [(t, d) for t, d in state.changes if t > now - RATE_WINDOW_S]
    changes.append((now, np.abs(applied - current)))
    last_up = state.last_scale_up_s if state.last_scale_up_s is not None else np.full(applied.shape, -np.inf)
    last_up = np.where(applied > current, now, last_up)
    return GuardState(last_replicas=applied, changes=changes, last_scale_up_s=last_up)
