"""Sweeps (``rlscale sweep``): the sweep file, the trial plan, the table and selection, and a real 2x2 sweep
on a local Ray that is interrupted with Ctrl-C, resumed, tabulated and exported, bound to loopback only and
leaving no process behind."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from rlscale.config import TRAIN_DIR, ConfigError, load_scenario
from rlscale.learn.sweep import (
    Row,
    _plan_document,
    prepare_sweep_dir,
    SweepConfig,
    Trial,
    load_sweep,
    plan_trials,
    select_best,
    write_tables,
)

RLSCALE = str(Path(sys.executable).with_name("rlscale"))
BASE = str(TRAIN_DIR / "ppo-web-diurnal.yaml")
TINY = {  # a training that takes about a second once a worker has imported torch
    "n_envs": 4, "n_timesteps": 3072, "episode_steps": 120, "n_steps": 128, "batch_size": 256, "n_epochs": 2,
    "eval": {"freq": 1024, "seeds": 2, "seed_base": 5000, "episode_steps": 120},
}


def write_sweep(path: Path, **fields) -> Path:
    data = {"name": "tiny", "base": BASE, "overrides": TINY, "axes": {"seed": [0, 1], "reward.w_slo": [2.0, 8.0]},
            "export_seeds": 2, **fields}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --------------------------------------------------------------------------- the plan (no Ray)


def test_grid_plans_every_combination_as_a_complete_training_config(tmp_path: Path) -> None:
    spec_path = write_sweep(tmp_path / "s.yaml")
    trials = plan_trials(load_sweep(spec_path), str(spec_path))
    assert [t.axes for t in trials] == [
        {"seed": 0, "reward.w_slo": 2.0}, {"seed": 0, "reward.w_slo": 8.0},
        {"seed": 1, "reward.w_slo": 2.0}, {"seed": 1, "reward.w_slo": 8.0},
    ]
    assert len({t.name for t in trials}) == 4 and trials[3].name.startswith("t003_seed=1_w_slo=8")
    scenario_reward = load_scenario("web-diurnal").reward.model_dump()
    for t in trials:
        assert t.config["seed"] == t.axes["seed"]
        assert t.config["n_timesteps"] == 3072 and t.config["eval"]["freq"] == 1024
        # an axis into a section the base config leaves to the scenario starts from the scenario's values
        assert t.config["reward"] == {**scenario_reward, "w_slo": t.axes["reward.w_slo"]}
        assert t.config["learning_rate"] == "lin_5e-4"  # the base config's, untouched


def test_random_search_draws_the_same_trials_for_the_same_seed_within_bounds(tmp_path: Path) -> None:
    axes = {"learning_rate": {"loguniform": [1e-4, 1e-3]}, "policy_kwargs.net_arch": [[64, 64], [128, 128]],
            "seed": {"randint": [0, 9]}}
    spec_path = write_sweep(tmp_path / "r.yaml", search="random", samples=6, seed=7, axes=axes)
    first = plan_trials(load_sweep(spec_path), str(spec_path))
    again = plan_trials(load_sweep(spec_path), str(spec_path))
    assert [t.axes for t in first] == [t.axes for t in again] and len(first) == 6
    for t in first:
        assert 1e-4 <= t.config["learning_rate"] <= 1e-3
        assert t.config["policy_kwargs"]["net_arch"] in ([64, 64], [128, 128])
        assert 0 <= t.config["seed"] <= 9
    other = plan_trials(SweepConfig.model_validate({**load_sweep(spec_path).model_dump(), "seed": 8}), "r.yaml")
    assert [t.axes for t in other] != [t.axes for t in first]


@pytest.mark.parametrize(("fields", "expected"), [
    ({"axes": {"clip_range": [0.0, 0.2]}}, r"s\.yaml: axes give trial t000_clip_range=0 an invalid training config: clip_range: .*greater than 0"),
    ({"axes": {"n_steps": [256]}}, r"s\.yaml: axes\.n_steps: also set in overrides; set it in one place"),
    ({"axes": {"no_such_setting": [1]}}, r"s\.yaml: axes give trial t000_no_such_setting=1 an invalid training config: no_such_setting: unknown key"),
    ({"axes": {"seed.x": [1]}}, r"s\.yaml: axes: seed is a value, not a section"),
    ({"axes": {"seed": {"uniform": [0, 1]}}}, r"s\.yaml: axes\.seed: a distribution needs search: random"),
    ({"search": "random", "axes": {"seed": [1]}}, r"s\.yaml: samples: search: random needs the number of trials"),
    ({"search": "random", "samples": 2, "axes": {"learning_rate": {"loguniform": [0, 1]}}}, r"s\.yaml: axes\.learning_rate: loguniform: bounds must be positive"),
    ({"search": "random", "samples": 1, "axes": {"reward.w_slo": {"uniform": [-1, 1]}}},
     r"s\.yaml: axes\.reward\.w_slo: value -1\.0 gives an invalid training config: reward\.w_slo: "),
    ({"axes": {"seed": []}}, r"axes\.seed: expected at least one value"),
    ({"name": "../escape"}, r"s\.yaml: name: String should match pattern"),
    ({"base": "train/no-such-config.yaml"}, r"no-such-config\.yaml: training config not found"),
])
def test_sweep_file_mistakes_are_one_line_naming_file_and_field(tmp_path: Path, fields: dict, expected: str) -> None:
    spec_path = write_sweep(tmp_path / "s.yaml", **fields)
    with pytest.raises(ConfigError) as err:
        plan_trials(load_sweep(spec_path), str(spec_path))
    message = str(err.value)
    assert "\n" not in message
    assert re.search(expected, message), message


@pytest.mark.parametrize("path", sorted((TRAIN_DIR / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_committed_sweep_file_plans_valid_trials(path: Path) -> None:
    spec = load_sweep(path)
    trials = plan_trials(spec, str(path))
    assert trials and len({t.name for t in trials}) == len(trials)
    assert spec.name == path.stem


def test_a_new_sweep_refuses_an_old_one_and_resume_refuses_a_changed_file(tmp_path: Path) -> None:
    spec_path = write_sweep(tmp_path / "s.yaml")
    spec = load_sweep(spec_path)
    plan = _plan_document(spec, str(spec_path), plan_trials(spec, str(spec_path)))
    sweep_dir = tmp_path / "sweeps" / "tiny"
    with pytest.raises(ConfigError, match=r"tiny: no sweep to resume here"):
        prepare_sweep_dir(sweep_dir, plan, resume=True)
    prepare_sweep_dir(sweep_dir, plan, resume=False)
    assert json.loads((sweep_dir / "sweep.json").read_text())["trials"][3]["axes"] == {"seed": 1, "reward.w_slo": 8.0}
    prepare_sweep_dir(sweep_dir, plan, resume=False)  # only a plan, Tune never started (e.g. Ray could not): start again
    (sweep_dir / "tune").mkdir()
    with pytest.raises(ConfigError, match=r"tiny: holds a sweep already; continue it with --resume"):
        prepare_sweep_dir(sweep_dir, plan, resume=False)
    prepare_sweep_dir(sweep_dir, plan, resume=True)  # the same file: fine
    changed = write_sweep(tmp_path / "s.yaml", axes={"seed": [0, 1, 2]})
    spec2 = load_sweep(changed)
    with pytest.raises(ConfigError, match=r"s\.yaml: differs from the sweep started in .*tiny \(its trials changed\)"):
        prepare_sweep_dir(sweep_dir, _plan_document(spec2, str(changed), plan_trials(spec2, str(changed))), resume=True)


def test_cli_reports_a_bad_sweep_file_in_one_line_with_exit_code_2(tmp_path: Path) -> None:
    spec_path = write_sweep(tmp_path / "s.yaml", axes={"clip_range": [0.0]})
    proc = subprocess.run([RLSCALE, "sweep", "--config", str(spec_path), "--logdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "clip_range" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "tiny").exists()  # refused before anything was written or started


def test_importing_rlscale_serving_and_the_sweep_plan_does_not_import_ray() -> None:
    code = ("import sys, rlscale.cli, rlscale.controller.serve, rlscale.learn.sweep; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "[]"


def _row(index: int, score: float, slo: float = 0.01, status: str = "finished") -> Row:
    trial = Trial(index, f"t{index:03d}_seed={index}", {"seed": index}, {})
    best = {"timesteps": 100.0, "score": score, "cost_vs_hpa": min(score, 0.9), "slo_violation_rate": slo,
            "hpa_slo_violation_rate": 0.02, "dropped_fraction": 0.0, "hpa_dropped_fraction": 0.0}
    return Row(trial, status, Path(f"/runs/t{index:03d}"), best=best, timesteps=100, wall_s=1.0)


def test_selection_takes_the_lowest_score_of_finished_trials_and_tables_rank_them(tmp_path: Path) -> None:
    rows = [_row(0, 0.95), _row(1, 0.80, slo=0.5), _row(2, 0.85), _row(3, 0.10, status="interrupted")]
    best = select_best(rows)
    assert best is not None and best.trial.index == 1  # the interrupted trial's partial score is never picked
    md, csv_path = write_tables(tmp_path, rows, ["seed"], best)
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("rank,trial,seed,status,timesteps,score,cost_vs_hpa")
    assert [line.split(",")[1] for line in lines[1:]] == ["t001_seed=1", "t002_seed=2", "t000_seed=0", "t003_seed=3"]
    assert lines[4].split(",")[0] == ""  # no rank for an unfinished trial
    text = md.read_text()
    assert "Best: **t001_seed=1**" in text and "| 1 | t001_seed=1 | 1 | finished |" in text
    assert "| no |" in text  # t001 broke the SLO more often than HPA: the table says so
    assert select_best([_row(0, 0.5, status="error")]) is None


# --------------------------------------------------------------------------- a real sweep on a local Ray

LOOPBACK = re.compile(r"^(127\.\d+\.\d+\.\d+|\[::1\]|\[::ffff:127\.\d+\.\d+\.\d+\]):\d+$")


def marked_pids(mark: str) -> set[int]:
    """Every process that inherited the sweep's environment: the driver, Ray's GCS, raylet, agents and workers."""
    needle = f"RLSCALE_TEST_MARK={mark}".encode()
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if needle in (proc / "environ").read_bytes():
                    found.add(int(proc.name))
            except OSError:
                pass
    return found


def listeners_of(pids: set[int]) -> list[tuple[str, str]]:
    """(local address, process name) of every listening TCP socket that belongs to one of ``pids``."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        for name, pid in re.findall(r'\("([^"]+)",pid=(\d+)', line):
            if int(pid) in pids:
                found.append((fields[3], name))
    return found


def run_until(cmd: list[str], env: dict[str, str], log: Path, mark: str, stop_after: str | None) -> tuple[int, str, list[tuple[str, str]]]:
    """Run the CLI; snapshot Ray's listening sockets once trials report; Ctrl-C its process group after ``stop_after``."""
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    sockets: list[tuple[str, str]] = []
    deadline = time.monotonic() + 240
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            text = log.read_text()
            if not sockets and " steps, validation score " in text:
                sockets = listeners_of(marked_pids(mark))
            if stop_after and stop_after in text:
                os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
                stop_after = None
            time.sleep(0.2)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return code, log.read_text(), sockets


def assert_nothing_left(mark: str) -> None:
    deadline = time.monotonic() + 10
    while marked_pids(mark) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = marked_pids(mark)
    names = {pid: Path(f"/proc/{pid}/comm").read_text().strip() for pid in left if Path(f"/proc/{pid}/comm").exists()}
    assert not left, f"processes left behind: {names}"


def assert_loopback_only(sockets: list[tuple[str, str]]) -> None:
    names = {name for _, name in sockets}
    assert {"gcs_server", "raylet"} <= names, f"Ray was not seen listening: {sockets}"
    wide = [(addr, name) for addr, name in sockets if not LOOPBACK.match(addr)]
    assert not wide, f"Ray listens beyond loopback: {wide}"


@pytest.mark.slow
def test_2x2_sweep_on_local_ray_is_interrupted_resumed_tabulated_and_exports_the_best(tmp_path: Path) -> None:
    spec_path = write_sweep(tmp_path / "tiny.yaml", max_concurrent=2)
    logdir = tmp_path / "sweeps"
    mark = uuid.uuid4().hex
    env = {**os.environ, "RLSCALE_TEST_MARK": mark, "PYTHONUNBUFFERED": "1"}
    home = Path.home()
    home_before = {name: (home / name).exists() for name in ("ray_results", ".ray")}
    cmd = [RLSCALE, "sweep", "--config", str(spec_path), "--logdir", str(logdir)]

    # Ctrl-C once the first evaluation is reported: Tune saves its state, Ray is shut down, nothing is left
    code, out, sockets = run_until(cmd, env, tmp_path / "first.log", mark, stop_after=" steps, validation score ")
    assert code == 0, out
    assert "interrupted; continue with: rlscale sweep" in out and "--resume" in out
    assert_nothing_left(mark)
    assert_loopback_only(sockets)
    sweep_dir = logdir / "tiny"
    first = (sweep_dir / "trials.csv").read_text().splitlines()
    assert len(first) == 5 and sum(",finished," in line for line in first) < 4

    code, out, sockets = run_until(cmd + ["--resume"], env, tmp_path / "second.log", mark, stop_after=None)
    assert code == 0, out
    assert "4/4 trials finished" in out
    assert_nothing_left(mark)
    assert_loopback_only(sockets)

    # every trial: its own TensorBoard run and summary; Tune's results in the sweep directory
    runs = sorted(p.name for p in (sweep_dir / "runs").iterdir())
    assert len(runs) == 4 and runs[0].startswith("t000_seed=0_w_slo=2")
    for run in runs:
        assert list((sweep_dir / "runs" / run / "tb").glob("events.out.tfevents.*"))
        assert json.loads((sweep_dir / "runs" / run / "trial.json").read_text())["timesteps"] == 3072
    assert (sweep_dir / "tune" / "tuner.pkl").is_file()

    # the table ranks all four finished trials; the winner has the lowest validation score
    rows = [line.split(",") for line in (sweep_dir / "trials.csv").read_text().splitlines()]
    header, body = rows[0], rows[1:]
    col = {name: header.index(name) for name in ("rank", "trial", "status", "score")}
    assert [r[col["status"]] for r in body] == ["finished"] * 4
    assert [r[col["rank"]] for r in body] == ["1", "2", "3", "4"]
    scores = [float(r[col["score"]]) for r in body]
    assert scores == sorted(scores) and all(math.isfinite(s) for s in scores)
    assert "| 1 |" in (sweep_dir / "trials.md").read_text()

    # the best trial is exported through rlscale export, its card naming the sweep
    card = json.loads((sweep_dir / "policy" / "card.json").read_text())
    assert (sweep_dir / "policy" / "policy.npz").is_file()
    assert card["sweep"]["winner"]["trial"] == body[0][col["trial"]]
    assert card["sweep"]["trials"] == 4 and card["sweep"]["finished"] == 4 and card["sweep"]["name"] == "tiny"
    assert card["training"]["config"]["seed"] == card["sweep"]["winner"]["axes"]["seed"]
    assert card["evaluation"]["held_out_seeds"] == [10000, 10001]

    # Ray kept its files out of the home directory
    assert {name: (home / name).exists() for name in ("ray_results", ".ray")} == home_before
