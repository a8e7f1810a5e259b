"""Confidence intervals and paired comparisons over evaluation seeds.

Ten seeds are a small sample, so intervals use Student's t, not the normal
approximation; the quantile is computed exactly from the t distribution's
closed-form CDF for integer degrees of freedom (no scipy needed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def t_cdf_two_sided(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer ``df`` >= 1 (Abramowitz & Stegun 26.7.3-4)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    theta = math.atan(abs(t) / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 1:
        total, term = 0.0, 1.0
        if df > 1:
            total = term = 1.0
            for k in range(1, (df - 3) // 2 + 1):
                term *= c2 * (2 * k) / (2 * k + 1)
                total += term
        return min(1.0, 2.0 / math.pi * (theta + (s * math.cos(theta) * total if df > 1 else 0.0)))
    total = term = 1.0
    for k in range(1, (df - 2) // 2 + 1):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return min(1.0, s * total)


def t_quantile(confidence: float, df: int) -> float:
    """The ``t`` with P(|T| <= t) = ``confidence`` (e.g. 2.262 for 95% and df = 9)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    lo, hi = 0.0, 1.0
    while t_cdf_two_sided(hi, df) < confidence:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf_two_sided(mid, df) < confidence:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * hi:
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Estimate:
    """A sample mean and the half-width of its two-sided confidence interval (NaN with one sample)."""

    mean: float
    half_width: float
    n: int

    def to_dict(self) -> dict[str, float | int | None]:
        hw = None if math.isnan(self.half_width) else self.half_width
        return {"mean": self.mean, "ci95": hw, "n": self.n}


def mean_ci(values: np.ndarray, confidence: float = 0.95) -> Estimate:
    """Mean ± t_{df=n-1} * s / sqrt(n) over seeds."""
    x = np.asarray(values, dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return Estimate(float("nan"), float("nan"), 0)
    mean = float(x.mean())
    if n == 1:
        return Estimate(mean, float("nan"), 1)
    half = t_quantile(confidence, n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return Estimate(mean, half, n)


def paired_ratio(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-seed ``values / reference`` (NaN where the reference is 0)."""
    v, r = np.asarray(values, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    return np.divide(v, r, out=np.full(v.shape, np.nan), where=r != 0)


@dataclass(frozen=True)
class Record:
    """Per-seed outcomes against a reference policy on (cost, SLO violation rate), lower is better for both."""

    wins: int
    losses: int
    ties: int
    mixed: int
    cheaper: int

    def to_dict(self) -> dict[str, int]:
        return {"wins": self.wins, "losses": self.losses, "ties": self.ties, "mixed": self.mixed, "cheaper": self.cheaper}


def head_to_head(cost: np.ndarray, slo: np.ndarray, ref_cost: np.ndarray, ref_slo: np.ndarray) -> Record:
    """A win: no worse on both cost and SLO violations and better on one; a loss: the reverse; mixed: better on one, worse on the other."""
    c = np.sign(np.round(np.asarray(cost) - np.asarray(ref_cost), 9))
    v = np.sign(np.round(np.asarray(slo) - np.asarray(ref_slo), 9))
    wins = int(((c <= 0) & (v <= 0) & ((c < 0) | (v < 0))).sum())
    losses = int(((c >= 0) & (v >= 0) & ((c > 0) | (v > 0))).sum())
    ties = int(((c == 0) & (v == 0)).sum())
    return Record(wins, losses, ties, int(c.size) - wins - losses - ties, int((c < 0).sum()))
