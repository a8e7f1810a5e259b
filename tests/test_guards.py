"""Guard rails: bounds, rate limits, cooldown, rebalance refusal and the HPA fallback, as pure functions and in the loop."""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlscale.clusters.base import Cluster, MetricsSample
from rlscale.config import Scenario, load_scenario
from rlscale.controller import AuditLog, ControlLoop, Decider, GuardConfig, GuardState, Telemetry, apply_guards, assess
from rlscale.controller.guards import (
    CLAMP,
    COOLDOWN,
    FALLBACK_REASONS,
    METRICS_DEGRADED,
    METRICS_INVALID,
    METRICS_MISSING,
    METRICS_STALE,
    MINUTE_LIMIT,
    MODEL_MISMATCH,
    POLICY_ERROR,
    REBALANCE_BUSY,
    REBALANCE_INVALID,
    STEP_LIMIT,
    record_applied,
)
from rlscale.policies import HPAPolicy
from rlscale.policies.ppo import PPOPolicy
from rlscale.policies.network import load_exported
from rlscale.spaces import Action, Metrics

METRIC_FIELDS = tuple(f.name for f in fields(Metrics))


def tiny_scenario(step_s: float = 20.0, max_step: int = 3) -> Scenario:
    """Two services (min 2, max 30) on one pool; 20 s intervals so three decisions share a rate window."""
    service = {
        "work_s": 0.1, "replica": {"cpu": 1, "memory_gib": 1}, "min_replicas": 2, "max_replicas": 30,
        "slo": {"p95_latency_s": 0.5}, "pools": ["pool"], "workload": {"peak_rps": 100.0},
    }
    return Scenario.model_validate({
        "name": "tiny",
        "step_s": step_s,
        "pools": [{"name": "pool", "vcpu": 4, "memory_gib": 16, "price_per_hour": 0.2, "max_nodes": 64}],
        "services": [{"name": "web", **service}, {"name": "worker", **service}],
        "actions": {"max_step": max_step},
        "reward": {"cost_scale": 1.0},
    })


def healthy_metrics(replicas, utilisation=0.5, rebalancing=0.0, time_s=0.0) -> Metrics:
    replicas = np.asarray(replicas, dtype=np.float64)[None]
    S = replicas.shape[1]
    return Metrics(
        time_s=np.array([time_s]), arrivals_rps=replicas * 5.0, ready=replicas.copy(), desired=replicas.copy(),
        utilisation=np.full((1, S), utilisation), latency_p95_s=np.full((1, S), 0.1), backlog=np.zeros((1, S)),
        dropped=np.zeros((1, S)), nodes_ready=np.array([[4.0]]), nodes_provisioning=np.zeros((1, 1)),
        packing=np.array([[0.8]]), cost_rate_usd_h=np.array([0.8]), hot_spot=np.array([0.1]), rebalancing=np.array([rebalancing]),
    )


class ProposalPolicy:
    """A policy that proposes whatever the test tells it to (stands in for a misbehaving model)."""

    name = "proposal"

    def __init__(self) -> None:
        self.replicas = np.zeros(2, dtype=np.int64)
        self.rebalance = 0

    def reset(self, n: int = 1) -> None:
        pass

    def act(self, metrics: Metrics) -> Action:
        return Action(self.replicas[None].copy(), np.array([self.rebalance], dtype=np.int64))


# --------------------------------------------------------------------------- pure guard rails


@given(
    desired=st.lists(st.integers(2, 30), min_size=2, max_size=2),
    delta=st.lists(st.integers(-3, 3), min_size=2, max_size=2),
    verb=st.integers(0, 2),
)
def test_any_action_a_ppo_policy_can_emit_passes_unchanged_on_a_healthy_cluster(desired, delta, verb):
    sc = tiny_scenario(step_s=60.0)
    config = GuardConfig.from_scenario(sc)
    current = np.array(desired)
    proposal = np.clip(current + np.array(delta), 2, 30)
    final, rebalance, adjustments = apply_guards(proposal, verb, current, 0.0, 0.0, GuardState(), config)
    assert final.tolist() == proposal.tolist() and rebalance == verb and adjustments == []


