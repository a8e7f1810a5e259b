"""The generalist's base level, calibrated on each service's own history (DESIGN.md section 15)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rlscale.atomic import write_text
from rlscale.config import ConfigError, load_scenario
from rlscale.policies import make_policy
from rlscale.policies import calibration as cal
from rlscale.policies.card import dumps, seal
from rlscale.rollout import calibrate, run_policy

ROOT = Path(__file__).resolve().parents[1]


def test_replay_episodes_are_the_last_whole_stretches_newest_last():
    past = np.arange(10.0)[:, None]
    got = cal.replay_episodes(past, steps=3, max_episodes=5)
    # 10 samples make 3 whole stretches from the end: [1..3], [4..6], [7..9], each with the next sample appended
    assert got.shape == (3, 4, 1)
    assert got[:, :, 0].tolist() == [[1, 2, 3, 4], [4, 5, 6, 7], [7, 8, 9, 9]]
    assert cal.replay_episodes(past, steps=3, max_episodes=2)[:, 0, 0].tolist() == [4, 7]
    assert cal.replay_episodes(past, steps=11, max_episodes=5).shape == (0, 12, 1)


def test_replay_carries_gaps_forward_and_drops_a_stretch_that_is_mostly_gaps():
    past = np.array([[1.0, 10.0], [np.nan, 11.0], [3.0, 12.0], [np.nan, np.nan], [np.nan, 14.0], [np.nan, 15.0]])
    got = cal.replay_episodes(past, steps=3, max_episodes=5)
    # the newest stretch has one real sample of three in service 0: left out; the older one keeps its gap filled
    assert got.shape == (1, 4, 2)
    assert got[0, :, 0].tolist() == [1.0, 1.0, 3.0, 3.0]
    assert got[0, :, 1].tolist() == [10.0, 11.0, 12.0, 12.0]
    leading = np.array([[np.nan], [2.0], [3.0], [4.0]])
    assert cal.replay_episodes(leading, steps=4, max_episodes=1)[0, :, 0].tolist() == [2.0, 2.0, 3.0, 4.0, 4.0]
    assert cal.replay_episodes(np.full((6, 1), np.nan), steps=3, max_episodes=2).shape == (0, 4, 1)


def _metrics(cost, slo, drops):
    return {"cost_usd": np.asarray(cost, float), "slo_violation_rate": np.asarray(slo, float),
            "dropped_fraction": np.asarray(drops, float)}


def test_choose_takes_the_cheapest_level_within_hpas_bounds_per_cluster():
    owners = np.array([0, 0, 1, 1])
    hpa = _metrics([10, 10, 10, 10], [0.010, 0.010, 0.010, 0.010], [0.0, 0.0, 0.0, 0.0])
    runs = [
        _metrics([9, 9, 9, 9], [0.005, 0.005, 0.005, 0.005], [0, 0, 0, 0]),
        _metrics([8, 8, 8, 8], [0.010, 0.010, 0.011, 0.011], [0, 0, 0, 0]),  # cluster 0: HPA's rate; cluster 1: above
        _metrics([7, 7, 7, 7], [0.005, 0.005, 0.005, 0.005], [0.00002, 0.0, 0.0, 0.0]),  # cluster 0 drops some
    ]
    base = cal.choose((3, 4, 5), runs, hpa, owners, n=3, fallback=3)
    # the history gets no margin (within 1.1x HPA's is not enough); cluster 2 has no history: the uncalibrated level
    assert base.tolist() == [4, 5, 3]
    worse = [_metrics([9] * 4, [0.02] * 4, [0.0] * 4)]
    assert cal.choose((6,), worse, hpa, owners, n=2, fallback=3).tolist() == [3, 3]


def test_non_inferior_is_the_suites_margin():
    hpa = {"slo_violation_rate": 0.01, "dropped_fraction": 0.0}
    assert cal.non_inferior({"slo_violation_rate": 0.011, "dropped_fraction": 0.00005}, hpa)
    assert not cal.non_inferior({"slo_violation_rate": 0.0111, "dropped_fraction": 0.0}, hpa)
    assert not cal.non_inferior({"slo_violation_rate": 0.0, "dropped_fraction": 0.00006}, hpa)


def test_run_policy_replays_one_trace_per_seed():
    sc = load_scenario("web-diurnal")
    T = 30
    trace = np.stack([np.full((T + 1, 1), 50.0), np.full((T + 1, 1), 400.0)])
    r = run_policy(sc, make_policy("hpa", sc), [0, 1], steps=T, trace=trace, record=True)
    arrivals = r.series["arrivals_rps"]
    assert np.allclose(arrivals[:, 0], 50.0, rtol=0.2) and np.allclose(arrivals[:, 1], 400.0, rtol=0.2)


@pytest.fixture(scope="module")
def calibrating_model(tmp_path_factory) -> Path:
    """The shipped generalist with a calibration section in its (re-sealed) card."""
    out = tmp_path_factory.mktemp("model") / "general-cal"
    shutil.copytree(ROOT / "models" / "general", out)
    card = json.loads((out / "card.json").read_text())
    card["calibration"] = {"days": 2, "min_days": 1, "start_level": 3}
    write_text(out / "card.json", dumps(seal(card)))
    return out


def test_calibration_is_deterministic_and_picks_a_candidate(calibrating_model):
    sc = load_scenario("web-diurnal")
    got = []
    for _ in range(2):
        pol = make_policy(f"ppo:{calibrating_model}", sc)
        r = run_policy(sc, pol, [5000, 5001], steps=60)
        got.append((pol.base.tolist(), r.episodes["cost_usd"].tolist()))
    assert got[0] == got[1]
    assert set(got[0][0]) <= set(cal.CANDIDATES)


def test_without_a_day_of_history_the_policy_is_the_uncalibrated_one(calibrating_model):
    sc = load_scenario("web-diurnal")
    seeds = [5000, 5001]
    pol = make_policy(f"ppo:{calibrating_model}", sc)
    short = run_policy(sc, pol, seeds, steps=120, history_days=0.5)
    assert pol.base.tolist() == [0.65, 0.65]
    off = run_policy(sc, make_policy(f"ppo:{calibrating_model}:calibrate=0", sc), seeds, steps=120)
    shipped = run_policy(sc, make_policy(f"ppo:{ROOT / 'models' / 'general'}", sc), seeds, steps=120)
    for k, v in shipped.episodes.items():
        assert np.array_equal(short.episodes[k], v), k
        assert np.array_equal(off.episodes[k], v), k


def test_the_base_shifts_every_pick():
    """Under a base of 78% the start level (65%) means 78%: a fixed 65% at base 78% is a fixed 78%."""
    from rlscale.policies.general import FixedSetting

    sc = load_scenario("web-diurnal")
    section = {"days": 2, "min_days": 1, "start_level": 3}
    a = run_policy(sc, FixedSetting(sc, 3, calibration=section, base=0.78), [7, 8], steps=90).episodes
    b = run_policy(sc, FixedSetting(sc, 5), [7, 8], steps=90).episodes
    c = run_policy(sc, FixedSetting(sc, 3), [7, 8], steps=90).episodes
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert a["cost_usd"].sum() < c["cost_usd"].sum()


def test_calibrate_leaves_a_policy_without_calibration_alone():
    sc = load_scenario("web-diurnal")
    pol = make_policy("hpa", sc)
    calibrate(pol, sc)  # no calibration_request: nothing happens, nothing raised
    assert pol.name == "hpa"


def test_card_refuses_a_calibration_needing_more_days_than_it_replays(calibrating_model, tmp_path):
    from rlscale.policies.network import load_exported

    bad = tmp_path / "bad"
    shutil.copytree(calibrating_model, bad)
    card = json.loads((bad / "card.json").read_text())
    card["calibration"] = {"days": 1, "min_days": 2, "start_level": 3}
    write_text(bad / "card.json", dumps(seal(card)))
    with pytest.raises(ConfigError, match="min_days"):
        load_exported(str(bad))


def test_a_served_service_is_recalibrated_daily_once_it_has_the_days(calibrating_model):
    """``rlscale serve``'s daily recalibration: half a day at start is too little (min_days 1), so the policy
    stays uncalibrated; a day served later (one interval with its metrics missing) it calibrates, as a policy
    handed the same past at start would, and the HTTP API's policy follows."""
    from rlscale.controller.history import Recalibration
    from rlscale.policies.relative import LEVELS

    sc = load_scenario("web-diurnal")
    t = np.arange(int(1.5 * 1440)) * 60.0
    demand = (900.0 + 500.0 * np.sin(2 * np.pi * t / 86_400.0))[:, None]
    demand[1000] = np.nan
    pol, api = (make_policy(f"ppo:{calibrating_model}", sc) for _ in range(2))
    heard = []
    pol.load_history(0, demand[:720], t[719])
    recal = Recalibration(pol, sc, sc.step_s, also=(api,), on_change=heard.append)
    assert recal.calibrate() is None and pol.base.tolist() == [0.65]
    got = [recal.observe(row) for row in demand[720:]]
    assert got[:-1] == [None] * 1439 and got[-1] in LEVELS[3:] and heard == [got[-1]]
    assert api.base.tolist() == pol.base.tolist()
    fresh = make_policy(f"ppo:{calibrating_model}", sc)
    fresh.load_history(0, demand, t[-1])
    calibrate(fresh, sc)
    assert fresh.base.tolist() == pol.base.tolist()
