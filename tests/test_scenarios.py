"""Every shipped scenario is calibrated so the HPA baseline is sound but not free.

The HPA must keep the SLO most of the time and drop next to nothing, or beating
it proves nothing; it must also leave paid capacity idle, and buying for the
peak must cost more, or there is nothing for a learned policy to win. These
tests run real full-day episodes (two seeds) of every ``envs/*.yaml``, so a
scenario edit or a simulator change that breaks the calibration fails here.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from rlscale.config import load_scenario, scenario_names
from rlscale.policies import make_policy
from rlscale.rollout import Rollout, run_policy

SEEDS = [0, 1]
SCENARIOS = scenario_names()


@functools.lru_cache(maxsize=None)
def rollout(name: str, policy: str) -> Rollout:
    sc = load_scenario(name)
    return run_policy(sc, make_policy(policy, sc), SEEDS)


def test_the_four_documented_scenarios_ship():
    assert {"web-diurnal", "flash-crowd", "mixed-pools", "ml-platform"} <= set(SCENARIOS)


@pytest.mark.parametrize("name", SCENARIOS)
def test_hpa_keeps_the_slo_most_of_the_time(name):
    assert rollout(name, "hpa").episodes["slo_violation_rate"].max() < 0.1


@pytest.mark.parametrize("name", SCENARIOS)
def test_hpa_drops_almost_no_requests(name):
    assert rollout(name, "hpa").episodes["dropped_fraction"].max() < 0.01


@pytest.mark.parametrize("name", SCENARIOS)
def test_hpa_leaves_paid_capacity_idle(name):
    assert rollout(name, "hpa").episodes["utilisation"].max() < 0.85


@pytest.mark.parametrize("name", SCENARIOS)
def test_static_provisioning_for_the_peak_costs_more_than_hpa(name):
    static, hpa = rollout(name, "static").episodes["cost_usd"], rollout(name, "hpa").episodes["cost_usd"]
    assert np.all(static > hpa)


@pytest.mark.parametrize("name", SCENARIOS)
def test_cost_scale_makes_the_hpa_cost_term_of_order_one(name):
    sc = load_scenario(name)
    per_step = rollout(name, "hpa").episodes["cost_usd"].mean() / sc.episode_steps
    assert 1 / 3 < per_step / sc.reward.cost_scale < 3