def test_defaults_follow_the_scenario_step_limit_and_allow_it_at_every_decision_of_a_minute():
    config = GuardConfig.from_scenario(tiny_scenario(step_s=20.0, max_step=3))
    assert config.max_step_change == 3
    assert config.max_change_per_minute == 9
    assert config.scale_down_cooldown_s == 0.0
    assert config.stale_after_s == 40.0


def test_clamp_brings_proposals_inside_min_and_max_and_says_so():
    config = GuardConfig.from_scenario(tiny_scenario(), max_step_change=100)
    final, _, adjustments = apply_guards(np.array([0, 99]), 0, np.array([5, 28]), 0.0, 0.0, GuardState(), config)
    assert final.tolist() == [2, 30]
    assert [(a.guard, a.target, a.before, a.after) for a in adjustments] == [(CLAMP, "web", 0, 2), (CLAMP, "worker", 99, 30)]


def test_step_limit_caps_the_change_per_decision_in_both_directions():
    config = GuardConfig.from_scenario(tiny_scenario(max_step=3))
    final, _, adjustments = apply_guards(np.array([20, 2]), 0, np.array([10, 10]), 0.0, 0.0, GuardState(), config)
    assert final.tolist() == [13, 7]
    assert {a.guard for a in adjustments} == {STEP_LIMIT}


def test_per_minute_limit_counts_the_changes_applied_in_the_last_60_seconds():
    config = GuardConfig.from_scenario(tiny_scenario(step_s=20.0), max_step_change=3, max_change_per_minute=4)
    state = record_applied(GuardState(), 0.0, np.array([10, 10]), np.array([13, 10]))
    final, _, adjustments = apply_guards(np.array([16, 13]), 0, np.array([13, 10]), 0.0, 20.0, state, config)
    assert final.tolist() == [14, 13]
    assert [(a.guard, a.target) for a in adjustments] == [(MINUTE_LIMIT, "web")]
    later = apply_guards(np.array([16, 13]), 0, np.array([13, 10]), 0.0, 60.0, state, config)[0]
    assert later.tolist() == [16, 13], "a change exactly 60 s old is outside the window"


def test_scale_down_cooldown_holds_a_scale_down_right_after_a_scale_up():
    config = GuardConfig.from_scenario(tiny_scenario(), scale_down_cooldown_s=120.0)
    state = record_applied(GuardState(), 0.0, np.array([10, 10]), np.array([12, 10]))
    held, _, adjustments = apply_guards(np.array([10, 8]), 0, np.array([12, 10]), 0.0, 60.0, state, config)
    assert held.tolist() == [12, 8] and [(a.guard, a.target) for a in adjustments] == [(COOLDOWN, "web")]
    free = apply_guards(np.array([10, 8]), 0, np.array([12, 10]), 0.0, 120.0, state, config)[0]
    assert free.tolist() == [10, 8]


def test_a_rebalance_is_refused_while_one_is_in_progress_or_unknown_and_unknown_verbs_are_refused():
    config = GuardConfig.from_scenario(tiny_scenario())
    current = np.array([5, 5])
    assert apply_guards(current, 1, current, 0.0, 0.0, GuardState(), config)[1] == 1
    verb, adjustments = apply_guards(current, 2, current, 1.0, 0.0, GuardState(), config)[1:]
    assert verb == 0 and [a.guard for a in adjustments] == [REBALANCE_BUSY]
    assert apply_guards(current, 1, current, None, 0.0, GuardState(), config)[1] == 0
    verb, adjustments = apply_guards(current, 7, current, 0.0, 0.0, GuardState(), config)[1:]
    assert verb == 0 and [a.guard for a in adjustments] == [REBALANCE_INVALID]


