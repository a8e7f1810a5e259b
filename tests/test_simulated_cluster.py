"""The simulated backend: the evaluation engine behind the Cluster protocol, so serving reproduces run_policy."""

from __future__ import annotations

import time

import numpy as np
import pytest

from rlscale.clusters.base import Cluster
from rlscale.clusters.simulated import SimulatedCluster
from rlscale.config import MODELS_DIR, load_scenario
from rlscale.controller import ControlLoop, Decider, GuardConfig
from rlscale.policies import HPAPolicy
from rlscale.policies.ppo import PPOPolicy
from rlscale.policies.network import load_exported
from rlscale.rollout import run_policy
from rlscale.spaces import Action

STEPS = 120


@pytest.fixture(scope="module")
def scenario():
    return load_scenario("web-diurnal")


def serve_in_process(scenario, policy, seed, steps, **guards) -> SimulatedCluster:
    cluster = SimulatedCluster(scenario, seed=seed, steps=steps, speedup=1e9)
    loop = ControlLoop(cluster, Decider(scenario, policy, GuardConfig.from_scenario(scenario, **guards)), interval_s=scenario.step_s, speedup=1e9)
    loop.run()
    assert loop.completed and loop.decisions == steps and cluster.done
    return cluster


def test_the_simulated_cluster_implements_the_cluster_protocol(scenario):
    cluster = SimulatedCluster(scenario, seed=0, steps=5)
    assert isinstance(cluster, Cluster)
    assert cluster.services() == ["api"]
    sample = cluster.read_metrics()
    assert sample.observed_at == cluster.now() and sample.metrics.desired.shape == (1, 1)


def test_serving_a_ppo_policy_reproduces_run_policy_for_the_same_seed(scenario, exported_policy):
    served = serve_in_process(scenario, PPOPolicy(load_exported(exported_policy)), seed=3, steps=STEPS)
    expected = run_policy(scenario, PPOPolicy(load_exported(exported_policy)), [3], steps=STEPS).mean()
    assert served.totals() == expected


@pytest.mark.skipif(not (MODELS_DIR / "web-diurnal" / "policy.npz").is_file(), reason="no shipped model")
def test_serving_the_shipped_model_reproduces_run_policy_with_no_guard_rail_adjustment(scenario):
    exported = load_exported(MODELS_DIR / "web-diurnal")
    cluster = SimulatedCluster(scenario, seed=5, steps=STEPS, speedup=1e9)
    loop = ControlLoop(cluster, Decider(scenario, PPOPolicy(exported), GuardConfig.from_scenario(scenario)),
                       interval_s=scenario.step_s, speedup=1e9)
    loop.run()
    assert loop.adjustments == {} and loop.fallbacks == {}
    assert cluster.totals() == run_policy(scenario, PPOPolicy(exported), [5], steps=STEPS).mean()


def test_serving_hpa_with_guard_rails_wide_open_reproduces_run_policy(scenario):
    served = serve_in_process(scenario, HPAPolicy(scenario), seed=1, steps=STEPS, max_step_change=10_000, max_change_per_minute=10_000)
    assert served.totals() == run_policy(scenario, HPAPolicy(scenario), [1], steps=STEPS).mean()


def test_read_metrics_returns_copies_that_later_steps_do_not_change(scenario):
    cluster = SimulatedCluster(scenario, seed=0, steps=5)
    first = cluster.read_metrics()
    before = first.metrics.desired.copy(), first.metrics.time_s.copy()
    cluster.apply(Action(replicas=np.array([[40]]), rebalance=np.array([0])))
    assert first.metrics.desired.tolist() == before[0].tolist() and first.metrics.time_s.tolist() == before[1].tolist()
    assert cluster.now() == before[1][0] + scenario.step_s


def test_the_simulated_clock_advances_one_step_per_interval_and_the_episode_ends(scenario):
    cluster = SimulatedCluster(scenario, seed=0, steps=3)
    start = cluster.now()
    for _ in range(3):
        cluster.hold()
    assert cluster.now() == start + 3 * scenario.step_s and cluster.done
    with pytest.raises(RuntimeError):
        cluster.hold()


def test_dry_run_decides_and_logs_but_the_cluster_keeps_its_replicas(scenario, exported_policy):
    cluster = SimulatedCluster(scenario, seed=0, steps=30, speedup=1e9)
    initial = cluster.read_metrics().metrics.desired.copy()
    decider = Decider(scenario, PPOPolicy(load_exported(exported_policy)), GuardConfig.from_scenario(scenario))
    loop = ControlLoop(cluster, decider, interval_s=scenario.step_s, speedup=1e9, dry_run=True)
    decisions = [loop.step() for _ in range(30)]
    assert cluster.done and not any(d.applied for d in decisions)
    assert cluster.engine.sim.desired.tolist() == initial.astype(int).tolist()
    assert any(d.replicas.tolist() != initial[0].astype(int).tolist() for d in decisions), "the policy did want to act"


def test_the_loop_paces_intervals_at_interval_over_speedup_wall_seconds(scenario):
    cluster = SimulatedCluster(scenario, seed=0, steps=5, speedup=60.0 / 0.05)
    loop = ControlLoop(cluster, Decider(scenario, HPAPolicy(scenario), GuardConfig.from_scenario(scenario)),
                       interval_s=scenario.step_s, speedup=cluster.speedup)
    start = time.monotonic()
    loop.run()
    assert loop.decisions == 5 and time.monotonic() - start >= 4 * 0.05
