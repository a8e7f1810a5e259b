"""Arrival-rate traces for the simulator: a synthetic generator and a CSV trace player.

Time is measured in seconds since Monday 00:00 so that the weekly cycle and the
training code's random start day agree on what "Saturday" means.  Every random
draw comes from the ``rng`` passed in, so an episode is reproducible from its seed.
"""

from __future__ import annotations

import csv
import functools
import math
import os
from pathlib import Path

import numpy as np

from rlscale.config import ConfigError, RandomisationSpec, WorkloadSpec, check_regular

__all__ = ["generate", "load_csv", "resample", "scale_to_peak", "randomise"]

DAY_S = 86_400.0
WEEK_S = 7 * DAY_S
NOISE_CORRELATION_S = 600.0
WEEKEND_BLEND_S = 2 * 3600.0
_SATURDAY_S = 5 * DAY_S
# A flash crowd has decayed to exp(-40) ~ 4e-18 of its height by then.
_FLASH_TAIL_DECAYS = 40.0
# Bounds phi**-k inside one block of the cumulative-sum AR(1) so it cannot overflow.
_AR1_BLOCK_DECAY = 30.0


def generate(
    spec: WorkloadSpec,
    n_steps: int,
    step_s: float,
    rng: np.random.Generator,
    start_s: float = 0.0,
) -> np.ndarray:
    """float64 array [n_steps] of arrival rates (req/s, >= 0) for steps starting at start_s (seconds since Monday 00:00).

    Each random component (noise, flash crowds, batch on/off) gets its own child
    generator seeded from ``rng``.  With the same seed, turning one component on or
    off therefore leaves the others' draws unchanged, so scenario variants can be
    compared under common random numbers.

    The seasonal profile is divided by max(1, weekend_factor) so that peak_rps is the
    peak of the whole week even when weekends are the busy days.  A trace is indexed
    from its own first row (start_s = 0 plays it from the top), because a CSV rarely
    says which weekday it starts on.
    """
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    if not step_s > 0:
        raise ValueError(f"step_s must be > 0, got {step_s}")
    noise_rng, flash_rng, batch_rng = (
        np.random.default_rng(int(s)) for s in rng.integers(0, 2**63 - 1, size=3)
    )
    t = start_s + step_s * np.arange(n_steps, dtype=np.float64)
    if n_steps == 0:
        return t

    if spec.trace is not None:
        profile = _trace_profile(spec.trace, spec.trace_column, float(step_s))
        skip = int(round(spec.trace_start_s / step_s))
        if skip >= profile.size:
            raise ConfigError(f"{spec.trace}: trace_start_s {spec.trace_start_s:g} is beyond the trace's "
                              f"{profile.size * step_s:g} s")
        profile = profile[skip:]
        rate = np.interp(t, step_s * np.arange(profile.size), profile, period=profile.size * step_s)
        rate *= spec.peak_rps
    else:
        rate = _seasonal(spec, t) * (spec.peak_rps / max(1.0, spec.weekend_factor))
        if spec.trend_per_day != 0.0:
            rate *= np.maximum(0.0, 1.0 + spec.trend_per_day * (t - start_s) / DAY_S)
        if spec.batch.on_fraction > 0.0:
            rate *= _on_off_level(spec, t, step_s, batch_rng)

    rate *= _log_ar1_noise(n_steps, step_s, spec.noise, noise_rng)
    if spec.flash_crowds.per_day > 0.0:
        rate *= _flash_factor(spec, t, step_s, flash_rng)
    np.maximum(rate, 0.0, out=rate)
    return rate


