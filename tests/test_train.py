"""Training pipeline: a short real run, TensorBoard output, export, numpy reload, and bad artefacts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlscale.config import ConfigError, TrainConfig, load_scenario
from rlscale.episode import ClusterEpisodes
from rlscale.policies import make_policy
from rlscale.policies.network import deterministic_actions, load_exported
from rlscale.rollout import run_policy

RLSCALE = str(Path(sys.executable).with_name("rlscale"))
TRAINING_REWARD = {"cost_scale": 0.05, "w_slo": 4.0, "w_drop": 50.0, "w_churn": 0.002}
EVAL_TAGS = {"eval/cost_usd", "eval/slo_violation_rate", "eval/dropped_fraction", "eval/utilisation", "eval/cost_vs_hpa"}


def tiny_config(**overrides) -> TrainConfig:
    data = {
        "scenario": "web-diurnal",
        "seed": 3,
        "n_envs": 4,
        "n_timesteps": 2048,
        "episode_steps": 120,
        "n_steps": 128,
        "batch_size": 256,
        "n_epochs": 2,
        "eval": {"freq": 1024, "seeds": 2, "seed_base": 5000, "episode_steps": 120},
    }
    data.update(overrides)
    return TrainConfig.model_validate(data)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rlscale.learn.train import train

    run = tmp_path_factory.mktemp("run") / "tiny"
    outcome = train(tiny_config(reward=TRAINING_REWARD), run, progress_bar=False)
    assert not outcome.interrupted
    return run


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rlscale.learn.export import export_run

    out = tmp_path_factory.mktemp("models") / "tiny"
    export_run(trained_run, out, seeds=2)
    return out


def test_short_training_run_writes_eval_scalars_readable_by_tensorboard(trained_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for events in (trained_run / "tb").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert EVAL_TAGS <= tags
    assert "train/value_loss" in tags
    assert (trained_run / "best" / "model.zip").is_file()
    assert (trained_run / "last" / "state.json").is_file()


def test_export_writes_a_card_that_describes_the_policy(exported: Path) -> None:
    card = json.loads((exported / "card.json").read_text())
    assert card["scenario"] == "web-diurnal"
    assert card["training"]["seed"] == 3
    assert 0 < card["training"]["timesteps"] <= 2048
    assert set(card["versions"]) >= {"numpy", "torch", "stable_baselines3", "gymnasium"}
    assert card["evaluation"]["held_out_seeds"] == [10000, 10001]
    assert card["evaluation"]["cost_vs_hpa"] > 0


def test_training_reward_override_trains_on_it_but_the_card_describes_the_served_scenario(exported: Path) -> None:
    from rlscale.learn.train import training_scenario

    assert training_scenario(tiny_config(reward=TRAINING_REWARD)).reward.w_slo == 4.0
    card = json.loads((exported / "card.json").read_text())
    assert card["training"]["config"]["reward"] == TRAINING_REWARD
    assert card["scenario_config"]["reward"] == load_scenario("web-diurnal").reward.model_dump()


def test_numpy_forward_pass_matches_sb3_predict_on_many_observations(trained_run: Path, exported: Path) -> None:
    from rlscale.learn.train import load_checkpoint, training_scenario

    cfg = tiny_config()
    model, env, _ = load_checkpoint(trained_run / "best", cfg, training_scenario(cfg))
    engine = ClusterEpisodes("web-diurnal", 8, episode_steps=200, randomise=True)
    rng = np.random.default_rng(0)
    observations = []
    for i in range(8):
        engine.seed(i, 500 + i)
        engine.reset(i)
    observations.append(engine.observe())
    for _ in range(160):
        engine.step_raw(rng.integers(0, engine.action_spec.nvec, size=(8, len(engine.action_spec.nvec))))
        observations.append(engine.observe())
    obs = np.concatenate(observations)
    assert len(obs) >= 1000
    expected, _ = model.predict(env.normalize_obs(obs), deterministic=True)
    policy = load_exported(exported)
    got = deterministic_actions(policy.weights, policy.action_spec.nvec, obs)
    np.testing.assert_array_equal(got, expected)


def test_exported_policy_reloads_with_numpy_and_acts(exported: Path) -> None:
    sc = load_scenario("web-diurnal")
    policy = make_policy(f"ppo:{exported}", sc)
    result = run_policy(sc, policy, [10000, 10001], steps=60)
    assert result.episodes["cost_usd"].shape == (2,)
    assert np.all(result.episodes["cost_usd"] > 0)


def test_training_is_deterministic_by_seed(tmp_path: Path) -> None:
    from rlscale.learn.train import train

    cfg = tiny_config(n_timesteps=512, eval={"freq": 100000, "seeds": 1, "episode_steps": 30})
    a = train(cfg, tmp_path / "a", progress_bar=False)
    b = train(cfg, tmp_path / "b", progress_bar=False)
    assert a.history[-1]["ppo"] == b.history[-1]["ppo"]


def test_resume_continues_the_counters_of_an_interrupted_run(tmp_path: Path) -> None:
    from rlscale.learn.train import train

    first = train(tiny_config(n_timesteps=1024), tmp_path / "r", progress_bar=False)
    assert first.timesteps >= 1024
    resumed = train(tiny_config(n_timesteps=2048), tmp_path / "r", resume=tmp_path / "r", progress_bar=False)
    assert resumed.timesteps == 2048
    state = json.loads((tmp_path / "r" / "last" / "state.json").read_text())
    assert state["num_timesteps"] == 2048


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "policy.npz").write_bytes(b"not a zip"), "policy.npz"),
        (lambda d: (d / "card.json").write_text("{"), "card.json: not valid JSON"),
        (lambda d: (d / "card.json").unlink(), "card.json: missing"),
    ],
)
def test_corrupted_export_gives_one_line_error(exported: Path, tmp_path: Path, damage, message: str) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    damage(broken)
    with pytest.raises(ConfigError) as err:
        load_exported(broken)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_mismatched_export_gives_one_line_error(exported: Path, tmp_path: Path) -> None:
    import shutil

    from rlscale.policies.network import write_exported

    policy = load_exported(exported)
    card = dict(policy.card)
    card["obs_spec"] = {**card["obs_spec"], "services": ["api", "worker"]}
    shutil.rmtree(tmp_path / "m", ignore_errors=True)
    with pytest.raises(ConfigError) as err:  # refused on the way out now, as it would be on the way in
        write_exported(tmp_path / "m", policy.weights, card)
        load_exported(tmp_path / "m")
    assert "\n" not in str(err.value)


def test_policy_for_another_scenario_is_refused_in_one_line(exported: Path, tmp_path: Path) -> None:
    bad = tmp_path / "other.yaml"
    text = (Path(__file__).resolve().parents[1] / "envs" / "web-diurnal.yaml").read_text()
    bad.write_text(text.replace("name: api", "name: frontend"))
    proc = subprocess.run(
        [RLSCALE, "simulate", "--scenario", str(bad), "--policy", f"ppo:{exported}", "--steps", "5"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "trained for services" in proc.stderr


def test_bad_training_config_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "ppo-bad.yaml"
    bad.write_text("scenario: web-diurnal\nn_steps: lots\n")
    proc = subprocess.run([RLSCALE, "train", "--config", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "n_steps" in proc.stderr


@pytest.mark.slow
def test_ctrl_c_saves_a_consistent_checkpoint_and_exits_0(tmp_path: Path) -> None:
    import signal
    import time

    config = tmp_path / "ppo-tiny.yaml"
    config.write_text(
        "scenario: web-diurnal\nn_envs: 4\nn_timesteps: 5000000\nepisode_steps: 120\nn_steps: 128\n"
        "batch_size: 256\nn_epochs: 2\neval: {freq: 1024, seeds: 1, episode_steps: 30}\n"
    )
    proc = subprocess.Popen(
        [RLSCALE, "train", "--config", str(config), "--logdir", str(tmp_path / "runs"), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a shell's background job inherits SIGINT ignored, and Python then installs no Ctrl-C handler
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    run = tmp_path / "runs" / "ppo-web-diurnal-s0"
    try:
        deadline = time.monotonic() + 120
        while not (run / "best").is_dir() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert (run / "best").is_dir(), "training never reached its first evaluation"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # a failed test must not leave a 5M-step training behind
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "interrupted; checkpoint saved" in out
    state = json.loads((run / "last" / "state.json").read_text())
    assert 0 < state["num_timesteps"] < 5_000_000
    assert not list(run.glob(".last.*")), "no half-written checkpoint is left behind"


def test_a_feature_constant_in_training_is_held_at_its_training_value_when_serving(tmp_path: Path) -> None:
    """On a real cluster a feature that never moved in training (a ~0 variance) must not saturate the network's input."""
    from dataclasses import replace

    from helpers import export_random_policy

    from rlscale.policies.network import logits

    weights = load_exported(export_random_policy(tmp_path / "p")).weights
    k = 3
    var = weights.obs_var.copy()
    var[k] = 2e-11
    weights = replace(weights, obs_var=var)
    at_mean = np.tile(weights.obs_mean, (4, 1))
    moved = at_mean.copy()
    moved[:, k] += np.array([1e-3, -0.5, 2.0, 100.0])
    np.testing.assert_array_equal(logits(weights, moved), logits(weights, at_mean))
    moved[:, k + 1] += 1.0  # a feature that did vary still counts
    assert not np.array_equal(logits(weights, moved), logits(weights, at_mean))