def test_a_cluster_outside_its_bounds_is_brought_back_at_the_permitted_rate():
    config = GuardConfig.from_scenario(tiny_scenario(max_step=3))
    final = apply_guards(np.array([30, 2]), 0, np.array([80, 0]), 0.0, 0.0, GuardState(), config)[0]
    assert final.tolist() == [77, 2]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda m: None, METRICS_MISSING),
        (lambda m: replace(m, utilisation=None), METRICS_MISSING),
        (lambda m: replace(m, utilisation=np.array([[np.nan, 0.5]])), METRICS_INVALID),
        (lambda m: replace(m, backlog=np.array([[-1.0, 0.0]])), METRICS_INVALID),
        (lambda m: replace(m, desired=np.array([[5.0, 500.0]])), METRICS_INVALID),
        (lambda m: replace(m, desired=np.array([[5.5, 5.0]])), METRICS_INVALID),
        (lambda m: replace(m, arrivals_rps=np.array([[np.inf, 1.0]])), METRICS_INVALID),
        (lambda m: replace(m, ready=np.array([1.0, 2.0, 3.0])), METRICS_INVALID),
        (lambda m: replace(m, packing="full"), METRICS_INVALID),
        (lambda m: replace(m, latency_p95_s=np.array([[np.nan, 0.1]])), METRICS_DEGRADED),
        (lambda m: replace(m, latency_p95_s=None), METRICS_DEGRADED),
        (lambda m: replace(m, latency_p95_s=np.array([[np.inf, 0.1]])), METRICS_INVALID),
        (lambda m: replace(m, latency_p95_s=np.array([[np.nan, 0.1]]), utilisation=None), METRICS_MISSING),
    ],
)
def test_assess_names_what_is_wrong_with_the_metrics(change, reason):
    config = GuardConfig.from_scenario(tiny_scenario())
    result = assess(change(healthy_metrics([5, 5])), 0.0, config)
    assert result.reason == reason and result.detail


@pytest.mark.parametrize("age", [41.0, -1.0, math.nan, None])
def test_metrics_older_than_two_intervals_or_from_the_future_are_stale(age):
    config = GuardConfig.from_scenario(tiny_scenario(step_s=20.0))
    assert assess(healthy_metrics([5, 5]), age, config).reason == METRICS_STALE
    assert assess(healthy_metrics([5, 5]), 40.0, config).reason is None


# --------------------------------------------------------------------------- decisions and fallbacks


def test_unusable_metrics_fall_back_to_the_hpa_rule_from_the_last_applied_replicas():
    sc = tiny_scenario()
    decider = Decider(sc, ProposalPolicy(), GuardConfig.from_scenario(sc))
    state = GuardState(last_replicas=np.array([7, 9]))
    decision = decider.decide(None, None, 0.0, state)
    assert decision.acted_by == "fallback:hpa" and decision.fallback_reason == METRICS_MISSING
    assert decision.replicas.tolist() == [7, 9], "without metrics HPA holds"
    assert "fell back to the HPA rule" in decision.reason


def test_without_any_known_replicas_a_fallback_does_not_act():
    sc = tiny_scenario()
    decision = Decider(sc, ProposalPolicy(), GuardConfig.from_scenario(sc)).decide(None, None, 0.0, GuardState())
    assert decision.replicas is None and decision.fallback_reason == METRICS_MISSING


def test_the_fallback_acts_like_a_fresh_kubernetes_hpa_on_the_same_metrics():
    sc = tiny_scenario()
    metrics = healthy_metrics([10, 10], utilisation=0.95)
    bad = replace(metrics, hot_spot=np.array([np.nan]))
    decision = Decider(sc, ProposalPolicy(), GuardConfig.from_scenario(sc, max_step_change=50)).decide(bad, 0.0, 0.0, GuardState())
    hpa = HPAPolicy(sc)
    hpa.reset(1)
    assert decision.fallback_reason == METRICS_INVALID
    assert decision.replicas.tolist() == hpa.act(metrics).replicas[0].tolist()


