"""The oracle: the cheapest plan in its planning model, no SLO violation it could avoid, and a proven cost floor.

The end-to-end tests run every shipped scenario on the held-out seeds the
reports use, against every baseline (and the shipped policy, when there is
one): the oracle meets the SLO wherever its plan can, no policy is both
cheaper and no worse on the SLO, and no policy that meets the SLO pays less
than the floor.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlscale.config import ConfigError, Scenario, load_scenario, scenario_names
from rlscale.episode import ClusterEpisodes
from rlscale.evaluation.evaluate import BASELINES, shipped_model
from rlscale.policies import make_policy
from rlscale.policies.oracle import (
    OraclePolicy,
    cost_floor,
    lead_steps,
    plan_desired,
    plan_speed,
    required_replicas,
)
from rlscale.rollout import run_policy
from rlscale.sim import Simulator
from rlscale.sim import kernel as K
from rlscale.spaces import Action

SEEDS = list(range(10_000, 10_010))


def one_service(**overrides: object) -> Scenario:
    """One online service of 20 req/s replicas (1 vCPU, 0.05 s) on 4-vCPU nodes."""
    data: dict = {
        "name": "one",
        "pools": [{"name": "pool", "vcpu": 4, "memory_gib": 16, "price_per_hour": 0.2, "max_nodes": 40,
                   "provision_delay_s": 90, "min_nodes": 1}],
        "services": [{
            "name": "api", "work_s": 0.05, "replica": {"cpu": 1, "memory_gib": 2}, "cold_start_s": 30,
            "min_replicas": 2, "max_replicas": 120, "slo": {"p95_latency_s": 0.25}, "pools": ["pool"],
            "workload": {"peak_rps": 800, "noise": 0.05},
        }],
        "reward": {"cost_scale": 0.05},
    }
    data.update(overrides)
    return Scenario.model_validate(data)


def episodes(scenario: Scenario, seeds: list[int], steps: int | None = None) -> ClusterEpisodes:
    engine = ClusterEpisodes(scenario, len(seeds), episode_steps=steps)
    for i, seed in enumerate(seeds):
        engine.seed(i, seed)
        engine.reset(i)
    return engine


# --------------------------------------------------------------------------- the planning model


def test_need_is_the_fewest_replicas_whose_p95_meets_the_slo_in_the_planning_model() -> None:
    sc = one_service()
    arrivals = np.linspace(0.0, 1500.0, 61)[None, :, None]
    need, capped = required_replicas(sc, arrivals)
    v = plan_speed(sc)[0]
    assert not capped.any()
    for lam, r in zip(arrivals[0, :, 0], need[0, :, 0]):
        def p95(n: int) -> float:
            cap = n * v / 0.05
            return K._queue_p95(lam / cap, n, cap, 0.05 / v, 1.0) if lam > 0 else 0.0
        assert r >= 2 and p95(r) <= 0.25
        if r > 2:
            assert p95(r - 1) > 0.25


def test_need_grows_with_the_load() -> None:
    arrivals = np.sort(np.random.default_rng(0).uniform(0, 2000, 200))[None, :, None]
    need, _ = required_replicas(one_service(), arrivals)
    assert (np.diff(need[0, :, 0]) >= 0).all()


def test_load_beyond_max_replicas_is_marked_capped_and_planned_at_the_maximum() -> None:
    arrivals = np.array([100.0, 5000.0, 100.0])[None, :, None]
    need, capped = required_replicas(one_service(), arrivals)
    assert capped[0, 1, 0] and need[0, 1, 0] == 120
    assert not capped[0, 0, 0]


def test_a_batch_service_defers_work_within_its_backlog_age_limit() -> None:
    sc = one_service(services=[{
        "name": "jobs", "kind": "batch", "work_s": 1.0, "replica": {"cpu": 1, "memory_gib": 2}, "min_replicas": 0,
        "max_replicas": 100, "slo": {"max_backlog_age_s": 600}, "pools": ["pool"], "workload": {"peak_rps": 5},
    }])
    burst = np.zeros(60)
    burst[5:10] = 20.0  # 100 s of work per second for five minutes
    need, capped = required_replicas(sc, burst[None, :, None])
    assert not capped.any()
    assert need.max() < 20  # fewer replicas than serving the burst as it arrives
    served = need[0, :, 0].sum() * 60.0 * plan_speed(sc)[0]
    assert served >= burst.sum() * 60.0 - 600.0 * need[0, -1, 0]  # all work served but what may still age


@given(need=st.lists(st.integers(0, 50), min_size=1, max_size=40), lead=st.integers(0, 5))
def test_the_plan_is_the_pointwise_least_that_asks_for_every_replica_lead_steps_ahead(need: list[int], lead: int) -> None:
    n = np.array(need, dtype=np.int64)[None, :, None]
    plan = plan_desired(n, np.array([lead]))[0, :, 0]
    T = len(need)
    for t in range(T):
        window = n[0, t : min(T, t + lead + 1), 0]
        assert plan[t] == window.max()  # feasible: covers every need within the lead, and nothing more


@pytest.mark.parametrize("delay_s, cold_s", [(90.0, 30.0), (180.0, 20.0), (0.0, 0.0), (300.0, 120.0)])
def test_a_replica_asked_for_lead_steps_ahead_is_ready_for_the_whole_interval_even_on_a_new_node(delay_s: float, cold_s: float) -> None:
    sc = one_service(pools=[{"name": "pool", "vcpu": 1, "memory_gib": 16, "price_per_hour": 0.2, "max_nodes": 10,
                             "provision_delay_s": delay_s, "min_nodes": 0}])
    sc = sc.model_copy(update={"services": [sc.services[0].model_copy(update={"cold_start_s": cold_s, "min_replicas": 1})]})
    L = int(lead_steps(sc)[0])
    sim = Simulator(sc, 1)
    sim.reset(0, 1, np.array([1]))
    action = Action(np.array([[2]]), np.zeros(1, dtype=np.int64))
    ready = []
    for _ in range(L + 1):
        ready.append(sim.step(action, np.array([[1.0]])).ready[0, 0])
    assert ready[max(L - 1, 0)] == 2  # ready by the end of interval t+L-1, so for all of t+L
    if L >= 2:
        assert ready[L - 2] == 1  # and L is the least such lead


# --------------------------------------------------------------------------- the policy


def test_the_oracle_refuses_to_act_without_the_episode_in_advance() -> None:
    sc = one_service()
    oracle = make_policy("oracle", sc)
    engine = episodes(sc, [1])
    with pytest.raises(ConfigError, match="runs only in simulation"):
        oracle.act(engine.metrics())


def test_acting_from_the_plan_reproduces_the_replay_the_repair_checked() -> None:
    sc = load_scenario("web-diurnal")
    oracle = OraclePolicy(sc)
    rollout = run_policy(sc, oracle, SEEDS[:3], steps=300, record=True)
    violated = (rollout.series["latency_p95_s"] > rollout.series["slo_s"] * (1 + 1e-12)).sum(axis=0)
    assert (violated <= oracle.unresolved).all()
    assert oracle.replicas is not None and oracle.replicas.shape == (3, 300, 1)


def test_the_oracle_consolidates_after_scale_downs() -> None:
    sc = load_scenario("web-diurnal")
    oracle = OraclePolicy(sc)
    rollout = run_policy(sc, oracle, SEEDS[:2], record=True)
    assert (rollout.episodes["rebalances"] > 0).all()
    # after the evening ramp-down its nodes follow its replicas (4 per node) instead of staying at the peak's
    end = slice(-120, None)
    assert (rollout.series["nodes"][end] <= np.ceil(rollout.series["replicas"][end] / 4) + 2).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", scenario_names())
def test_for_every_scenario_and_seed_the_oracle_meets_the_slo_and_nothing_is_cheaper_without_violating_more(name: str) -> None:
    sc = load_scenario(name)
    oracle = OraclePolicy(sc)
    ours = run_policy(sc, oracle, SEEDS, record=True)
    over = ours.series["latency_p95_s"] > ours.series["slo_s"] * (1 + 1e-12)  # [T, n]
    capped = oracle.capped.any(axis=2).T
    assert not (over & ~capped).any(), f"{name}: the oracle violates the SLO where its plan could meet it"
    assert (ours.episodes["dropped_fraction"][~capped.any(axis=0)] == 0).all()
    others = [*BASELINES, *([shipped_model(name)] if shipped_model(name) else [])]
    floor = cost_floor(sc, episodes(sc, SEEDS).arrivals[:, : sc.episode_steps], episodes(sc, SEEDS).sim.key)
    clean = (ours.episodes["slo_violation_rate"] == 0) & (ours.episodes["dropped_fraction"] == 0)
    assert (floor[clean] <= ours.episodes["cost_usd"][clean] + 1e-9).all()
    # One service on one pool: the oracle's plan is exact, so nothing beats it without violating more. With
    # several services or pools it does not steer placement (see oracle.py), and the proven floor is the bound.
    exact = len(sc.services) == 1 and len(sc.pools) == 1
    for spec in others:
        theirs = run_policy(sc, make_policy(spec, sc), SEEDS).episodes
        cheaper = theirs["cost_usd"] < ours.episodes["cost_usd"] - 1e-9
        worse = theirs["slo_violation_rate"] > ours.episodes["slo_violation_rate"]
        if exact:
            assert not (cheaper & ~worse).any(), f"{name}: {spec} is cheaper than the oracle without violating the SLO more"
        met = (theirs["slo_violation_rate"] == 0) & (theirs["dropped_fraction"] == 0)
        assert (floor[met] <= theirs["cost_usd"][met] + 1e-9).all(), f"{name}: {spec} met the SLO below the floor"


# --------------------------------------------------------------------------- the floor


@st.composite
def small_scenarios(draw: st.DrawFn) -> Scenario:
    """1-2 pools (spot, slow or GPU ones too), 1-2 online or batch services, with noisy drift and contention."""
    pools = []
    for i in range(draw(st.integers(1, 2))):
        pools.append({
            "name": f"p{i}", "vcpu": draw(st.sampled_from([2.0, 4.0, 8.0])), "memory_gib": 32.0,
            "gpus": draw(st.sampled_from([0, 0, 2])), "price_per_hour": draw(st.sampled_from([0.1, 0.4])),
            "provision_delay_s": draw(st.sampled_from([0.0, 60.0, 120.0])), "min_nodes": draw(st.integers(0, 1)),
            "max_nodes": 24, "speed": draw(st.sampled_from([0.7, 1.0, 1.3])),
            "spot_interruptions_per_hour": draw(st.sampled_from([0.0, 0.0, 0.5])),
            "idle_release_s": draw(st.sampled_from([0.0, 120.0])),
        })
    services = []
    for j in range(draw(st.integers(1, 2))):
        kind = draw(st.sampled_from(["online", "online", "batch"]))
        services.append({
            "name": f"s{j}", "kind": kind, "work_s": draw(st.sampled_from([0.02, 0.1, 1.0])),
            "replica": {"cpu": draw(st.sampled_from([0.5, 1.0, 2.0])), "memory_gib": 1.0},
            "cold_start_s": draw(st.sampled_from([0.0, 30.0])), "min_replicas": 1, "max_replicas": 40,
            "slo": {"p95_latency_s": 0.5} if kind == "online" else {"max_backlog_age_s": 300.0},
            "pools": [p["name"] for p in pools], "queue_limit": 1e7,
            "workload": {"peak_rps": draw(st.sampled_from([2.0, 20.0, 60.0])), "noise": 0.1},
        })
    return Scenario.model_validate({
        "name": "small", "episode_steps": 60, "pools": pools, "services": services, "reward": {"cost_scale": 1.0},
        "imbalance": {"drift_sigma": draw(st.sampled_from([0.0, 0.05])), "drift_reversion": 0.05,
                      "contention": draw(st.sampled_from([0.0, 0.3]))},
    })


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=small_scenarios(), seed=st.integers(0, 10_000))
def test_no_run_that_meets_the_slo_without_drops_costs_less_than_the_floor(sc: Scenario, seed: int) -> None:
    seeds = [seed, seed + 1]
    engine = episodes(sc, seeds)
    floor = cost_floor(sc, engine.arrivals[:, : sc.episode_steps], engine.sim.key)
    assert (floor > 0).all() or all(p.price_per_hour == 0 for p in sc.pools)
    for spec in ("oracle", "static", "hpa", "predictive"):
        r = run_policy(sc, make_policy(spec, sc), seeds).episodes
        met = (r["slo_violation_rate"] == 0) & (r["dropped_fraction"] == 0)
        assert (floor[met] <= r["cost_usd"][met] + 1e-9).all(), spec
