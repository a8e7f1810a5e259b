"""The observation builders pinned position by position on hand-built metric sequences.

The env and the controller share each builder, so a change in a feature (a
lag, the trend's horizon, the clip) would pass every end-to-end test; these
tests are what notices it.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from rlscale.config import load_scenario
from rlscale.policies.relative import FEATURES, LAGS, RelativeObservation, ServiceTraits
from rlscale.spaces import HISTORY_LAGS, OBS_CLIP, Metrics, ObservationBuilder, ObsSpec


def metrics(n: int, arrivals, *, ready=4.0, desired=4.0, util=0.5, p95=0.1, backlog=0.0, dropped=0.0,
            S: int = 1, P: int = 1, time_s: float = 0.0) -> Metrics:
    def grid(v, shape):
        v = np.asarray(v, dtype=np.float64)
        if v.ndim == 1 and len(shape) == 2:
            v = v[:, None]
        return np.broadcast_to(v, shape).copy()

    return Metrics(
        time_s=grid(time_s, (n,)), arrivals_rps=grid(arrivals, (n, S)), ready=grid(ready, (n, S)),
        desired=grid(desired, (n, S)), utilisation=grid(util, (n, S)), latency_p95_s=grid(p95, (n, S)),
        backlog=grid(backlog, (n, S)), dropped=grid(dropped, (n, S)), nodes_ready=grid(2.0, (n, P)),
        nodes_provisioning=grid(0.0, (n, P)), packing=grid(0.8, (n, P)), cost_rate_usd_h=grid(0.5, (n,)),
        hot_spot=grid(0.0, (n,)), rebalancing=grid(0.0, (n,)),
    )


SPEC = ObsSpec(services=("api",), pools=("p",), replica_rps=(10.0,), ref_replicas=(10.0,), slo_target_s=(0.5,),
               max_nodes=(4.0,), step_s=60.0, cost_ref_usd_h=1.0)


class TestSpecialistBuilder:
    def test_load_lags_and_trend_after_a_linear_ramp(self) -> None:
        assert HISTORY_LAGS == (1, 2, 5, 10, 15)
        b = ObservationBuilder(SPEC, 1)
        for t in range(1, 21):
            obs = b.build(metrics(1, 10.0 * t))
        # load = arrivals / (10 req/s * 10 replicas): 2.0 now; lags 1, 2, 5, 10, 15; trend = load - load 5 ago
        np.testing.assert_allclose(obs[0, :7], [2.0, 1.9, 1.8, 1.5, 1.0, 0.5, 0.5], rtol=1e-6)

    def test_a_fresh_history_is_filled_with_the_first_load(self) -> None:
        b = ObservationBuilder(SPEC, 1)
        b.build(metrics(1, 10.0))
        obs = b.build(metrics(1, 30.0))
        np.testing.assert_allclose(obs[0, :7], [0.3, 0.1, 0.1, 0.1, 0.1, 0.1, 0.2], rtol=1e-6)

    def test_per_service_ratios(self) -> None:
        obs = ObservationBuilder(SPEC, 1).build(metrics(1, 20.0, ready=3.0, desired=5.0, util=0.7, p95=0.75,
                                                        backlog=600.0, dropped=120.0))
        names = SPEC.feature_names()
        row = dict(zip(names, obs[0].tolist()))
        assert row["api.ready"] == pytest.approx(0.3)
        assert row["api.desired"] == pytest.approx(0.5)
        assert row["api.pending"] == pytest.approx(0.2)
        assert row["api.utilisation"] == pytest.approx(0.7)
        assert row["api.slo_ratio"] == pytest.approx(1.5)
        assert row["api.backlog"] == pytest.approx(600.0 / (10 * 10 * 60))
        assert row["api.dropped_fraction"] == pytest.approx(120.0 / (20 * 60))
        assert row["api.load_per_ready"] == pytest.approx(20.0 / 30.0)

    def test_nan_becomes_zero_and_large_values_are_clipped(self) -> None:
        obs = ObservationBuilder(SPEC, 1).build(metrics(1, 1e6, util=np.nan, p95=1e9))
        row = dict(zip(SPEC.feature_names(), obs[0].tolist()))
        assert row["api.load"] == OBS_CLIP
        assert row["api.utilisation"] == 0.0
        assert row["api.slo_ratio"] == OBS_CLIP

    def test_resetting_one_cluster_leaves_its_neighbour_alone(self) -> None:
        b = ObservationBuilder(SPEC, 2)
        for t in range(1, 8):
            b.build(metrics(2, [10.0 * t, 20.0 * t]))
        b.reset(np.array([True, False]))
        obs = b.build(metrics(2, [50.0, 160.0]))
        np.testing.assert_allclose(obs[0, :6], [0.5] * 6, rtol=1e-6)  # fresh: every lag is the new load
        np.testing.assert_allclose(obs[1, :4], [1.6, 1.4, 1.2, 0.6], rtol=1e-6)


TRAITS = ServiceTraits(services=("api",), rps=(10.0,), slo_s=(0.5,), min_replicas=(1,), max_replicas=(100,),
                       lead_s=(120.0,), cold_start_s=(30.0,), price_ratio=(2.0,), replicas_per_node=(4.0,),
                       batch=(False,), step_s=60.0)


def col(name: str) -> int:
    return FEATURES.index(name)


class TestRelativeBuilder:
    def test_log_ratios_forecast_and_clip_on_a_doubling_load(self) -> None:
        assert LAGS == (1, 2, 5, 10, 15)
        b = RelativeObservation(TRAITS, 1)
        for t in range(16):
            obs = b.build(metrics(1, 2.0 ** t, ready=10.0, desired=10.0, util=0.5))
        row = obs[0]
        ln2 = math.log(2.0)
        for k in (1, 2, 5):
            assert row[col(f"log_ratio_lag{k}")] == pytest.approx(k * ln2, rel=2e-3)  # the 1e-3-of-mean floor
        # a ratio against a near-empty past is bounded: the denominator has a floor of 1e-3 of the history's mean
        floor = np.mean([2.0 ** t for t in range(16)]) * 1e-3
        assert row[col("log_ratio_lag15")] == pytest.approx(math.log((2.0 ** 15 + floor) / (1.0 + floor)), rel=1e-4)
        # the 5-interval slope (ln 2 per interval) over a lead of (120 s provisioning) / 60 s = 2 intervals
        assert row[col("log_forecast_lead")] == pytest.approx(2.0 * ln2, rel=2e-3)
        assert row[col("lead_steps")] == pytest.approx(0.2)
        assert row[col("cold_steps")] == pytest.approx(0.05)
        assert row[col("log_price_ratio")] == pytest.approx(math.log(2.0))
        assert row[col("log_replicas_per_node")] == pytest.approx(math.log(4.0) / 3.0)

    def test_load_over_the_capacity_it_has_and_will_have(self) -> None:
        b = RelativeObservation(TRAITS, 1)
        # utilisation 0.75 on 4 ready replicas at 30 req/s: exactly the declared 10 req/s per replica
        obs = b.build(metrics(1, 30.0, ready=4.0, desired=6.0, util=0.75, p95=1.0, backlog=120.0, dropped=6.0))
        row = obs[0]
        assert row[col("load_soon")] == pytest.approx(30.0 / 60.0)
        assert row[col("load_ready")] == pytest.approx(30.0 / 40.0)
        assert row[col("slo_ratio")] == pytest.approx(2.0)
        assert row[col("pending")] == pytest.approx(2.0 / 6.0)
        assert row[col("backlog_steps")] == pytest.approx(120.0 / (60.0 * 60.0))
        assert row[col("dropped_fraction")] == pytest.approx(6.0 / (30.0 * 60.0))
        assert row[col("to_max")] == pytest.approx(94.0 / 6.0 if 94.0 / 6.0 < 10 else 10.0)

    def test_capacity_estimate_follows_measured_utilisation(self) -> None:
        b = RelativeObservation(TRAITS, 1)
        for _ in range(60):
            obs = b.build(metrics(1, 40.0, ready=10.0, desired=10.0, util=0.5))  # true capacity 8/s, declared 10/s
        assert obs[0, col("capacity_vs_declared")] == pytest.approx(0.8, rel=1e-2)
        assert b.rps_hat[0, 0] == pytest.approx(8.0, rel=1e-2)

    def test_large_values_are_clipped(self) -> None:
        obs = RelativeObservation(TRAITS, 1).build(metrics(1, 1e9, ready=1.0, desired=1.0, p95=1e6))
        assert obs[0, col("load_soon")] == 10.0
        assert obs[0, col("slo_ratio")] == 10.0

    def test_nan_metrics_give_zeros_not_nan(self) -> None:
        b = RelativeObservation(TRAITS, 1)
        obs = b.build(metrics(1, np.nan, ready=np.nan, desired=np.nan, util=np.nan, p95=np.nan))
        assert np.isfinite(obs).all()
        assert obs[0, col("load_soon")] == 0.0
        assert obs[0, col("slo_ratio")] == 0.0

    def test_resetting_one_cluster_leaves_its_neighbour_alone(self) -> None:
        b = RelativeObservation(TRAITS, 2)
        for t in range(1, 8):
            b.build(metrics(2, [10.0 * t, 10.0 * t]))
        b.reset(np.array([True, False]))
        obs = b.build(metrics(2, [80.0, 80.0]))
        assert obs[0, col("log_ratio_lag5")] == pytest.approx(0.0)  # fresh history
        assert obs[1, col("log_ratio_lag5")] == pytest.approx(math.log(80.0 / 30.0), rel=1e-3)

    def test_features_do_not_depend_on_scale(self) -> None:
        sc = load_scenario("web-diurnal")
        base = ServiceTraits.from_scenario(sc)
        k = 7.0
        big = replace(base, min_replicas=tuple(int(v * k) for v in base.min_replicas),
                      max_replicas=tuple(int(v * k) for v in base.max_replicas))
        a, b = RelativeObservation(base, 1), RelativeObservation(big, 1)
        rng = np.random.default_rng(0)
        for _ in range(20):
            load = rng.uniform(50, 500)
            ready = float(rng.integers(5, 15))
            oa = a.build(metrics(1, load, ready=ready, desired=ready + 1, util=min(1.0, load / (20 * ready)), backlog=3.0))
            ob = b.build(metrics(1, load * k, ready=ready * k, desired=(ready + 1) * k,
                                 util=min(1.0, load / (20 * ready)), backlog=3.0 * k))
            f = col("floor_ratio")  # a replica count is whole: ceil() rounds at another place
            np.testing.assert_allclose(np.delete(oa, f, axis=1), np.delete(ob, f, axis=1), rtol=1e-4, atol=1e-5)
            assert abs(oa[0, f] - ob[0, f]) <= 1.0 / (ready + 1) + 1e-6