def test_a_service_with_a_nan_reading_is_held_while_the_others_follow_the_hpa_rule():
    sc = tiny_scenario()
    metrics = healthy_metrics([10, 10], utilisation=0.95)
    metrics.utilisation[0, 1] = np.nan
    decision = Decider(sc, ProposalPolicy(), GuardConfig.from_scenario(sc, max_step_change=50)).decide(metrics, 0.0, 0.0, GuardState())
    assert decision.replicas[0] > 10 and decision.replicas[1] == 10


def test_a_policy_that_raises_or_returns_garbage_is_replaced_by_the_fallback():
    sc = tiny_scenario()

    class Broken(ProposalPolicy):
        def act(self, metrics):
            return Action(np.array([1.5, 2.5]), np.array([0]))

    decision = Decider(sc, Broken(), GuardConfig.from_scenario(sc)).decide(healthy_metrics([5, 5]), 0.0, 0.0, GuardState())
    assert decision.fallback_reason == POLICY_ERROR and decision.replicas is not None


def test_a_policy_trained_for_other_services_falls_back_to_hpa_on_every_decision(tmp_path):
    from helpers import export_random_policy

    policy = PPOPolicy(load_exported(export_random_policy(tmp_path / "other", "web-diurnal")))
    sc = tiny_scenario()
    decider = Decider(sc, policy, GuardConfig.from_scenario(sc))
    decision = decider.decide(healthy_metrics([5, 5]), 0.0, 0.0, GuardState())
    assert decision.fallback_reason == MODEL_MISMATCH and "api" in decision.fallback_detail
    assert decision.acted_by == "fallback:hpa"


def test_the_exported_policy_decides_through_the_training_observation_builder(exported_policy):
    sc = load_scenario("web-diurnal")
    policy = PPOPolicy(load_exported(exported_policy))
    reference = PPOPolicy(load_exported(exported_policy))
    decider = Decider(sc, policy, GuardConfig.from_scenario(sc))
    reference.reset(1)
    state = GuardState()
    for t, load in enumerate([300.0, 600.0, 900.0]):
        m = healthy_metrics([20], utilisation=0.6, time_s=60.0 * t)
        m = replace(m, arrivals_rps=np.array([[load]]), nodes_ready=np.array([[5.0]]))
        decision = decider.decide(m, 0.0, 60.0 * t, state)
        assert decision.fallback_reason is None
        assert decision.raw_replicas.tolist() == reference.act(m).replicas[0].tolist()


# --------------------------------------------------------------------------- degraded metrics: HPA on utilisation


def test_a_sample_whose_only_unknown_readings_are_latencies_is_degraded_and_no_service_is_held():
    config = GuardConfig.from_scenario(tiny_scenario())
    for metrics in (replace(healthy_metrics([5, 5]), latency_p95_s=np.full((1, 2), np.nan)),
                    replace(healthy_metrics([5, 5]), latency_p95_s=None)):
        result = assess(metrics, 0.0, config)
        assert result.reason == METRICS_DEGRADED and "latency_p95_s" in result.detail
        assert result.bad_services is None or not result.bad_services.any()


def test_a_sample_the_backend_marks_degraded_is_degraded_even_when_every_reading_is_valid():
    config = GuardConfig.from_scenario(tiny_scenario())
    assert assess(healthy_metrics([5, 5]), 0.0, config).reason is None
    result = assess(healthy_metrics([5, 5]), 0.0, config, degraded=True)
    assert result.reason == METRICS_DEGRADED and "degraded" in result.detail


def test_stale_or_invalid_non_latency_readings_take_precedence_over_degraded():
    config = GuardConfig.from_scenario(tiny_scenario(step_s=20.0))
    unknown_latency = replace(healthy_metrics([5, 5]), latency_p95_s=np.full((1, 2), np.nan))
    assert assess(unknown_latency, 41.0, config, degraded=True).reason == METRICS_STALE
    both = replace(unknown_latency, utilisation=np.array([[0.5, np.nan]]))
    result = assess(both, 0.0, config, degraded=True)
    assert result.reason == METRICS_INVALID and result.bad_services.tolist() == [False, True]


