"""Kubernetes HorizontalPodAutoscaler (autoscaling/v2) on one resource metric, vectorised.

The baseline is only worth beating if it is the real thing, so this follows
``pkg/controller/podautoscaler`` step by step, as two separate pure steps:

1. ``recommend`` (``replica_calculator.go``, ``GetResourceReplicas``): the usage
   ratio comes from the ready pods, ``desired = ceil(ratio * ready)``, and it is
   compared with the current scale (``spec.replicas`` = ``metrics.desired``):
   within ``tolerance`` of 1 nothing changes. Pods not yet ready count as 0% use
   when the ratio asks for a scale-up, so capacity already on its way damps the
   next scale-up. No ready pods (or NaN utilisation) means no metrics: Kubernetes
   skips the cycle and so do we (hold, record nothing).
2. behaviour (``horizontal.go``, ``normalizeDesiredReplicasWithBehaviors``):
   ``stabilise`` (scale-down: the highest recommendation in the window;
   scale-up: the lowest), then ``rate_limit`` (``HPAScalingPolicy``s measured
   from the replicas at the start of each policy's period), then min/max.

Decision interval versus sync period: a real HPA re-evaluates every 15 s
(``--horizontal-pod-autoscaler-sync-period``) while our metrics change once
per ``step_s``. Between two decisions its recommendation stays the same, but
its rate limits are applied again at every sync. We reproduce exactly that:
each decision runs ``ceil(step_s / sync_period_s)`` rate-limit syncs towards
the stabilised recommendation, keeping Kubernetes' history of scale events
(a ring buffer at sync resolution) to find each period's starting replicas.
With the defaults (60 s step, scale-up ``max(100%, 4 pods) per 15 s``) one
decision can go 1 -> 5 -> 10 -> 20 -> 40, as a real HPA would in a minute.
Stabilisation uses the recommendations of the earlier decisions strictly
newer than the window (Kubernetes' ``After(cutoff)``): 300 s at 60 s steps
means the current and the previous 4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from rlscale.config import ConfigError, Scenario
from rlscale.policies.base import ClusterAutoscaler, ceil_count, check_batch, replica_bounds
from rlscale.spaces import Action, Metrics


@dataclass(frozen=True)
class ScalingPolicy:
    """One ``HPAScalingPolicy``: change at most ``value`` pods (or percent) per ``period_s``."""

    kind: Literal["Pods", "Percent"]
    value: int
    period_s: float

    def __post_init__(self) -> None:
        if self.kind not in ("Pods", "Percent"):
            raise ConfigError(f"hpa scaling policy: kind {self.kind!r}, expected 'Pods' or 'Percent'")
        if self.value <= 0 or not 0 < self.period_s <= 1800:
            raise ConfigError(f"hpa scaling policy: value must be > 0 and period_s in (0, 1800], got {self.value}, {self.period_s}")


@dataclass(frozen=True)
class ScalingRules:
    """``HPAScalingRules`` without the window (``HPAPolicy`` takes the windows): policies and ``selectPolicy``."""

    policies: tuple[ScalingPolicy, ...]
    select: Literal["Max", "Min", "Disabled"] = "Max"

    def __post_init__(self) -> None:
        if self.select not in ("Max", "Min", "Disabled"):
            raise ConfigError(f"hpa scaling rules: select {self.select!r}, expected 'Max', 'Min' or 'Disabled'")
        if not self.policies and self.select != "Disabled":
            raise ConfigError("hpa scaling rules: at least one policy is needed unless select is 'Disabled'")


DEFAULT_SCALE_UP = ScalingRules((ScalingPolicy("Percent", 100, 15.0), ScalingPolicy("Pods", 4, 15.0)), "Max")
DEFAULT_SCALE_DOWN = ScalingRules((ScalingPolicy("Percent", 100, 15.0),), "Max")


def _recommend(
    current: np.ndarray, utilisation: np.ndarray, target: float, tolerance: float, ready: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    current = np.asarray(current, dtype=np.int64)
    ready = current if ready is None else np.asarray(ready, dtype=np.int64)
    util = np.asarray(utilisation, dtype=np.float64)
    valid = ~np.isnan(util) & (ready > 0)
    ratio = np.maximum(np.where(valid, util, 0.0), 0.0) / target
    desired = ceil_count(ratio * ready)
    unready = np.maximum(current - ready, 0)
    with np.errstate(invalid="ignore"):
        new_ratio = ratio * ready / np.maximum(ready + unready, 1)
    damped = (unready > 0) & (ratio > 1.0) & (
        (np.abs(1.0 - new_ratio) <= tolerance) | (new_ratio < 1.0) | (desired < current)
    )
    hold = ~valid | (np.abs(1.0 - ratio) <= tolerance) | damped
    return np.where(hold, current, desired), valid


def recommend(
    current_replicas: np.ndarray,
    utilisation: np.ndarray,
    target: float,
    tolerance: float = 0.1,
    ready: np.ndarray | None = None,
) -> np.ndarray:
    """The replica calculator: desired replicas from average utilisation (any same-unit metric and target).

    ``ready`` is the number of ready pods the utilisation was measured over
    (defaults to ``current_replicas``). Missing metrics (NaN, or no ready pods)
    return ``current_replicas``.
    """
    return _recommend(current_replicas, utilisation, target, tolerance, ready)[0]


def stabilise(
    current: np.ndarray, recommendation: np.ndarray, up_history: np.ndarray, down_history: np.ndarray
) -> np.ndarray:
    """``stabilizeRecommendationWithBehaviors``: hold ``current`` between the window bounds.

    Histories are float ``[N, K, S]`` of earlier recommendations inside the
    scale-up / scale-down windows, NaN where there was none. Scale-up goes no
    higher than the lowest recommendation in its window, scale-down no lower
    than the highest in its window.
    """
    rec = np.asarray(recommendation, dtype=np.float64)
    up = np.fmin(rec, np.fmin.reduce(up_history, axis=1)) if up_history.shape[1] else rec
    down = np.fmax(rec, np.fmax.reduce(down_history, axis=1)) if down_history.shape[1] else rec
    return np.minimum(np.maximum(current, up), down).astype(np.int64)


def scale_up_limit(rules: ScalingRules, period_start: list[np.ndarray], current: np.ndarray) -> np.ndarray:
    """``calculateScaleUpLimitWithScalingRules``: one proposal per policy from its period's start replicas."""
    if rules.select == "Disabled":
        return current
    proposals = [
        start + p.value if p.kind == "Pods" else np.ceil(start * (1 + p.value / 100)).astype(np.int64)
        for p, start in zip(rules.policies, period_start)
    ]
    pick = np.maximum if rules.select == "Max" else np.minimum
    return pick.reduce(proposals)


