"""Right-sizing one replica from its usage history, the way the Kubernetes VPA recommender does (``docs/PLANNING.md``).

Usage samples (one per replica per interval, or one standing for several
identical replicas through its weight) go into a **decaying histogram with
exponential buckets**: bucket ``k >= 1`` holds ``[first * ratio^(k-1),
first * ratio^k)``, bucket 0 everything below ``first``, and a sample of age
``a`` counts ``2^(-a / half_life)`` of a fresh one, so last week matters half
as much as today at a one-week half-life. A percentile of the histogram is
the upper edge of the bucket where the cumulative weight reaches it (the
VPA's rounding, at most one bucket, ``ratio - 1``, above the true value).

* **CPU** (a shortfall only slows a replica): target = the ``cpu_percentile``
  (0.98; the VPA's is 0.9, see ``Method``) of usage times ``1 + margin``
  (0.15); lower and upper bounds from the 0.5 and 0.995 percentiles, widened by the VPA's confidence factors
  ``(1 + 0.001 / days)^-2`` and ``(1 + 1 / days)``, so a short history
  gives a wide band.
* **Memory** (a shortfall kills a replica): target = the history's **peak**
  working set times ``1 + margin``; never below it, whatever the decay or the
  percentiles say (stricter than the VPA, which takes a percentile of daily
  peaks). Bounds from the 0.5 and 0.995 percentiles of the per-interval peaks,
  with the same confidence factors, and the target always inside them.

Beside each target: the **slack** (share of the request a replica left idle
on average) before and after, and the **risk** the new request adds, the
weighted share of samples whose usage exceeds it (CPU: throttled intervals;
memory: intervals that would have been killed). Pure numpy: arrays in,
numbers out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Method:
    """The recommender's settings: the VPA recommender's (``pkg/recommender/logic``) but for the CPU percentiles.

    The VPA targets p90 and bounds at p95. Under a horizontal policy that holds
    replicas near 70% busy, per-replica use rarely nears a replica's real
    size: in the simulator p95 + 15% undersizes it by 8-12% and p98 + 15% by
    3-8% (``docs/PLANNING.md``), so the target is p98, the upper bound p99.5.
    """

    cpu_percentile: float = 0.98
    lower_percentile: float = 0.5
    upper_percentile: float = 0.995
    margin: float = 0.15
    half_life_s: float = 86_400.0
    bucket_ratio: float = 1.05
    cpu_first_bucket: float = 0.001
    """cores; the VPA starts at 0.01, which a worker of the local cluster (1/8 core) would see in 4 buckets"""
    memory_first_bucket_gib: float = 1e-3

    def describe(self, resource: str) -> str:
        decay = f"a decaying histogram (half-life {self.half_life_s / 3600:g} h, buckets {self.bucket_ratio - 1:.0%} apart)"
        if resource == "cpu":
            return (f"VPA recommender: p{self.cpu_percentile * 100:g} of per-replica CPU use in {decay}, "
                    f"+{self.margin:.0%} margin")
        return f"peak working set + {self.margin:.0%} margin (never below the peak); bounds from {decay} of per-interval peaks"


@dataclass(frozen=True)
class Sizing:
    """One resource's recommendation for one service's replica."""

    resource: str
    unit: str
    declared: float
    target: float
    lower: float
    upper: float
    method: str
    mean_use: float
    peak_use: float
    slack_before: float
    """1 - mean use / declared request: the share of the request left idle"""
    slack_after: float
    risk: float
    """weighted share of samples whose use exceeds the target"""
    samples: int
    days: float

    @property
    def change(self) -> float:
        return self.target / self.declared - 1.0

    def as_dict(self) -> dict[str, float | str | int]:
        return {k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Samples:
    """One resource's usage: value, weight (replicas it stands for) and time (unix s) per sample; all finite."""

    value: np.ndarray
    weight: np.ndarray
    t: np.ndarray
    excluded: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(self.value.size)


def bucket_edges(first: float, ratio: float, top: float) -> np.ndarray:
    """Upper edges of buckets 0..K: ``first * ratio^k``, up to the first edge above ``top``."""
    k = max(1, int(math.ceil(math.log(max(top, first) / first) / math.log(ratio))) + 1)
    return first * ratio ** np.arange(k + 1, dtype=np.float64)


def decay_weights(t: np.ndarray, weight: np.ndarray, half_life_s: float) -> np.ndarray:
    """``weight * 2^(-age / half_life)``, ages from the newest sample (which keeps its weight)."""
    if t.size == 0:
        return weight.astype(np.float64)
    return weight * np.exp2((t - t.max()) / half_life_s)


