"""The policy's memory (DESIGN.md section 15): exact history features on hand-built series."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from rlscale.config import load_scenario
from rlscale.episode import ClusterEpisodes
from rlscale.policies import history as hist
from rlscale.policies.general import GeneralPolicy
from rlscale.policies.relative import LEVELS, RelativeDecoder, RelativeObservation, ServiceTraits
from rlscale.rollout import run_policy
from rlscale.spaces import Metrics

sys.path.insert(0, str(Path(__file__).resolve().parent))

DAY = 1440  # intervals of 60 s


def daily(days: float, phase: float = 0.0, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    t = np.arange(int(days * DAY)) + phase
    rng = np.random.default_rng(seed)
    return 100.0 * (1.5 + np.sin(2 * np.pi * t / DAY)) * np.exp(rng.normal(0.0, noise, t.size))


def history_of(series: np.ndarray, lead: float = 5.0, n_days: float = 7.0) -> hist.DemandHistory:
    h = hist.DemandHistory(1, 1, 60.0, np.array([lead]), days=n_days)
    h.load(0, series[:, None], end_s=60.0 * (series.size - 1))
    return h


def test_seasonal_features_read_the_same_time_yesterday_and_last_week_at_the_lead_time() -> None:
    y = daily(8)
    y[-7 * DAY + 4] = 999.0  # last week, exactly the lead time (5 intervals) after the row that is "now" - 1
    past, now = y[:-1], y[-1]
    h = history_of(past[-7 * DAY :])
    h.append(np.array([[now]]), np.array([60.0 * (y.size - 1)]))
    f = h.features(np.array([[now]]))[0, 0]
    scale = h.scale[0, 0]
    end = 7 * DAY  # the row just appended
    series = np.concatenate([past[-7 * DAY :], [now]])
    assert f[0] == 1.0
    assert f[2] == pytest.approx(np.log(series[end + 5 - DAY] + scale) - np.log(now + scale), abs=1e-12)
    assert f[3] == pytest.approx(np.log(series[end + 5 - 7 * DAY] + scale) - np.log(now + scale), abs=1e-12)
    assert series[end + 5 - 7 * DAY] == 999.0


def test_the_ridge_forecast_of_a_clean_daily_pattern_is_within_two_percent() -> None:
    y = daily(8)
    h = history_of(y[: 7 * DAY])
    for k in range(30):
        h.append(np.array([[y[7 * DAY + k]]]), np.array([60.0 * (7 * DAY + k)]))
        f = h.features(np.array([[y[7 * DAY + k]]]))[0, 0]
        truth = np.log(y[7 * DAY + k + 5] / y[7 * DAY + k])
        assert abs(f[4] - truth) < 0.02
    assert abs(f[5]) < 0.01 and f[7] < 0.05  # the measured errors are small too


def test_gaps_and_nan_in_history_are_skipped_not_read_as_zero_demand() -> None:
    y = daily(7)
    holed = y.copy()
    holed[3 * DAY : 3 * DAY + 240] = np.nan  # a four-hour outage of the metrics
    holed[5 * DAY :: 97] = np.nan  # and scattered missing scrapes
    a, b = history_of(y), history_of(holed)
    assert b.fitted[0, 0]
    assert b.days()[0, 0] == pytest.approx(np.isfinite(holed).sum() / DAY)
    fa, fb = a.features(np.array([[y[-1]]])), b.features(np.array([[y[-1]]]))
    assert np.isfinite(fb).all()
    assert abs(fa[0, 0, 4] - fb[0, 0, 4]) < 0.01


def test_a_restart_mid_history_keeps_the_days_before_and_after_it() -> None:
    y = daily(7)
    h = hist.DemandHistory(1, 1, 60.0, np.array([5.0]))
    h.load(0, np.concatenate([y[: 4 * DAY], np.full(DAY // 2, np.nan)])[:, None], end_s=60.0 * (4.5 * DAY - 1))
    for k in range(int(4.5 * DAY), 7 * DAY):  # the controller came back and appends again
        h.append(np.array([[y[k]]]), np.array([60.0 * k]))
    assert h.days()[0, 0] == pytest.approx((7 * DAY - DAY // 2) / DAY)
    assert h.fitted[0, 0]


@pytest.mark.parametrize("days", [0.0, 0.5])
def test_a_new_service_with_less_than_a_day_of_history_gets_no_history_features(days: float) -> None:
    h = hist.DemandHistory(1, 1, 60.0, np.array([5.0]))
    if days:
        h.load(0, daily(days)[:, None], end_s=60.0 * (days * DAY - 1))
    f = h.features(np.array([[100.0]]))[0, 0]
    assert f[0] == 0.0 and not h.fitted[0, 0]
    assert f[1] == pytest.approx(days / hist.DEFAULT_DAYS)
    assert (f[2:] == 0).all()
    assert hist.forecast_ratio(h.features(np.array([[100.0]])), 1)[0, 0] == 1.0


def test_the_forecast_fit_is_deterministic() -> None:
    y = daily(7, noise=0.1, seed=3)
    a, b = hist.fit_service(y, 5, DAY, 0.25), hist.fit_service(y.copy(), 5, DAY, 0.25)
    assert np.array_equal(a.weights, b.weights) and np.array_equal(a.err_q, b.err_q)
    assert np.array_equal(a.rise_q, b.rise_q) and a.crowds_per_day == b.crowds_per_day


def test_episodes_carry_their_days_before_without_changing_the_episode() -> None:
    sc = load_scenario("web-diurnal")
    plain = ClusterEpisodes(sc, 2, episode_steps=50)
    rich = ClusterEpisodes(sc, 2, episode_steps=50, history_days=2)
    for e in (plain, rich):
        for i in range(2):
            e.seed(i, 100 + i)
            e.reset(i)
    assert np.array_equal(plain.arrivals, rich.arrivals)
    assert rich.history.shape == (2, 2 * DAY, 1) and np.isfinite(rich.history).all()
    again = ClusterEpisodes(sc, 2, episode_steps=50, history_days=2)
    for i in range(2):
        again.seed(i, 100 + i)
        again.reset(i)
    assert np.array_equal(again.history, rich.history)
    # the warm-up days come from the same generator: the same time of day looks alike a day apart
    h = rich.history[0, :, 0]
    assert np.corrcoef(h[:DAY], h[DAY:])[0, 1] > 0.8


def test_a_trace_replay_carries_the_traces_preceding_days_wrapping_like_the_replay(tmp_path) -> None:
    from rlscale.evaluation.evaluate import TraceSource, trace_scenario

    csv = tmp_path / "t.csv"
    rows = [f"{i * 60},{v:.6f}" for i, v in enumerate(daily(3, noise=0.05))]
    csv.write_text("timestamp,value\n" + "\n".join(rows) + "\n")
    sc = trace_scenario(load_scenario("web-diurnal"), TraceSource(str(csv)))
    sc = sc.model_copy(update={"randomisation": sc.randomisation.model_copy(update={"random_start_day": False})})
    e = ClusterEpisodes(sc, 1, episode_steps=DAY, history_days=2)
    e.seed(0, 1)
    e.reset(0)
    full = ClusterEpisodes(sc, 1, episode_steps=3 * DAY - 1)
    full.seed(0, 1)
    full.reset(0)
    # day 0 is replayed; its two preceding days are the trace's last two (the replay wraps)
    assert np.allclose(e.history[0, :, 0], full.arrivals[0, DAY : 3 * DAY, 0], rtol=1e-9)


def steady(S: int, rps: float, ready: float, t: int) -> Metrics:
    return Metrics(
        time_s=np.array([60.0 * t]), arrivals_rps=np.full((1, S), rps), ready=np.full((1, S), ready),
        desired=np.full((1, S), ready), utilisation=np.full((1, S), min(1.0, rps / (ready * 20.0))),
        latency_p95_s=np.full((1, S), 0.05), backlog=np.zeros((1, S)), dropped=np.zeros((1, S)),
        nodes_ready=np.full((1, 1), 3.0), nodes_provisioning=np.zeros((1, 1)), packing=np.full((1, 1), 0.8),
        cost_rate_usd_h=np.array([1.0]), hot_spot=np.zeros(1), rebalancing=np.zeros(1),
    )


@pytest.mark.parametrize("history", [False, True])
def test_the_margin_floor_is_ninety_two_percent_of_the_projected_demand(history: bool) -> None:
    """Pinned by value: 1,840 req/s steady at 20 req/s a replica is 92 replicas of demand; the floor is 100."""
    sc = load_scenario("web-diurnal")
    traits = ServiceTraits.from_scenario(sc)
    traits = ServiceTraits(**{**traits.__dict__, "rps": (20.0,), "max_replicas": (1000,)})
    obs, dec = RelativeObservation(traits, 1, history=history), RelativeDecoder(traits, 1, history=history)
    for t in range(20):
        obs.build(steady(1, 1840.0, 100.0, t))
        out = dec.replicas_at(np.full((1, 1), LEVELS[-1]), obs)  # the hottest level: the floor binds
    assert out[0, 0] == 100


def test_with_history_a_hotter_level_frees_replicas_in_the_interval_it_is_picked() -> None:
    sc = load_scenario("web-diurnal")
    traits = ServiceTraits(**{**ServiceTraits.from_scenario(sc).__dict__, "rps": (20.0,), "max_replicas": (1000,)})
    picks = {}
    for history in (False, True):
        obs, dec = RelativeObservation(traits, 1, history=history), RelativeDecoder(traits, 1, history=history)
        for t in range(10):
            obs.build(steady(1, 1000.0, 77.0, t))  # 50 replicas of demand, held at 77 (65%)
            dec.replicas_at(np.full((1, 1), LEVELS[3]), obs)
        obs.build(steady(1, 1000.0, 77.0, 10))
        picks[history] = dec.replicas_at(np.full((1, 1), LEVELS[6]), obs)[0, 0]  # 84%
    assert picks[False] == 77  # the proposal window holds the old count for three intervals
    assert picks[True] == 60  # ceil(50 / 0.84)


def test_the_forecast_head_sizes_ahead_of_a_forecast_rise_only_with_history() -> None:
    """Load triples at minute 600 of every day; two intervals (the lead time) before it, q90 sizes for it."""
    sc = load_scenario("web-diurnal")
    t = np.arange(8 * DAY)
    y = np.where((t % DAY >= 600) & (t % DAY < 900), 300.0, 100.0)
    start = 7 * DAY + 598
    now = float(y[start])
    m = steady(1, now, np.ceil(now / 20 / 0.65), start)
    picks = {}
    for loaded in (False, True):
        for ahead in (0, 2):
            policy = GeneralPolicy(None, sc, history={"days": 7})
            policy.reset(1)
            if loaded:
                policy.load_history(0, y[start - 7 * DAY : start, None], end_s=60.0 * (start - 1))
            policy.observe(m)
            picks[loaded, ahead] = policy.step_raw(m, policy.read_picks(np.full((1, 1), 3)), np.zeros(1, dtype=np.int64),
                                                   np.full((1, 1), ahead)).replicas[0, 0]
    assert picks[False, 2] == picks[False, 0]  # no history: the head changes nothing
    assert picks[True, 2] >= 2.5 * picks[True, 0]  # sized for the rise before it comes


def test_evaluation_with_history_hands_each_episode_its_past_and_hpa_is_unchanged() -> None:
    sc = load_scenario("web-diurnal")
    from rlscale.policies import make_policy

    a = run_policy(sc, make_policy("hpa", sc), [5000, 5001], steps=60).mean()
    b = run_policy(sc, make_policy("hpa", sc), [5000, 5001], steps=60, history_days=1).mean()
    assert a == b
    g = GeneralPolicy(None, sc, history={"days": 1})
    seen: list[float] = []
    g.load_history = lambda i, past, end_s: seen.append(float(past.shape[0]))  # type: ignore[method-assign]
    e = ClusterEpisodes(sc, 2, episode_steps=10, history_days=1)
    for i in range(2):
        e.seed(i, i)
        e.reset(i)
    e.give_history(g)
    assert seen == [DAY, DAY]


def test_a_pick_holds_for_the_decision_period_while_the_decoder_runs_every_interval() -> None:
    from rlscale.policies.network import ExportedPolicy
    from test_serve_history import history_weights

    sc = load_scenario("web-diurnal")
    from rlscale.config import GeneralSpec
    from rlscale.learn.general_eval import card_range

    card = {"kind": "general", "range": card_range(GeneralSpec()),
            "history": {"days": 7.0, "min_days": 1.0, "hold_steps": 3}}
    policy = GeneralPolicy(ExportedPolicy(history_weights(), card, None, None), sc)  # type: ignore[arg-type]
    calls: list[int] = []
    import rlscale.policies.general as general

    real = general.head_logits
    general.head_logits = lambda *a: calls.append(1) or real(*a)  # type: ignore[assignment]
    try:
        for t in range(7):
            policy.act(steady(1, 100.0 + 50 * t, 8.0, t))
    finally:
        general.head_logits = real  # type: ignore[assignment]
    assert len(calls) == 3  # intervals 0, 3 and 6