def test_on_degraded_metrics_the_fallback_is_a_fresh_hpa_acting_on_utilisation_alone():
    sc = tiny_scenario()
    config = GuardConfig.from_scenario(sc, max_step_change=50)
    for utilisation in (0.95, 0.2):
        metrics = replace(healthy_metrics([10, 10], utilisation=utilisation), latency_p95_s=np.full((1, 2), np.nan))
        decision = Decider(sc, ProposalPolicy(), config).decide(metrics, 0.0, 0.0, GuardState(), degraded=True)
        hpa = HPAPolicy(sc)
        expected = hpa.act(replace(metrics, latency_p95_s=np.full((1, 2), 0.1))).replicas[0].tolist()
        assert decision.fallback_reason == METRICS_DEGRADED and decision.acted_by == "fallback:hpa"
        assert decision.replicas.tolist() == expected and expected != [10, 10], "HPA moved both services"
        assert decision.audit()["fallback"]["reason"] == METRICS_DEGRADED and decision.audit()["inputs"]["degraded"] is True


def test_on_degraded_metrics_a_service_with_unknown_utilisation_is_still_held():
    sc = tiny_scenario()
    metrics = replace(healthy_metrics([10, 10], utilisation=0.95), latency_p95_s=np.full((1, 2), np.nan))
    metrics.utilisation[0, 1] = np.nan
    decision = Decider(sc, ProposalPolicy(), GuardConfig.from_scenario(sc, max_step_change=50)).decide(
        metrics, 0.0, 0.0, GuardState(), degraded=True)
    assert decision.fallback_reason == METRICS_INVALID
    assert decision.replicas[0] > 10 and decision.replicas[1] == 10


def test_the_decider_falls_back_to_the_hpa_it_is_given():
    sc = tiny_scenario()
    given = ProposalPolicy()
    given.replicas = np.array([12, 12])
    decider = Decider(sc, ProposalPolicy(), GuardConfig.from_scenario(sc), fallback=given)
    decision = decider.decide(healthy_metrics([10, 10]), 0.0, 0.0, GuardState(), degraded=True)
    assert decision.raw_replicas.tolist() == [12, 12] and decision.replicas.tolist() == [12, 12]


class DegradedCluster:
    """A cluster whose metrics store is down: every sample comes from the load balancer, without latency."""

    def __init__(self, utilisation: float) -> None:
        self.replicas = np.array([10, 10], dtype=np.int64)
        self.utilisation = utilisation
        self.t = 0.0

    def services(self) -> list[str]:
        return ["web", "worker"]

    def now(self) -> float:
        return self.t

    def read_metrics(self) -> MetricsSample:
        m = replace(healthy_metrics(self.replicas, utilisation=self.utilisation, time_s=self.t), latency_p95_s=np.full((1, 2), np.nan))
        return MetricsSample(m, self.t, source="haproxy-stats", degraded=True)

    def apply(self, action: Action) -> None:
        self.replicas = action.replicas[0].copy()
        self.t += 20.0

    def close(self) -> None:
        pass


def test_the_loop_keeps_scaling_on_degraded_metrics_and_logs_and_counts_metrics_degraded(tmp_path):
    sc = tiny_scenario()
    config = GuardConfig.from_scenario(sc)
    cluster = DegradedCluster(utilisation=0.95)
    telemetry = Telemetry(config.services, "proposal", "test", dry_run=False)
    audit = AuditLog(tmp_path / "audit.jsonl")
    loop = ControlLoop(cluster, Decider(sc, ProposalPolicy(), config), audit, telemetry, interval_s=20.0, steps=3)
    for _ in range(3):
        loop.step()
    audit.close()
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [line["fallback"]["reason"] for line in lines] == [METRICS_DEGRADED] * 3
    assert all(line["inputs"]["metrics_source"] == "haproxy-stats" and line["inputs"]["degraded"] for line in lines)
    assert all(line["inputs"]["metrics"]["latency_p95_s"] == [None, None] for line in lines)
    assert cluster.replicas.tolist() == [19, 19], "10 -> 13 -> 16 -> 19: up by max_step each decision"
    assert telemetry.fallbacks.labels("loop", METRICS_DEGRADED)._value.get() == 3
    assert b'rlscale_fallbacks_total{reason="metrics_degraded",source="loop"} 3.0' in telemetry.exposition()