def histogram_percentiles(values: np.ndarray, weights: np.ndarray, quantiles: np.ndarray, first: float,
                          ratio: float) -> np.ndarray:
    """Percentiles of the weighted exponential-bucket histogram: the upper edge of the bucket reaching each quantile."""
    if values.size == 0 or not weights.sum() > 0:
        return np.full(np.asarray(quantiles).shape, math.nan)
    edges = bucket_edges(first, ratio, float(values.max()))
    idx = np.searchsorted(edges, values, side="right")
    hist = np.bincount(idx, weights=weights, minlength=edges.size)
    cum = np.cumsum(hist) / hist.sum()
    k = np.searchsorted(cum, np.asarray(quantiles) - 1e-12, side="left")
    return edges[np.minimum(k, edges.size - 1)]


def confidence(days: float) -> tuple[float, float]:
    """The VPA's (lower, upper) multipliers for a history of ``days``: ``(1 + 0.001/d)^-2`` and ``1 + 1/d``."""
    d = max(days, 1e-6)
    return (1.0 + 0.001 / d) ** -2.0, 1.0 + 1.0 / d


def history_days(t: np.ndarray, step_s: float) -> float:
    return float((t.max() - t.min() + step_s) / 86_400.0) if t.size else 0.0


def _weighted_share_above(values: np.ndarray, weights: np.ndarray, level: float) -> float:
    total = weights.sum()
    return float(weights[values > level * (1 + 1e-12)].sum() / total) if total > 0 else math.nan


def _slack(values: np.ndarray, weights: np.ndarray, request: float) -> float:
    """1 - mean(min(use, request)) / request: what a request leaves idle (use above it is not idle request)."""
    total = weights.sum()
    used = float((np.minimum(values, request) * weights).sum() / total) if total > 0 else math.nan
    return 1.0 - used / request


def _sizing(kind: str, unit: str, s: Samples, declared: float, base: float, low: float, high: float, step_s: float,
            method: Method) -> Sizing:
    """``base`` plus the margin as the target, the VPA's bounds from the ``low`` and ``high`` percentiles (wider on
    a short history), and what the target does to slack and risk: the one tail of both recommenders."""
    days = history_days(s.t, step_s)
    lo_c, hi_c = confidence(days)
    m = 1.0 + method.margin
    target = base * m
    lower = min(target, low * m * lo_c)
    upper = max(target, high * m * hi_c)
    return Sizing(kind, unit, declared, target, lower, upper, method.describe(kind),
                  float(np.average(s.value, weights=s.weight)), float(s.value.max()),
                  _slack(s.value, s.weight, declared), _slack(s.value, s.weight, target),
                  _weighted_share_above(s.value, s.weight, target), s.size, days)


def recommend_cpu(s: Samples, declared: float, step_s: float, method: Method = Method()) -> Sizing:
    """CPU request per replica: the ``cpu_percentile`` (p98) of decayed usage + margin, with the VPA's bounds (module docstring)."""
    w = decay_weights(s.t, s.weight, method.half_life_s)
    q = histogram_percentiles(s.value, w, np.array([method.lower_percentile, method.cpu_percentile, method.upper_percentile]),
                              method.cpu_first_bucket, method.bucket_ratio)
    return _sizing("cpu", "cores", s, declared, float(q[1]), float(q[0]), float(q[2]), step_s, method)


def interval_peaks(s: Samples) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The largest sample of each distinct time (the interval's peak over replicas), its time, and the replicas behind it."""
    times, inverse = np.unique(s.t, return_inverse=True)
    peak = np.full(times.size, -np.inf)
    np.maximum.at(peak, inverse, s.value)
    weight = np.zeros(times.size)
    np.add.at(weight, inverse, s.weight)
    return peak, times, weight


def recommend_memory(s: Samples, declared: float, step_s: float, method: Method = Method()) -> Sizing:
    """Memory request per replica: the peak working set + margin, never below it (module docstring)."""
    peak, times, weight = interval_peaks(s)
    w = decay_weights(times, weight, method.half_life_s)
    q = histogram_percentiles(peak, w, np.array([method.lower_percentile, method.upper_percentile]),
                              method.memory_first_bucket_gib, method.bucket_ratio)
    return _sizing("memory", "GiB", s, declared, float(s.value.max()), float(q[0]), float(q[1]), step_s, method)
