"""Baseline policies: HPA follows the Kubernetes documentation, every policy respects min/max and batches."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlscale.config import ConfigError, Scenario
from rlscale.policies import (
    POLICY_NAMES,
    HPAPolicy,
    Policy,
    PredictivePolicy,
    ScalingPolicy,
    ScalingRules,
    StaticPolicy,
    TargetTrackingPolicy,
    make_policy,
    recommend,
)
from rlscale.spaces import Metrics


def make_scenario(
    step_s: float = 60.0, min_replicas: int = 1, max_replicas: int = 200, services: int = 1, peak_rps: float = 100.0
) -> Scenario:
    """One pool; online services whose replicas serve 10 rps each (1 vCPU, 0.1 s per request)."""
    return Scenario.model_validate(
        {
            "name": "tiny",
            "step_s": step_s,
            "pools": [{"name": "pool", "vcpu": 4, "memory_gib": 16, "price_per_hour": 0.2, "max_nodes": 64}],
            "services": [
                {
                    "name": f"web{i}",
                    "work_s": 0.1,
                    "replica": {"cpu": 1, "memory_gib": 1},
                    "min_replicas": min_replicas,
                    "max_replicas": max_replicas,
                    "slo": {"p95_latency_s": 0.5},
                    "pools": ["pool"],
                    "workload": {"peak_rps": peak_rps},
                }
                for i in range(services)
            ],
            "reward": {"cost_scale": 1.0},
        }
    )


def make_metrics(utilisation, ready, desired=None, arrivals=None) -> Metrics:
    """Synthetic metrics; scalars become one cluster and one service."""
    util = np.atleast_2d(np.asarray(utilisation, dtype=np.float64))
    shape = util.shape
    ready_a = np.broadcast_to(np.asarray(ready, dtype=np.float64), shape).copy()
    desired_a = ready_a.copy() if desired is None else np.broadcast_to(np.asarray(desired, dtype=np.float64), shape).copy()
    arrivals_a = np.zeros(shape) if arrivals is None else np.broadcast_to(np.asarray(arrivals, dtype=np.float64), shape).copy()
    n = shape[0]
    zeros_ns, zeros_n, zeros_np = np.zeros(shape), np.zeros(n), np.zeros((n, 1))
    return Metrics(
        time_s=zeros_n.copy(), arrivals_rps=arrivals_a, ready=ready_a, desired=desired_a, utilisation=util,
        latency_p95_s=zeros_ns.copy(), backlog=zeros_ns.copy(), dropped=zeros_ns.copy(),
        nodes_ready=zeros_np.copy(), nodes_provisioning=zeros_np.copy(), packing=zeros_np.copy(),
        cost_rate_usd_h=zeros_n.copy(), hot_spot=zeros_n.copy(), rebalancing=zeros_n.copy(),
    )


def replicas_after(policy: Policy, utilisation: float, current: int) -> int:
    """One decision for one cluster and service, with every replica ready."""
    action = policy.act(make_metrics(utilisation, current))
    assert action.replicas.dtype == np.int64 and action.rebalance.tolist() == [0]
    return int(action.replicas[0, 0])


# --------------------------------------------------------------------------- HPA: replica calculator


def test_hpa_doubles_replicas_when_metric_is_twice_the_target():
    """k8s docs: currentMetricValue 200m, desiredMetricValue 100m -> 200.0 / 100.0 == 2.0, replicas doubled."""
    assert recommend(np.array([[3]]), np.array([[200.0]]), target=100.0).tolist() == [[6]]


def test_hpa_halves_replicas_when_metric_is_half_the_target():
    """k8s docs: currentMetricValue 50m, desiredMetricValue 100m -> 50.0 / 100.0 == 0.5, replicas halved."""
    assert recommend(np.array([[4]]), np.array([[50.0]]), target=100.0).tolist() == [[2]]


@pytest.mark.parametrize("ratio", [1.05, 0.95, 1.09, 0.91])
def test_hpa_holds_replicas_when_ratio_is_within_tolerance(ratio):
    assert recommend(np.array([[10]]), np.array([[0.7 * ratio]]), target=0.7).tolist() == [[10]]


def test_hpa_acts_when_ratio_leaves_the_tolerance_band():
    assert recommend(np.array([[10]]), np.array([[0.7 * 1.15]]), target=0.7).tolist() == [[12]]
    assert recommend(np.array([[10]]), np.array([[0.7 * 0.85]]), target=0.7).tolist() == [[9]]


def test_hpa_ratio_is_measured_over_ready_pods_and_applied_to_them():
    # 4 ready of 4 desired at 1.4 / 0.7: ceil(2 * 4) = 8; with 2 of 2 ready: 4
    assert recommend(np.array([[4, 2]]), np.array([[1.4, 1.4]]), 0.7, ready=np.array([[4, 2]])).tolist() == [[8, 4]]


def test_hpa_counts_starting_pods_as_idle_before_scaling_up_again():
    # 2 ready at 2x target, 4 desired: treating 2 starting pods as 0% gives ratio 1.0 -> hold at 4
    assert recommend(np.array([[4]]), np.array([[1.4]]), 0.7, ready=np.array([[2]])).tolist() == [[4]]
    # 2 ready at 1.6x, 3 desired: ratio with the starting pod is 1.07, inside the tolerance -> hold
    assert recommend(np.array([[3]]), np.array([[1.12]]), 0.7, ready=np.array([[2]])).tolist() == [[3]]


def test_hpa_holds_when_metrics_are_missing():
    current = np.array([[5, 5]])
    assert recommend(current, np.array([[np.nan, 2.0]]), 0.7, ready=np.array([[5, 0]])).tolist() == [[5, 5]]
    hpa = HPAPolicy(make_scenario())
    assert replicas_after(hpa, np.nan, 7) == 7


# --------------------------------------------------------------------------- HPA: behaviour


def test_hpa_scale_down_waits_for_the_300s_stabilisation_window():
    hpa = HPAPolicy(make_scenario(step_s=60.0))
    assert replicas_after(hpa, 1.4, 10) == 20
    held = [replicas_after(hpa, 0.35, 20) for _ in range(4)]
    assert held == [20, 20, 20, 20], "a recommendation of 20 within the last 300 s keeps 20 replicas"
    assert replicas_after(hpa, 0.35, 20) == 10, "after 300 s of low load the highest recommendation is 10"


def test_hpa_scales_up_without_waiting():
    hpa = HPAPolicy(make_scenario())
    assert replicas_after(hpa, 0.35, 10) == 5, "with no earlier recommendation nothing holds it"
    assert replicas_after(hpa, 1.4, 5) == 10, "the recommendation of 5 a minute ago does not delay scale-up"


def test_hpa_scale_up_is_limited_to_max_of_4_pods_and_100_percent_per_15s_period():
    hpa = HPAPolicy(make_scenario(step_s=15.0))
    assert replicas_after(hpa, 100.0, 1) == 5, "from 1: 4 pods beats 100%"
    assert replicas_after(hpa, 100.0, 10) == 20, "from 10: 100% beats 4 pods"


def test_hpa_rate_limit_compounds_over_the_15s_syncs_inside_one_decision():
    hpa = HPAPolicy(make_scenario(step_s=60.0))
    assert replicas_after(hpa, 100.0, 1) == 40  # 1 -> 5 -> 10 -> 20 -> 40


def test_hpa_rate_limit_counts_scale_events_within_the_policy_period():
    up = ScalingRules((ScalingPolicy("Pods", 4, 60.0),))
    hpa = HPAPolicy(make_scenario(step_s=60.0), scale_up=up)
    assert replicas_after(hpa, 100.0, 1) == 5, "four syncs share one 60 s budget of 4 pods"
    assert replicas_after(hpa, 100.0, 5) == 9, "events 60 s old have left the period"


def test_hpa_clamps_to_min_and_max_replicas():
    hpa = HPAPolicy(make_scenario(min_replicas=2, max_replicas=8), downscale_window_s=0.0)
    assert replicas_after(hpa, 100.0, 4) == 8
    assert replicas_after(hpa, 0.0, 8) == 2
    assert replicas_after(hpa, 0.7, 0) == 2, "below min: straight to min"
    assert replicas_after(hpa, 0.7, 50) == 8, "above max: straight to max"


def test_hpa_reset_forgets_the_stabilisation_history():
    hpa = HPAPolicy(make_scenario())
    replicas_after(hpa, 1.4, 10)
    hpa.reset(1)
    assert replicas_after(hpa, 0.35, 20) == 10


def test_stateful_policies_reject_a_batch_of_another_size():
    hpa = HPAPolicy(make_scenario())
    with pytest.raises(ValueError, match=r"reset\(3\)"):
        hpa.act(make_metrics(np.full((3, 1), 0.5), 2))


# --------------------------------------------------------------------------- other baselines


def test_static_is_sized_for_the_peak_at_70_percent():
    # peak 100 rps, 10 rps per replica: ceil(100 / 7) = 15, whatever the load
    static = StaticPolicy(make_scenario(peak_rps=100.0))
    assert replicas_after(static, 0.0, 3) == 15
    assert replicas_after(static, 5.0, 40) == 15


def test_static_replicas_are_clamped_and_must_match_the_services():
    assert replicas_after(StaticPolicy(make_scenario(max_replicas=8), replicas=[50]), 0.5, 3) == 8
    with pytest.raises(ConfigError, match="one per service"):
        StaticPolicy(make_scenario(), replicas=[1, 2])


def test_target_tracking_scales_out_straight_to_the_estimate():
    tt = TargetTrackingPolicy(make_scenario())
    assert replicas_after(tt, 0.9, 10) == 15  # ceil(10 * 0.9 / 0.6)


def test_target_tracking_scales_in_after_the_cooldown_by_at_most_10_percent():
    tt = TargetTrackingPolicy(make_scenario())
    assert replicas_after(tt, 1.2, 20) == 40
    held = [replicas_after(tt, 0.15, 40) for _ in range(4)]
    assert held == [40] * 4, "no scale-in within 300 s of the scale-out"
    assert replicas_after(tt, 0.15, 40) == 36, "then at most 10% per step"
    assert replicas_after(tt, 0.15, 36) == 36, "and the scale-in restarts the cooldown"
    assert replicas_after(tt, 1.2, 36) == 72, "a scale-in cooldown never blocks a scale-out"


def test_target_tracking_scale_in_removes_at_least_one_replica():
    tt = TargetTrackingPolicy(make_scenario())
    assert replicas_after(tt, 0.1, 5) == 4


def test_predictive_sizes_for_the_last_rate_with_headroom():
    pred = PredictivePolicy(make_scenario())
    action = pred.act(make_metrics(0.5, 1, arrivals=70.0))
    assert action.replicas.tolist() == [[11]]  # ceil(70 * 1.1 / (10 * 0.7))


def test_predictive_never_scales_down_more_than_10_percent_per_step():
    pred = PredictivePolicy(make_scenario())
    assert pred.act(make_metrics(0.5, 50, arrivals=0.0)).replicas.tolist() == [[45]]


def test_predictive_anticipates_the_daily_ramp_after_one_day():
    scenario = make_scenario(step_s=3600.0)  # a day is 24 steps
    day = np.array([10.0] * 8 + [100.0] * 16)
    pred = PredictivePolicy(scenario, level_window=2)
    sized = [int(pred.act(make_metrics(0.5, 2, arrivals=rate)).replicas[0, 0]) for rate in np.tile(day, 2)]
    assert sized[7] == 2, "on day one the ramp is a surprise"
    assert sized[24 + 7] == 16, "on day two the policy provisions for it an hour ahead: ceil(100 * 1.1 / 7)"


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", ["static", "hpa", "target_tracking", "predictive"])
def test_make_policy_builds_each_baseline_by_name(name):
    policy = make_policy(name, make_scenario())
    assert isinstance(policy, Policy) and policy.name == name


def test_make_policy_rejects_unknown_names_listing_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        make_policy("k8s", make_scenario())
    message = str(err.value)
    assert "\n" not in message and "'k8s'" in message
    assert all(name in message for name in POLICY_NAMES)


def test_make_policy_with_a_missing_ppo_model_is_a_one_line_error():
    with pytest.raises(ConfigError, match="model not found") as err:
        make_policy("ppo:models/no-such-model", make_scenario())
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- properties

STEP_60 = make_scenario(min_replicas=2, max_replicas=30, services=2)
STEP_1H = make_scenario(step_s=3600.0, min_replicas=2, max_replicas=30, services=2)  # a day is 24 steps
FACTORIES: dict[str, tuple[Callable[[Scenario], Policy], Scenario]] = {
    "static": (StaticPolicy, STEP_60),
    "hpa": (HPAPolicy, STEP_60),
    "target_tracking": (TargetTrackingPolicy, STEP_60),
    "predictive": (lambda sc: PredictivePolicy(sc, level_window=2), STEP_1H),
}

values = st.one_of(
    st.floats(min_value=0.0, max_value=1e12),
    st.sampled_from([0.0, 1e300, np.inf, np.nan]),
)


@st.composite
def metric_sequences(draw, n: int, steps: int) -> list[Metrics]:
    shape = (steps, n, 2)
    util = np.array(draw(st.lists(values, min_size=steps * n * 2, max_size=steps * n * 2))).reshape(shape)
    arrivals = np.array(draw(st.lists(values, min_size=steps * n * 2, max_size=steps * n * 2))).reshape(shape)
    desired = np.array(draw(st.lists(st.integers(0, 60), min_size=steps * n * 2, max_size=steps * n * 2))).reshape(shape)
    ready = np.minimum(desired, draw(st.integers(0, 60)))
    return [make_metrics(util[t], ready[t], desired[t], arrivals[t]) for t in range(steps)]


@pytest.mark.parametrize("name", FACTORIES)
@settings(max_examples=25, deadline=None)
@given(sequence=metric_sequences(n=3, steps=10))
def test_every_policy_stays_within_min_and_max_for_any_load(name, sequence):
    factory, scenario = FACTORIES[name]
    policy = factory(scenario)
    policy.reset(3)
    for metrics in sequence:
        action = policy.act(metrics)
        assert action.replicas.dtype == np.int64 and action.replicas.shape == (3, 2)
        assert action.rebalance.dtype == np.int64 and set(action.rebalance.tolist()) <= {0, 1}
        assert (action.replicas >= 2).all() and (action.replicas <= 30).all()


@pytest.mark.parametrize("name", FACTORIES)
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([0.0, 1.0, 3.0, 1e12]), holes=st.sampled_from([0.0, 0.1]))
def test_a_batch_of_5_clusters_acts_like_5_separate_runs(name, seed, scale, holes):
    """Closed loop over 30 steps (past a predictive day); each cluster sees its own load and its own replicas."""
    factory, scenario = FACTORIES[name]
    batched = factory(scenario)
    batched.reset(5)
    singles = [factory(scenario) for _ in range(5)]
    rng = np.random.default_rng(seed)
    desired = rng.integers(0, 40, size=(5, 2))
    ready = desired.copy()
    for _ in range(30):
        util = rng.uniform(0.0, 1.0, size=(5, 2)) * scale
        arrivals = rng.uniform(0.0, 100.0, size=(5, 2)) * scale
        util[rng.random((5, 2)) < holes] = np.nan
        arrivals[rng.random((5, 2)) < holes] = np.nan
        metrics = make_metrics(util, ready, desired, arrivals)
        together = batched.act(metrics).replicas
        apart = np.concatenate([p.act(metrics.row(i)).replicas for i, p in enumerate(singles)])
        np.testing.assert_array_equal(together, apart)
        ready, desired = np.minimum(desired, together), together