def test_export_of_a_half_trained_run_says_it_is_incomplete_how_far_it_got_and_its_evaluation(
    tmp_path: Path, trained_run: Path
) -> None:
    """Issue 26 item 4: a run interrupted at 229k of 2.77M steps exported without a word."""
    from rlscale.learn.train import train

    def interrupt(callback, entry) -> None:  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt  # what Ctrl-C does in the middle of learning, after the first evaluation saved best/

    run = tmp_path / "half"
    outcome = train(tiny_config(n_timesteps=40_960), run, progress_bar=False, on_evaluation=interrupt)
    assert outcome.interrupted and outcome.timesteps < 40_960
    result = subprocess.run([sys.executable, "-m", "rlscale.cli", "export", str(run), "--out", str(tmp_path / "m"),
                             "--seeds", "1"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    warning = result.stderr.strip()
    assert warning.count("\n") == 0 and warning.startswith(f"warning: {run}: the run is incomplete"), warning
    assert f"stopped at {outcome.timesteps:,} of 40,960 steps" in warning and "validation score" in warning
    assert "held-out evaluation follows" in warning and "cost vs HPA" in result.stdout and "incomplete run" in result.stdout
    card = load_exported(tmp_path / "m").card["training"]
    assert card["complete"] is False and card["run_timesteps"] == outcome.timesteps and card["n_timesteps"] == 40_960
    whole = subprocess.run([sys.executable, "-m", "rlscale.cli", "export", str(trained_run), "--out", str(tmp_path / "w"),
                            "--seeds", "1"], capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0 and "incomplete" not in whole.stderr + whole.stdout, whole.stderr
    assert load_exported(tmp_path / "w").card["training"]["complete"] is True
