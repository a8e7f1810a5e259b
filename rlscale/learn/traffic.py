"""The generalist's training traffic: many workload families and augmented replays of a real trace.

A policy trained on one diurnal generator learns that generator. Real traffic
has ramps, regime switches, heavy-tailed minute-level noise, on/off batches,
random walks and weekly structure, so each training episode draws its shape
from all of these (DESIGN.md section 10, issue 10). Shapes are returned
normalised to a peak of 1; the caller scales them to the episode's load.
Every draw comes from the generator passed in, so an episode is reproducible
from its seed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rlscale import workload
from rlscale.config import BatchArrivalSpec, FlashCrowdSpec, WorkloadSpec

DAY_S = 86_400.0
FAMILIES = ("diurnal", "weekly", "ramp", "regimes", "random_walk", "on_off", "replay")


def _smooth(x: np.ndarray, k: int) -> np.ndarray:
    if k <= 1:
        return x
    kernel = np.ones(k) / k
    return np.convolve(np.pad(x, (k // 2, k - 1 - k // 2), mode="edge"), kernel, mode="valid")


def diurnal(rng: np.random.Generator, n: int, step_s: float, start_s: float, weekly: bool = False) -> np.ndarray:
    spec = WorkloadSpec(
        peak_rps=1.0,
        trough_fraction=float(rng.uniform(0.1, 0.7)),
        peak_hour=float(rng.uniform(0, 24)),
        weekend_factor=float(rng.uniform(0.4, 1.3)) if weekly else 1.0,
        trend_per_day=float(rng.uniform(-0.2, 0.3)) if rng.random() < 0.3 else 0.0,
        noise=float(rng.uniform(0.02, 0.12)),
        flash_crowds=FlashCrowdSpec(per_day=float(rng.uniform(0, 3)), magnitude=(1.3, 4.0),
                                    ramp_s=float(rng.uniform(30, 600)), decay_s=float(rng.uniform(300, 3600))),
    )
    return workload.generate(spec, n, step_s, rng, start_s)


def ramp(rng: np.random.Generator, n: int, step_s: float, start_s: float) -> np.ndarray:
    """Piecewise-linear: a handful of knots at random levels, some steep (a launch, a migration)."""
    k = int(rng.integers(3, 9))
    knots = np.sort(rng.uniform(0, n, size=k))
    levels = rng.uniform(0.1, 1.0, size=k + 2)
    return np.interp(np.arange(n), np.concatenate([[0], knots, [n]]), levels)


def regimes(rng: np.random.Generator, n: int, step_s: float, start_s: float) -> np.ndarray:
    """Levels that switch after exponentially distributed holds, with a short transition."""
    out = np.empty(n)
    i = 0
    mean_hold = rng.uniform(30, 300) * 60.0 / step_s
    while i < n:
        hold = max(1, int(rng.exponential(mean_hold)))
        out[i : i + hold] = rng.uniform(0.1, 1.0)
        i += hold
    return _smooth(out, int(rng.integers(1, 6)))


def random_walk(rng: np.random.Generator, n: int, step_s: float, start_s: float) -> np.ndarray:
    """A mean-reverting random walk in log space (Ornstein-Uhlenbeck)."""
    sigma = rng.uniform(0.02, 0.08) * np.sqrt(step_s / 60.0)
    theta = rng.uniform(0.001, 0.02)
    x = np.empty(n)
    x[0] = rng.normal(0, 0.5)
    eps = rng.normal(0, sigma, size=n)
    for t in range(1, n):
        x[t] = x[t - 1] * (1 - theta) + eps[t]
    return np.exp(x)


def on_off(rng: np.random.Generator, n: int, step_s: float, start_s: float) -> np.ndarray:
    spec = WorkloadSpec(
        peak_rps=1.0, trough_fraction=float(rng.uniform(0.5, 1.0)), noise=float(rng.uniform(0.02, 0.1)),
        weekend_factor=1.0,
        batch=BatchArrivalSpec(on_fraction=float(rng.uniform(0.2, 0.7)), mean_on_s=float(rng.uniform(600, 7200)),
                               off_level=float(rng.uniform(0.05, 0.5))),
    )
    return workload.generate(spec, n, step_s, rng, start_s)


class Replay:
    """Segments of a real trace, augmented: time warp, amplitude and level changes, extra noise.

    Only the training part of the trace is ever replayed (``train_days``); the
    rest is held out for evaluation.
    """

    def __init__(self, path: str, train_days: float) -> None:
        ts, values = workload.load_csv(path)
        keep = ts < ts[0] + train_days * DAY_S
        self.t = ts[keep] - ts[0]
        self.v = np.maximum(values[keep], 0.0)
        if self.v.size < 2 or self.v.max() <= 0:
            raise ValueError(f"{path}: too little training data in the first {train_days} days")

    def __call__(self, rng: np.random.Generator, n: int, step_s: float, start_s: float) -> np.ndarray:
        warp = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        span = n * step_s * warp
        total = float(self.t[-1])
        begin = float(rng.uniform(0, max(total - span, 0.0))) if total > span else 0.0
        t = begin + warp * step_s * np.arange(n)
        x = np.interp(t, self.t, self.v, period=total if total < span + begin else None)
        x = x / max(float(x.max()), 1e-12)
        level = float(x.mean())
        amp = float(rng.uniform(0.5, 2.5))
        x = np.maximum(level + amp * (x - level), 0.05 * level)
        return x


def heavy_tail_noise(rng: np.random.Generator, n: int, step_s: float) -> np.ndarray:
    """Minute-level multiplicative noise with Student-t tails (a few large spikes, not only Gaussian jitter)."""
    scale = rng.uniform(0.01, 0.12)
    df = rng.uniform(2.5, 8.0)
    return np.exp(np.clip(scale * rng.standard_t(df, size=n), -1.0, 1.5))


def make_sampler(replay: Replay | None) -> Callable[[np.random.Generator, int, float, float], np.ndarray]:
    """A function drawing one normalised trace ``[n]`` per call from the mixture of families."""
    families: list[Callable[[np.random.Generator, int, float, float], np.ndarray]] = [
        diurnal, lambda r, n, s, t0: diurnal(r, n, s, t0, weekly=True), ramp, regimes, random_walk, on_off,
    ]
    weights = [0.25, 0.1, 0.12, 0.12, 0.12, 0.09]
    if replay is not None:
        families.append(replay)
        weights.append(0.2)
    p = np.asarray(weights) / sum(weights)

    def sample(rng: np.random.Generator, n: int, step_s: float, start_s: float) -> np.ndarray:
        family = families[int(rng.choice(len(families), p=p))]
        x = np.asarray(family(rng, n, step_s, start_s), dtype=np.float64)
        if rng.random() < 0.5:
            x = x * heavy_tail_noise(rng, n, step_s)
        x = np.maximum(np.nan_to_num(x, nan=0.0), 0.0)
        return x / max(float(x.max()), 1e-12)

    return sample