def scale_down_limit(rules: ScalingRules, period_start: list[np.ndarray], current: np.ndarray) -> np.ndarray:
    """``calculateScaleDownLimitWithBehaviors``: "Max" selects the biggest change, i.e. the lowest floor."""
    if rules.select == "Disabled":
        return current
    proposals = [
        start - p.value if p.kind == "Pods" else np.trunc(start * (1 - p.value / 100)).astype(np.int64)
        for p, start in zip(rules.policies, period_start)
    ]
    pick = np.minimum if rules.select == "Max" else np.maximum
    return pick.reduce(proposals)


def rate_limit(
    current: np.ndarray, desired: np.ndarray, up_limit: np.ndarray, down_limit: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """``convertDesiredReplicasWithBehaviorRate``: cap the move, never reverse it, respect min/max."""
    max_allowed = np.minimum(hi, np.maximum(up_limit, current))
    min_allowed = np.maximum(lo, np.minimum(down_limit, current))
    out = np.where(desired > current, np.minimum(desired, max_allowed), desired)
    return np.where(desired < current, np.maximum(desired, min_allowed), out)


def _lags_within(window_s: float, dt: float) -> int:
    """How many earlier samples, ``dt`` apart, are strictly newer than ``window_s`` ago."""
    return max(0, math.ceil(window_s / dt - 1e-9) - 1)


class HPAPolicy:
    """Kubernetes HPA per service on utilisation (metric: ``metrics.utilisation`` over ready replicas).

    Arguments: ``target_utilisation`` (0.7), ``tolerance`` (0.1),
    ``downscale_window_s`` (300, scale-down stabilisation), ``upscale_window_s``
    (0), ``scale_up`` / ``scale_down`` rate rules (Kubernetes defaults),
    ``sync_period_s`` (15, the controller's resync). See the module docstring.
    State per cluster: a ring buffer of recommendations ``[N, W, S]`` and of
    scale events ``[N, E, S]``.
    """

    name = "hpa"

    def __init__(
        self,
        scenario: Scenario,
        target_utilisation: float = 0.7,
        tolerance: float = 0.1,
        downscale_window_s: float = 300.0,
        upscale_window_s: float = 0.0,
        scale_up: ScalingRules = DEFAULT_SCALE_UP,
        scale_down: ScalingRules = DEFAULT_SCALE_DOWN,
        sync_period_s: float = 15.0,
    ) -> None:
        if target_utilisation <= 0 or tolerance < 0 or sync_period_s <= 0:
            raise ConfigError("hpa: target_utilisation and sync_period_s must be > 0 and tolerance >= 0")
        self.scenario = scenario
        self.nodes = ClusterAutoscaler(scenario)
        self.target, self.tolerance = target_utilisation, tolerance
        self.scale_up, self.scale_down = scale_up, scale_down
        self.lo, self.hi = replica_bounds(scenario)
        self.syncs = max(1, math.ceil(scenario.step_s / sync_period_s - 1e-9))
        sync_dt = scenario.step_s / self.syncs
        self._k_up = _lags_within(upscale_window_s, scenario.step_s)
        self._k_down = _lags_within(downscale_window_s, scenario.step_s)
        self._up_lags = [_lags_within(p.period_s, sync_dt) for p in scale_up.policies]
        self._down_lags = [_lags_within(p.period_s, sync_dt) for p in scale_down.policies]
        self._w = max(self._k_up, self._k_down, 1)
        self._e = max([1, *self._up_lags, *self._down_lags])
        self.reset(1)

    def reset(self, n: int = 1) -> None:
        self.nodes.reset(n)
        s = len(self.scenario.services)
        self.n = n
        self._recs = np.full((n, self._w, s), np.nan)
        self._events = np.zeros((n, self._e, s), dtype=np.int64)
        self._rec_head = 0
        self._ev_head = 0

    def _recent(self, buf: np.ndarray, head: int, k: int) -> np.ndarray:
        return buf[:, (head - np.arange(1, k + 1)) % buf.shape[1]]

    def _period_start(self, current: np.ndarray, lags: int) -> np.ndarray:
        ev = self._recent(self._events, self._ev_head, lags)
        added = np.maximum(ev, 0).sum(axis=1)
        deleted = np.maximum(-ev, 0).sum(axis=1)
        return current - added + deleted

    def act(self, metrics: Metrics) -> Action:
        check_batch(self.n, metrics, self.name)
        current = np.rint(metrics.desired).astype(np.int64)
        ready = np.rint(metrics.ready).astype(np.int64)
        rec, valid = _recommend(current, metrics.utilisation, self.target, self.tolerance, ready)
        use = valid & (current >= self.lo) & (current <= self.hi)
        stable = stabilise(
            current,
            rec,
            self._recent(self._recs, self._rec_head, self._k_up),
            self._recent(self._recs, self._rec_head, self._k_down),
        )
        target = np.where(use, stable, np.clip(current, self.lo, self.hi))
        self._recs[:, self._rec_head] = np.where(use, rec, np.nan)
        self._rec_head = (self._rec_head + 1) % self._w

        cur = current
        for _ in range(self.syncs):
            up = scale_up_limit(self.scale_up, [self._period_start(cur, k) for k in self._up_lags], cur)
            down = scale_down_limit(self.scale_down, [self._period_start(cur, k) for k in self._down_lags], cur)
            new = np.where(use, rate_limit(cur, target, up, down, self.lo, self.hi), target)
            self._events[:, self._ev_head] = new - cur
            self._ev_head = (self._ev_head + 1) % self._e
            cur = new
        return Action(replicas=np.clip(cur, self.lo, self.hi), rebalance=self.nodes.rebalance(metrics))