# --------------------------------------------------------------------------- the loop under arbitrary metric streams

FAULTS = ("ok", "ok", "ok", "none", "missing", "nan", "negative", "huge", "stale", "future")
EXPECTED = {
    "ok": None, "none": METRICS_MISSING, "missing": METRICS_MISSING, "nan": METRICS_INVALID, "negative": METRICS_INVALID,
    "huge": METRICS_INVALID, "stale": METRICS_STALE, "future": METRICS_STALE,
}


def expected_reason(event: dict) -> str | None:
    """A missing or NaN latency is "not measured" (degraded, HPA acts); anything else as in EXPECTED."""
    if event["fault"] in ("missing", "nan") and event["field"] == "latency_p95_s":
        return METRICS_DEGRADED
    return EXPECTED[event["fault"]]


class ScriptedCluster:
    """A cluster that really holds the replicas it is given and reports them through a scripted, faulty metrics feed."""

    def __init__(self, script: list[dict], policy: ProposalPolicy, interval_s: float) -> None:
        self.script, self.policy, self.interval = script, policy, interval_s
        self.replicas = np.array([10, 10], dtype=np.int64)
        self.t = 0.0
        self.index = 0
        self.applied: list[tuple[float, np.ndarray, np.ndarray]] = []

    def services(self) -> list[str]:
        return ["web", "worker"]

    def now(self) -> float:
        return self.t

    def read_metrics(self) -> MetricsSample | None:
        event = self.script[self.index]
        self.policy.replicas = np.array(event["proposal"], dtype=np.int64)
        self.policy.rebalance = event["rebalance"]
        if event["fault"] == "none":
            return None
        m = healthy_metrics(self.replicas, utilisation=event["utilisation"], rebalancing=float(event["rebalancing"]), time_s=self.t)
        age = 0.0
        name = event["field"]
        value = getattr(m, name)
        if event["fault"] == "missing":
            m = replace(m, **{name: None})
        elif event["fault"] in ("nan", "negative", "huge"):
            value = value.copy()
            value.flat[0] = {"nan": np.nan, "negative": -1.0, "huge": 1e30}[event["fault"]]
            m = replace(m, **{name: value})
        elif event["fault"] == "stale":
            age = event["age_intervals"] * self.interval
        elif event["fault"] == "future":
            age = -self.interval
        return MetricsSample(m, self.t - age)

    def _advance(self) -> None:
        self.index += 1
        self.t += self.interval

    def apply(self, action: Action) -> None:
        self.applied.append((self.t, self.replicas.copy(), action.replicas[0].copy()))
        self.replicas = action.replicas[0].copy()
        self._advance()

    def hold(self) -> None:
        self._advance()

    def close(self) -> None:
        pass


