"""Behaviour of the workload generator, the CSV trace loader and the training randomiser."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlscale.config import (
    BatchArrivalSpec,
    ConfigError,
    FlashCrowdSpec,
    RandomisationSpec,
    WorkloadSpec,
)
from rlscale.workload import generate, load_csv, randomise, resample, scale_to_peak

DAY = 86_400.0
STEP = 60.0
PER_DAY = int(DAY / STEP)
TRACE_NAME = "alibaba2018-cpu-300s.csv"


def calm(**kw: object) -> WorkloadSpec:
    """A spec whose only feature is what the test switches on."""
    base: dict[str, object] = dict(peak_rps=100.0, noise=0.0, weekend_factor=1.0, trend_per_day=0.0)
    base.update(kw)
    return WorkloadSpec(**base)


def busy_spec() -> WorkloadSpec:
    return WorkloadSpec(
        peak_rps=250.0,
        noise=0.2,
        trend_per_day=0.05,
        flash_crowds=FlashCrowdSpec(per_day=3.0),
        batch=BatchArrivalSpec(on_fraction=0.4, mean_on_s=1200.0, off_level=0.2),
    )


def write(tmp_path: Path, text: str, name: str = "trace.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def find_real_trace() -> Path | None:
    here = Path(__file__).resolve()
    for root in (here.parents[2] / "shared", Path("/work/shared")):
        candidate = root / "traces" / TRACE_NAME
        if candidate.is_file():
            return candidate
    return None


# --------------------------------------------------------------------------- generate


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), start_day=st.integers(0, 6))
def test_same_seed_gives_bit_identical_trace(seed: int, start_day: int) -> None:
    spec = busy_spec()
    a = generate(spec, PER_DAY, STEP, np.random.default_rng(seed), start_s=start_day * DAY)
    b = generate(spec, PER_DAY, STEP, np.random.default_rng(seed), start_s=start_day * DAY)
    assert a.dtype == np.float64 and a.shape == (PER_DAY,)
    assert a.tobytes() == b.tobytes()


def test_different_seeds_give_different_traces() -> None:
    spec = busy_spec()
    a = generate(spec, PER_DAY, STEP, np.random.default_rng(1))
    b = generate(spec, PER_DAY, STEP, np.random.default_rng(2))
    assert not np.array_equal(a, b)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    noise=st.floats(0.0, 1.0),
    trend=st.floats(-0.5, 0.5),
    trough=st.floats(0.01, 1.0),
    on_fraction=st.floats(0.0, 1.0),
    off_level=st.floats(0.0, 1.0),
    step_s=st.sampled_from([10.0, 60.0, 300.0, 3600.0]),
)
def test_rates_are_finite_and_never_negative(
    seed: int, noise: float, trend: float, trough: float, on_fraction: float, off_level: float, step_s: float
) -> None:
    spec = WorkloadSpec(
        peak_rps=50.0,
        noise=noise,
        trend_per_day=trend,
        trough_fraction=trough,
        flash_crowds=FlashCrowdSpec(per_day=2.0),
        batch=BatchArrivalSpec(on_fraction=on_fraction, off_level=off_level),
    )
    n = int(4 * DAY / step_s)
    rates = generate(spec, n, step_s, np.random.default_rng(seed))
    assert rates.shape == (n,)
    assert np.all(np.isfinite(rates)) and np.all(rates >= 0.0)


def test_zero_steps_gives_empty_array() -> None:
    assert generate(busy_spec(), 0, STEP, np.random.default_rng(0)).shape == (0,)


@settings(max_examples=30, deadline=None)
@given(peak_hour=st.floats(0.0, 23.99), trough=st.floats(0.05, 0.9))
def test_diurnal_peak_lands_at_peak_hour_and_trough_ratio_matches(peak_hour: float, trough: float) -> None:
    spec = calm(peak_hour=peak_hour, trough_fraction=trough)
    rates = generate(spec, PER_DAY, STEP, np.random.default_rng(0))
    peak_at_h = np.argmax(rates) * STEP / 3600.0
    off_by = abs((peak_at_h - peak_hour + 12.0) % 24.0 - 12.0)
    assert off_by <= STEP / 3600.0
    assert rates.max() == pytest.approx(spec.peak_rps, rel=1e-4)
    assert rates.min() / rates.max() == pytest.approx(trough, rel=1e-3)


def test_seasonal_peak_equals_peak_rps_exactly_on_grid() -> None:
    rates = generate(calm(peak_hour=14.0), PER_DAY, STEP, np.random.default_rng(0))
    assert rates.max() == 100.0
    assert np.argmax(rates) == 14 * 60


def test_night_is_flatter_than_day() -> None:
    rates = generate(calm(peak_hour=12.0, trough_fraction=0.2), PER_DAY, STEP, np.random.default_rng(0))
    hourly = rates[::60]
    slope = np.abs(np.roll(hourly, -1) - hourly)
    assert slope[[22, 23, 0, 1]].max() < slope[[8, 9, 14, 15]].min()


def test_weekend_is_lower_than_weekdays() -> None:
    spec = calm(weekend_factor=0.6)
    rates = generate(spec, 7 * PER_DAY, STEP, np.random.default_rng(0)).reshape(7, PER_DAY)
    daily = rates.mean(axis=1)
    assert np.allclose(daily[1:4], daily[1])
    assert np.allclose(daily[5:], 0.6 * daily[1], rtol=0.02)
    assert rates[5].max() < rates[:5].max()


def test_weekend_transition_is_blended_not_a_step() -> None:
    spec = calm(weekend_factor=0.5, trough_fraction=1.0)
    friday_midnight = 5 * DAY
    rates = generate(spec, 240, STEP, np.random.default_rng(0), start_s=friday_midnight - 2 * 3600)
    assert rates[0] == pytest.approx(100.0) and rates[-1] == pytest.approx(50.0)
    assert np.abs(np.diff(rates)).max() < 5.0


def test_weekend_factor_above_one_keeps_seasonal_peak_at_peak_rps() -> None:
    rates = generate(calm(weekend_factor=1.5), 7 * PER_DAY, STEP, np.random.default_rng(0))
    assert rates.max() == pytest.approx(100.0)


def test_trend_grows_load_linearly_from_the_start() -> None:
    flat = generate(calm(), 3 * PER_DAY, STEP, np.random.default_rng(0))
    grown = generate(calm(trend_per_day=0.1), 3 * PER_DAY, STEP, np.random.default_rng(0))
    ratio = grown / flat
    assert ratio[0] == pytest.approx(1.0)
    assert ratio[2 * PER_DAY] == pytest.approx(1.2)


def test_noise_has_requested_log_sigma_and_step_correlation() -> None:
    spec = calm(trough_fraction=1.0, noise=0.3)
    rates = generate(spec, 60 * PER_DAY, STEP, np.random.default_rng(3))
    log_noise = np.log(rates / 100.0)
    assert log_noise.std() == pytest.approx(0.3, rel=0.05)
    lag1 = np.corrcoef(log_noise[:-1], log_noise[1:])[0, 1]
    assert lag1 == pytest.approx(np.exp(-STEP / 600.0), abs=0.01)
    assert rates.mean() == pytest.approx(100.0, rel=0.03)


@pytest.mark.parametrize("ramp_s", [0.0, 120.0, 600.0])
def test_flash_crowds_raise_load_by_at_least_min_magnitude_near_start(ramp_s: float) -> None:
    fc = FlashCrowdSpec(per_day=20.0, magnitude=(3.0, 4.0), ramp_s=ramp_s, decay_s=900.0)
    without = generate(calm(noise=0.1), PER_DAY, STEP, np.random.default_rng(7))
    with_fc = generate(calm(noise=0.1, flash_crowds=fc), PER_DAY, STEP, np.random.default_rng(7))
    factor = with_fc / without
    assert np.all(factor >= 1.0 - 1e-12)
    # On the step grid the top of a spike can fall at most one step after its true peak.
    assert factor.max() >= 1.0 + (3.0 - 1.0) * np.exp(-STEP / fc.decay_s)
    spikes = np.flatnonzero((factor[1:] > 1.5) & (factor[:-1] <= 1.5)) + 1
    assert spikes.size >= 5
    reach = int(np.ceil((ramp_s + STEP) / STEP))
    for i in spikes:
        assert factor[i : i + reach + 1].max() >= 1.0 + 2.0 * np.exp(-STEP / fc.decay_s) - 1e-9


def test_flash_crowds_decay_back_to_baseline() -> None:
    fc = FlashCrowdSpec(per_day=0.5, magnitude=(5.0, 5.0), ramp_s=60.0, decay_s=300.0)
    spec = calm(flash_crowds=fc)
    rng_seed = next(s for s in range(100) if _has_one_flash(spec, s))
    without = generate(calm(), 2 * PER_DAY, STEP, np.random.default_rng(rng_seed))
    factor = generate(spec, 2 * PER_DAY, STEP, np.random.default_rng(rng_seed)) / without
    top = int(np.argmax(factor))
    assert factor[top] > 4.0
    assert factor[top + 60] < 1.01


def _has_one_flash(spec: WorkloadSpec, seed: int) -> bool:
    factor = generate(spec, 2 * PER_DAY, STEP, np.random.default_rng(seed)) / generate(
        calm(), 2 * PER_DAY, STEP, np.random.default_rng(seed)
    )
    top = int(np.argmax(factor))
    starts = np.flatnonzero((factor[1:] > 1.5) & (factor[:-1] <= 1.5))
    return starts.size == 1 and top < 2 * PER_DAY - 120


def test_flash_crowds_leave_other_random_components_unchanged() -> None:
    plain = generate(busy_spec().model_copy(update={"flash_crowds": FlashCrowdSpec()}), PER_DAY, STEP, np.random.default_rng(5))
    flashy = generate(busy_spec(), PER_DAY, STEP, np.random.default_rng(5))
    ratio = flashy / plain
    assert np.all(ratio >= 1.0 - 1e-12)
    assert np.isclose(ratio, 1.0).sum() > PER_DAY // 4


@pytest.mark.parametrize("on_fraction", [0.1, 0.5, 0.8])
def test_batch_on_share_is_close_to_on_fraction_over_long_horizon(on_fraction: float) -> None:
    batch = BatchArrivalSpec(on_fraction=on_fraction, mean_on_s=1800.0, off_level=0.0)
    rates = generate(calm(trough_fraction=1.0, batch=batch), 120 * PER_DAY, STEP, np.random.default_rng(11))
    share = rates / 100.0
    assert share.min() >= 0.0 and share.max() <= 1.0 + 1e-12
    assert share.mean() == pytest.approx(on_fraction, abs=0.03)


def test_batch_off_periods_run_at_off_level() -> None:
    batch = BatchArrivalSpec(on_fraction=0.5, mean_on_s=3600.0, off_level=0.25)
    rates = generate(calm(trough_fraction=1.0, batch=batch), 10 * PER_DAY, STEP, np.random.default_rng(4))
    assert rates.min() == pytest.approx(25.0)
    assert rates.max() == pytest.approx(100.0)
    mean_on_run = np.mean(np.diff(np.flatnonzero(np.diff(rates >= 99.999))))
    assert 20 < mean_on_run < 120


# --------------------------------------------------------------------------- CSV traces


def test_csv_round_trip_resampled_to_60s_and_600s(tmp_path: Path) -> None:
    ts = 300.0 * np.arange(12)
    vals = np.array([10, 20, 40, 30, 30, 50, 10, 0, 5, 15, 25, 35], dtype=float)
    body = "timestamp,value\n" + "".join(f"{int(t)},{v:g}\n" for t, v in zip(ts, vals))
    got_ts, got_vals = load_csv(write(tmp_path, body))
    np.testing.assert_array_equal(got_ts, ts)
    np.testing.assert_array_equal(got_vals, vals)

    fine = resample(got_ts, got_vals, 60.0)
    assert fine.shape == (60,)
    np.testing.assert_allclose(fine[::5], vals)
    np.testing.assert_allclose(fine[1:5], [12.0, 14.0, 16.0, 18.0])

    coarse = resample(got_ts, got_vals, 600.0)
    np.testing.assert_allclose(coarse, vals.reshape(-1, 2).mean(axis=1))


def test_resample_handles_non_integer_interval_ratios() -> None:
    ts = 100.0 * np.arange(9)
    vals = np.arange(9, dtype=float)
    coarse = resample(ts, vals, 250.0)
    assert coarse.shape == (3,)
    np.testing.assert_allclose(coarse, [(0 + 1 + 0.5 * 2) / 2.5, (0.5 * 2 + 3 + 4) / 2.5, (5 + 6 + 0.5 * 7) / 2.5])
    assert resample(ts, vals, 100.0).tolist() == vals.tolist()


def test_csv_with_other_column_and_extra_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "host,timestamp,cpu\na,0,1.5\nb,60,2.5\nc,120,3.5\n")
    ts, vals = load_csv(path, column="cpu")
    assert ts.tolist() == [0.0, 60.0, 120.0] and vals.tolist() == [1.5, 2.5, 3.5]


def test_scale_to_peak_ignores_a_single_outlier() -> None:
    vals = np.concatenate([np.linspace(0.0, 10.0, 1000), [1000.0]])
    scaled = scale_to_peak(vals, 50.0)
    assert np.percentile(scaled, 99) == pytest.approx(50.0)
    assert np.percentile(scaled, 50) == pytest.approx(25.0, rel=0.02)


CSV_ERRORS = {
    "missing_file": (None, "not found"),
    "empty_file": ("", "empty"),
    "missing_value_column": ("timestamp,load\n0,1\n60,2\n", "'value'"),
    "missing_timestamp_column": ("time,value\n0,1\n60,2\n", "'timestamp'"),
    "non_numeric_value": ("timestamp,value\n0,1\n60,2\n120,abc\n", "line 4"),
    "non_numeric_timestamp": ("timestamp,value\n0,1\nnoon,2\n", "line 3"),
    "short_row": ("timestamp,value\n0,1\n60\n", "line 3"),
    "non_increasing_timestamps": ("timestamp,value\n0,1\n60,2\n60,3\n", "not after"),
    "irregular_timestamps": ("timestamp,value\n0,1\n60,2\n150,3\n", "irregular"),
    "fewer_than_two_rows": ("timestamp,value\n0,1\n", "at least 2"),
    "negative_value": ("timestamp,value\n0,1\n60,-2\n", "negative"),
    "nan_value": ("timestamp,value\n0,1\n60,nan\n", "non-finite"),
    "quoted_multiline_cell_keeps_line_numbers": ('timestamp,value\n0,1\n60,"5\n"\n120,3\n180,z\n', "line 6"),
    "blank_lines_keep_line_numbers": ("timestamp,value\n\n0,1\n\n60,oops\n", "line 5"),
    "non_numeric_multiline_cell": ('timestamp,value\n0,1\n60,"x\ny"\n', "line 3"),
}


@pytest.mark.parametrize("case", sorted(CSV_ERRORS))
def test_each_csv_error_is_one_line_config_error_naming_the_file(tmp_path: Path, case: str) -> None:
    text, fragment = CSV_ERRORS[case]
    path = tmp_path / f"bad_{case}.csv"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_csv(path)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert path.name in message
    assert fragment in message


def test_trace_with_all_zero_values_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "timestamp,value\n0,0\n60,0\n120,0\n", "zeros.csv")
    with pytest.raises(ConfigError, match="zeros.csv"):
        generate(calm(trace=str(path)), 10, STEP, np.random.default_rng(0))


def test_trace_replays_scaled_from_start_offset_and_wraps(tmp_path: Path) -> None:
    vals = np.arange(1, 13, dtype=float)
    body = "timestamp,value\n" + "".join(f"{300 * i},{v:g}\n" for i, v in enumerate(vals))
    spec = calm(trace=str(write(tmp_path, body)), peak_rps=10.0)
    rates = generate(spec, 12, 300.0, np.random.default_rng(0), start_s=3 * 300.0)
    p99 = np.percentile(vals, 99)
    np.testing.assert_allclose(rates, np.roll(vals, -3) * 10.0 / p99)


def test_trace_gets_flash_crowds_and_noise_on_top(tmp_path: Path) -> None:
    body = "timestamp,value\n" + "".join(f"{300 * i},5\n" for i in range(288))
    path = str(write(tmp_path, body))
    plain = generate(calm(trace=path), PER_DAY, STEP, np.random.default_rng(0))
    np.testing.assert_allclose(plain, 100.0)
    noisy = generate(calm(trace=path, noise=0.1, flash_crowds=FlashCrowdSpec(per_day=5.0)), PER_DAY, STEP, np.random.default_rng(0))
    assert noisy.std() > 5.0 and noisy.max() > 200.0


def test_real_alibaba_trace_loads_resamples_and_plays() -> None:
    path = find_real_trace()
    if path is None:
        pytest.skip(f"{TRACE_NAME} not found next to the repository or in /work/shared")
    ts, vals = load_csv(path)
    assert ts.size > 2000 and np.all(np.diff(ts) == 300.0) and np.all(vals >= 0)
    fine, coarse = resample(ts, vals, 60.0), resample(ts, vals, 600.0)
    assert fine.size == 5 * ts.size and coarse.size == ts.size // 2
    assert fine.mean() == pytest.approx(vals.mean(), rel=0.01)
    assert coarse.mean() == pytest.approx(vals[: 2 * coarse.size].mean())
    rates = generate(WorkloadSpec(peak_rps=300.0, noise=0.0, trace=str(path)), 3 * PER_DAY, STEP, np.random.default_rng(0))
    assert np.percentile(rates, 99) == pytest.approx(300.0, rel=0.05)
    assert rates.min() > 0


# --------------------------------------------------------------------------- randomise


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), peak_hour=st.floats(0.0, 23.99))
def test_randomise_draws_within_ranges_and_wraps_peak_hour(seed: int, peak_hour: float) -> None:
    spec = WorkloadSpec(peak_rps=100.0, peak_hour=peak_hour, noise=0.05, flash_crowds=FlashCrowdSpec(per_day=1.0))
    rand = RandomisationSpec(scale=(0.5, 2.0), phase_h=(-3.0, 3.0), flash_per_day=(0.0, 4.0), noise=(0.0, 0.3))
    out = randomise(spec, rand, np.random.default_rng(seed))
    assert 50.0 <= out.peak_rps <= 200.0
    assert 0.0 <= out.peak_hour < 24.0
    shift = (out.peak_hour - peak_hour + 12.0) % 24.0 - 12.0
    assert -3.0 - 1e-9 <= shift <= 3.0 + 1e-9
    assert 0.0 <= out.flash_crowds.per_day <= 4.0 and 0.0 <= out.noise <= 0.3
    assert out.flash_crowds.magnitude == spec.flash_crowds.magnitude
    assert out == randomise(spec, rand, np.random.default_rng(seed))


def test_randomise_leaves_unset_ranges_alone() -> None:
    spec = WorkloadSpec(peak_rps=100.0, noise=0.07, flash_crowds=FlashCrowdSpec(per_day=1.5), trace="x.csv")
    out = randomise(spec, RandomisationSpec(), np.random.default_rng(0))
    assert out.noise == 0.07 and out.flash_crowds == spec.flash_crowds and out.trace == "x.csv"
    assert out.peak_rps != spec.peak_rps and spec.peak_rps == 100.0
