"""The HPA every "cost vs HPA" is measured against, pinned through ``HPAPolicy.act`` with its served defaults.

The numbers are the Kubernetes documentation's (Horizontal Pod Autoscaling,
"Algorithm details" and "Default Behavior"): a usage ratio within 0.1 of 1.0
does nothing (1.09 holds, 1.11 acts); scale-down is stabilised over 300 s;
scale-up may add max(100%, 4 pods) every 15 s; scale-down may remove 100%
every 15 s. Each test builds the policy the way every command does (no
arguments: ``make_policy("hpa")``, the decider's fallback, ``scaled_policy``
at 60 s), so changing a default breaks a test here, not only a number in a
report.
"""

from __future__ import annotations

import numpy as np
import pytest

from rlscale.clusters.local.baselines import scaled_policy
from rlscale.config import Scenario, load_scenario
from rlscale.controller import Decider, GuardConfig
from rlscale.policies import HPAPolicy, make_policy
from rlscale.spaces import Metrics

TARGET = 0.7  # rlscale's HPA target utilisation (Kubernetes has no default target; 70% CPU is the common choice)


def metrics(replicas: int, ratio: float, scenario: Scenario) -> Metrics:
    """``replicas`` ready pods at ``ratio`` times the target utilisation."""
    S, P = len(scenario.services), len(scenario.pools)
    r = np.full((1, S), float(replicas))
    return Metrics(
        time_s=np.zeros(1), arrivals_rps=r * 10, ready=r.copy(), desired=r.copy(), utilisation=np.full((1, S), TARGET * ratio),
        latency_p95_s=np.full((1, S), 0.1), backlog=np.zeros((1, S)), dropped=np.zeros((1, S)), nodes_ready=np.full((1, P), 8.0),
        nodes_provisioning=np.zeros((1, P)), packing=np.full((1, P), 0.9), cost_rate_usd_h=np.ones(1), hot_spot=np.zeros(1),
        rebalancing=np.zeros(1),
    )


def served_hpas(scenario: Scenario) -> dict[str, HPAPolicy]:
    """The HPA as simulate/evaluate, the controller's fallback and the local cluster (at 60 s) build it."""
    decider = Decider(scenario, HPAPolicy(scenario), GuardConfig.from_scenario(scenario))
    return {"make_policy": make_policy("hpa", scenario), "decider_fallback": decider.fallback,
            "scaled_at_60s": scaled_policy("hpa", scenario)}


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return load_scenario("web-diurnal")


@pytest.mark.parametrize("ratio, expected", [(1.09, 20), (0.91, 20), (1.11, 23), (0.89, 18)])
def test_a_usage_ratio_within_0_1_of_1_holds_and_one_beyond_acts(scenario, ratio, expected):
    for name, hpa in served_hpas(scenario).items():
        hpa.reset(1)
        got = int(hpa.act(metrics(20, ratio, scenario)).replicas[0, 0])
        assert got == expected, f"{name}: ratio {ratio} on 20 replicas gave {got}"


def test_scale_down_waits_for_the_300_s_stabilisation_window(scenario):
    for name, hpa in served_hpas(scenario).items():
        hpa.reset(1)
        assert hpa.act(metrics(20, 1.5, scenario)).replicas[0, 0] == 30  # ceil(1.5 * 20), recorded in the window
        held = [int(hpa.act(metrics(30, 0.5, scenario)).replicas[0, 0]) for _ in range(4)]  # 60..240 s later
        assert held == [30, 30, 30, 30], name
        assert hpa.act(metrics(30, 0.5, scenario)).replicas[0, 0] == 15, name  # 300 s: the high recommendation has aged out


def test_one_60_s_decision_scales_up_at_most_max_100_percent_or_4_pods_per_15_s(scenario):
    for name, hpa in served_hpas(scenario).items():
        hpa.reset(1)
        # 2 pods at 30x the target want 60; four 15 s syncs allow 2 -> 6 -> 12 -> 24 -> 48 (max(+100%, +4 pods) each)
        assert hpa.act(metrics(2, 30.0, scenario)).replicas[0, 0] == 48, name
        hpa.reset(1)
        # 5 pods at 100x want 500 (max 120): +100% beats +4 at every sync, 5 -> 10 -> 20 -> 40 -> 80
        assert hpa.act(metrics(5, 100.0, scenario)).replicas[0, 0] == 80, name


def test_the_defaults_are_the_documented_ones(scenario):
    hpa = HPAPolicy(scenario)
    assert (hpa.target, hpa.tolerance) == (TARGET, 0.1)
    assert hpa.syncs == 4 and hpa._k_down == 4 and hpa._k_up == 0
    assert [(p.kind, p.value, p.period_s) for p in hpa.scale_up.policies] == [("Percent", 100, 15.0), ("Pods", 4, 15.0)]
    assert [(p.kind, p.value, p.period_s) for p in hpa.scale_down.policies] == [("Percent", 100, 15.0)]
    assert hpa.scale_up.select == hpa.scale_down.select == "Max"