def load_csv(path: str | Path, column: str = "value") -> tuple[np.ndarray, np.ndarray]:
    """(timestamps_s, values) from a CSV with a header; 'timestamp' column + a value column.

    Raises ConfigError with one line naming the file and the problem, because a
    trace is user input referenced from a scenario file and the CLI prints the
    message as is. The message never quotes the file (a trace may be anything
    a user pointed at, secrets included): it names lines and columns. Only a
    regular file of at most ``MAX_TRACE_BYTES`` is read (``trace: /dev/zero``
    read until MemoryError).
    """
    name = str(path)
    check_trace_file(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            numbered: list[tuple[int, list[str]]] = []
            first_line = 1
            for row in reader:
                if any(cell.strip() for cell in row):
                    numbered.append((first_line, row))
                first_line = reader.line_num + 1
    except FileNotFoundError:
        raise ConfigError(f"{name}: trace file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{name}: trace path is a directory, not a CSV file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{name}: not a text CSV file (cannot decode as UTF-8)") from None
    except (OSError, csv.Error) as err:
        raise ConfigError(f"{name}: cannot read trace ({_one_line(err)})") from None

    if not numbered:
        raise ConfigError(f"{name}: empty trace file, expected a header 'timestamp,{column}'")
    header_line, header = numbered[0]
    header = [cell.strip() for cell in header]
    for wanted in ("timestamp", column):
        if wanted not in header:
            raise ConfigError(f"{name}: line {header_line}: header has no {wanted!r} column ({len(header)} columns)")
    i_ts, i_val = header.index("timestamp"), header.index(column)

    data = numbered[1:]
    if len(data) < 2:
        raise ConfigError(f"{name}: trace needs at least 2 data rows, found {len(data)}")
    ts = np.empty(len(data))
    vals = np.empty(len(data))
    for k, (line, row) in enumerate(data):
        if len(row) < len(header):
            raise ConfigError(f"{name}: line {line}: expected {len(header)} fields, found {len(row)}")
        ts[k] = _number(name, line, row[i_ts], "timestamp")
        vals[k] = _number(name, line, row[i_val], column)
        if vals[k] < 0:
            raise ConfigError(f"{name}: line {line}: negative value in column {column!r}")

    lines = [line for line, _ in data]
    dt = np.diff(ts)
    bad = np.flatnonzero(dt <= 0)
    if bad.size:
        k = int(bad[0]) + 1
        raise ConfigError(
            f"{name}: line {lines[k]}: timestamp {ts[k]:g} is not after the previous one ({ts[k - 1]:g})"
        )
    interval = dt[0]
    bad = np.flatnonzero(np.abs(dt - interval) > 1e-6 * interval)
    if bad.size:
        k = int(bad[0]) + 1
        raise ConfigError(
            f"{name}: line {lines[k]}: irregular interval of {dt[k - 1]:g} s "
            f"(the first rows are {interval:g} s apart; traces must be evenly spaced)"
        )
    return ts, vals


def resample(timestamps_s: np.ndarray, values: np.ndarray, step_s: float) -> np.ndarray:
    """values on a regular grid of step_s starting at timestamps_s[0], by linear interpolation (upsampling) or bin averaging (downsampling).

    Each input sample is taken to stand for the interval that follows it, so the
    output spans the same duration as the input (n * interval) and replays with the
    right period.  Downsampling integrates that step function, which gives exact
    bin means for any ratio of intervals, not only integer ones.
    """
    ts = np.asarray(timestamps_s, dtype=np.float64)
    vals = np.asarray(values, dtype=np.float64)
    if ts.ndim != 1 or ts.shape != vals.shape:
        raise ValueError(f"timestamps and values must be 1-D of equal length, got {ts.shape} and {vals.shape}")
    if ts.size < 2:
        raise ValueError("need at least 2 samples to resample")
    if not step_s > 0:
        raise ValueError(f"step_s must be > 0, got {step_s}")
    dt = np.diff(ts)
    interval = float(dt[0])
    if interval <= 0 or np.any(np.abs(dt - interval) > 1e-6 * interval):
        raise ValueError("timestamps must be increasing and evenly spaced")

    duration = ts.size * interval
    rel = 1e-9
    if step_s <= interval * (1 + rel):
        n_out = max(1, int(math.floor(duration / step_s + rel)))
        grid = step_s * np.arange(n_out)
        return np.interp(grid, ts - ts[0], vals)

    n_out = max(1, int(math.floor(duration / step_s + rel)))
    sample_edges = interval * np.arange(ts.size + 1)
    area = np.concatenate(([0.0], np.cumsum(vals) * interval))
    lo = step_s * np.arange(n_out)
    hi = np.minimum(lo + step_s, duration)
    return (np.interp(hi, sample_edges, area) - np.interp(lo, sample_edges, area)) / (hi - lo)


def scale_to_peak(values: np.ndarray, peak: float) -> np.ndarray:
    """scale so the 99th percentile equals peak (robust to single outliers).

    A trace's maximum is often one glitch; pinning the scenario's peak to it would
    shrink the rest of the load, whereas the 99th percentile tracks the busy hours.
    """
    vals = np.asarray(values, dtype=np.float64)
    if vals.size == 0:
        raise ValueError("cannot scale an empty array")
    p99 = float(np.percentile(vals, 99))
    if not p99 > 0:
        raise ValueError("the 99th percentile is not positive, so there is no peak to scale")
    return vals * (peak / p99)


def randomise(spec: WorkloadSpec, rand: RandomisationSpec, rng: np.random.Generator) -> WorkloadSpec:
    """a perturbed copy for training: peak scale factor, peak_hour phase shift (mod 24), flash crowd rate and noise drawn uniformly from the ranges (None = leave as is).

    Draws happen in a fixed order, and only for ranges that are set, so the same
    seed and spec give the same copy.  The copy is re-validated so an odd range
    cannot produce an out-of-bounds field silently.
    """
    update: dict[str, object] = {"peak_rps": spec.peak_rps * float(rng.uniform(*rand.scale))}
    hour = (spec.peak_hour + float(rng.uniform(*rand.phase_h))) % 24.0
    update["peak_hour"] = 0.0 if hour >= 24.0 else hour
    if rand.flash_per_day is not None:
        per_day = max(0.0, float(rng.uniform(*rand.flash_per_day)))
        update["flash_crowds"] = spec.flash_crowds.model_copy(update={"per_day": per_day})
    if rand.noise is not None:
        update["noise"] = min(1.0, max(0.0, float(rng.uniform(*rand.noise))))
    return WorkloadSpec.model_validate({**spec.model_dump(), **update})


# --------------------------------------------------------------------------- internals


def _seasonal(spec: WorkloadSpec, t: np.ndarray) -> np.ndarray:
    # Squared raised cosine: the day peak is rounded and the night plateau flat.
    # Written as 1 - (1 - trough) * (1 - base) so the peak is exactly 1.0.
    hours = (t % DAY_S) / 3600.0
    base = (0.5 * (1.0 + np.cos(2.0 * np.pi * (hours - spec.peak_hour) / 24.0))) ** 2
    daily = 1.0 - (1.0 - spec.trough_fraction) * (1.0 - base)
    if spec.weekend_factor != 1.0:
        daily *= 1.0 + (spec.weekend_factor - 1.0) * _weekend_weight(t)
    return daily


def _weekend_weight(t: np.ndarray) -> np.ndarray:
    # Shift by half the blend so both ramps (Fri->Sat, Sun->Mon) sit on one side of the wrap.
    u = (t - _SATURDAY_S + WEEKEND_BLEND_S / 2) % WEEK_S
    x = np.clip(np.minimum(u, 2 * DAY_S + WEEKEND_BLEND_S - u) / WEEKEND_BLEND_S, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _log_ar1_noise(n: int, step_s: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """exp of a stationary AR(1) with sd sigma, divided by its mean so noise does not bias the load.

    The recursion x_k = phi x_{k-1} + e_k is unrolled as x_k = phi^k (x_0 + sum phi^-j e_j)
    with cumsum, in blocks short enough that phi^-j stays finite.
    """
    eps = rng.standard_normal(n)
    if sigma == 0.0:
        return np.ones(n)
    decay = step_s / NOISE_CORRELATION_S
    phi = math.exp(-decay)
    x = eps * (sigma * math.sqrt(-math.expm1(-2.0 * decay)))
    x[0] = eps[0] * sigma
    block = max(1, int(_AR1_BLOCK_DECAY / decay))
    if block > 1:
        powers = phi ** np.arange(1, block + 1)
        prev = x[0]
        for lo in range(1, n, block):
            hi = min(n, lo + block)
            p = powers[: hi - lo]
            x[lo:hi] = p * (prev + np.cumsum(x[lo:hi] / p))
            prev = x[hi - 1]
    else:
        for k in range(1, n):
            x[k] += phi * x[k - 1]
    return np.exp(x - 0.5 * sigma * sigma)


def _flash_factor(spec: WorkloadSpec, t: np.ndarray, step_s: float, rng: np.random.Generator) -> np.ndarray:
    fc = spec.flash_crowds
    horizon = t.size * step_s
    count = int(rng.poisson(fc.per_day * horizon / DAY_S))
    starts = t[0] + rng.uniform(0.0, horizon, size=count)
    lo_m, hi_m = fc.magnitude
    mags = rng.uniform(min(lo_m, hi_m), max(lo_m, hi_m), size=count)
    factor = np.ones(t.size)
    tail = fc.ramp_s + _FLASH_TAIL_DECAYS * fc.decay_s
    for t0, m in zip(starts, mags):
        a, b = np.searchsorted(t, (t0, t0 + tail))
        if a == b:
            continue
        tau = t[a:b] - t0
        if fc.ramp_s > 0:
            shape = np.where(tau < fc.ramp_s, tau / fc.ramp_s, np.exp(-(tau - fc.ramp_s) / fc.decay_s))
        else:
            shape = np.exp(-tau / fc.decay_s)
        factor[a:b] *= 1.0 + (m - 1.0) * shape
    return factor


def _on_off_level(spec: WorkloadSpec, t: np.ndarray, step_s: float, rng: np.random.Generator) -> np.ndarray:
    """Per-step mean of the on/off multiplier, so bursts shorter than a step still count."""
    b = spec.batch
    if b.on_fraction >= 1.0:
        return np.ones(t.size)
    mean_on = b.mean_on_s
    mean_off = mean_on * (1.0 - b.on_fraction) / b.on_fraction
    horizon = t.size * step_s
    # Start in the stationary regime: memorylessness makes the residual of the first period exponential too.
    first_on = bool(rng.random() < b.on_fraction)
    means = np.array([mean_on, mean_off] if first_on else [mean_off, mean_on])
    chunk = 2 * int(horizon / (mean_on + mean_off)) + 16
    durations: list[np.ndarray] = []
    total = 0.0
    while total <= horizon:
        d = rng.exponential(np.resize(means, chunk))
        durations.append(d)
        total += float(d.sum())
    dur = np.concatenate(durations)
    switches = np.concatenate(([0.0], np.cumsum(dur)))
    on_mask = np.zeros(dur.size, dtype=bool)
    on_mask[0 if first_on else 1 :: 2] = True
    on_time = np.concatenate(([0.0], np.cumsum(np.where(on_mask, dur, 0.0))))
    edges = step_s * np.arange(t.size + 1)
    share = np.clip(np.diff(np.interp(edges, switches, on_time)) / step_s, 0.0, 1.0)
    return b.off_level + (1.0 - b.off_level) * share


def _trace_profile(trace: str, column: str, step_s: float) -> np.ndarray:
    """The trace on the step grid with its 99th percentile at 1.0.

    Cached without the peak because randomise() changes peak_rps at every training
    reset; keying on mtime and size picks up an edited file.
    """
    path = Path(trace)
    try:
        stat = os.stat(path)
    except OSError:
        load_csv(path, column)
        raise
    return _cached_profile(str(path.resolve()), column, step_s, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _cached_profile(path: str, column: str, step_s: float, _mtime: int, _size: int) -> np.ndarray:
    ts, vals = load_csv(path, column)
    try:
        profile = scale_to_peak(resample(ts, vals, step_s), 1.0)
    except ValueError as err:
        raise ConfigError(f"{path}: column {column!r}: {err}") from None
    profile.setflags(write=False)
    return profile


def _number(name: str, line: int, cell: str, column: str) -> float:
    text = cell.strip()
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name}: line {line}: non-numeric value in column {column!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name}: line {line}: non-finite value in column {column!r}")
    return value


MAX_TRACE_BYTES = 256 * 1024 * 1024
"""A year of one-second samples is ~20 MB; anything far beyond is not a trace."""


def check_trace_file(path: str | Path) -> None:
    """A trace must be a regular file of at most ``MAX_TRACE_BYTES`` (not a device, FIFO or directory)."""
    name = str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"{name}: trace file not found") from None
    except OSError as err:
        raise ConfigError(f"{name}: cannot read trace ({err.strerror})") from None
    check_regular(st, name, "trace", MAX_TRACE_BYTES)


def _one_line(obj: object) -> str:
    return " ".join(str(obj).split())