event_strategy = st.fixed_dictionaries({
    "fault": st.sampled_from(FAULTS),
    "field": st.sampled_from(METRIC_FIELDS),
    "utilisation": st.floats(0.0, 2.0),
    "proposal": st.lists(st.integers(-20, 80), min_size=2, max_size=2),
    "rebalance": st.integers(-1, 4),
    "rebalancing": st.booleans(),
    "age_intervals": st.floats(2.01, 50.0),
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=st.lists(event_strategy, min_size=1, max_size=30), cooldown=st.sampled_from([0.0, 40.0]))
def test_under_any_metric_stream_applied_actions_respect_bounds_and_rate_limits_and_every_fallback_is_logged(script, cooldown):
    sc = tiny_scenario(step_s=20.0, max_step=3)
    config = GuardConfig.from_scenario(sc, max_step_change=3, max_change_per_minute=5, scale_down_cooldown_s=cooldown)
    policy = ProposalPolicy()
    cluster = ScriptedCluster(script, policy, 20.0)
    assert isinstance(cluster, Cluster)
    telemetry = Telemetry(config.services, "proposal", "test", dry_run=False)
    with tempfile.TemporaryDirectory() as tmp:
        audit = AuditLog(Path(tmp) / "audit.jsonl")
        loop = ControlLoop(cluster, Decider(sc, policy, config), audit, telemetry, interval_s=20.0, steps=len(script))
        for _ in script:
            loop.step()
        audit.close()
        lines = [json.loads(line) for line in (Path(tmp) / "audit.jsonl").read_text().splitlines()]

    assert len(lines) == len(script)
    for event, line in zip(script, lines):
        expected = expected_reason(event)
        if expected is None:
            assert line["fallback"] is None and line["acted_by"] == "policy"
        else:
            assert line["fallback"]["reason"] == expected and line["fallback"]["detail"]
            assert line["acted_by"] in ("fallback:hpa", "none")
        assert line["reason"] and line["latency_s"] >= 0
    logged = sum(1 for line in lines if line["fallback"])
    counted = sum(telemetry.fallbacks.labels("loop", r)._value.get() for r in FALLBACK_REASONS)
    assert counted == logged

    last_up = -np.inf * np.ones(2)
    for t, before, after in cluster.applied:
        assert ((after >= 2) & (after <= 30)).all()
        assert (np.abs(after - before) <= 3).all()
        window = [np.abs(a - b) for s, b, a in cluster.applied if t - 60.0 < s <= t]
        assert (np.sum(window, axis=0) <= 5).all()
        if cooldown:
            assert not ((after < before) & (t - last_up < cooldown)).any()
        last_up = np.where(after > before, t, last_up)


@settings(max_examples=400, deadline=None)
@given(
    lo=st.integers(0, 20), span=st.integers(0, 40), current=st.integers(0, 120), proposal=st.integers(-10_000, 10_000),
    step=st.integers(0, 12), per_minute=st.integers(0, 30), spent=st.integers(0, 40), cooling=st.booleans(),
)
def test_from_any_start_in_at_or_beyond_the_bounds_any_proposal_moves_by_at_most_the_limits_towards_the_clamped_proposal(
    lo, span, current, proposal, step, per_minute, spent, cooling
):
    """The guard rails as a pure function, from anywhere: below min, at min, inside, at max, far above max."""
    hi = lo + span
    sc = tiny_scenario()
    config = replace(GuardConfig.from_scenario(sc, max_step_change=step, max_change_per_minute=per_minute,
                                               scale_down_cooldown_s=30.0),
                     min_replicas=np.array([lo, lo]), max_replicas=np.array([hi, hi]))
    now = 100.0
    state = GuardState(last_replicas=np.array([current, current]), changes=[(now - 10.0, np.array([spent, 0]))],
                       last_scale_up_s=np.array([now - 10.0 if cooling else -np.inf] * 2))
    cur = np.array([current, current])
    final = apply_guards(np.array([proposal, proposal]), 0, cur, 0.0, now, state, config)[0]
    target = min(max(proposal, lo), hi)
    for s, budget in enumerate((max(per_minute - spent, 0), per_minute)):
        limit = min(step, budget)
        f = int(final[s])
        assert abs(f - current) <= limit, "never more than the step and per-minute limits"
        assert min(current, target) <= f <= max(current, target), "always towards the clamped proposal, never past it"
        if cooling and target < current:
            assert f == current, "no scale-down during the cooldown after a scale-up"
            continue
        assert f == (target if abs(target - current) <= limit else current + limit * np.sign(target - current))
        if lo <= current <= hi:
            assert lo <= f <= hi, "from inside the bounds, never outside"
        if current >= hi and proposal >= hi:
            assert f == (hi if current - limit <= hi else current - limit), "at or above max, a large proposal goes no higher"
        if current <= lo and proposal <= lo:
            assert f == (lo if current + limit >= lo else current + limit), "at or below min, a small proposal goes no lower"
