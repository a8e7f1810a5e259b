"""What a new user trips on (issue 15): refusals that protect work, one-line usage errors, readable help, progress.

Most checks call ``rlscale.cli.main`` in-process (what the ``rlscale`` script
runs); the ones that need a real process (signals, a non-terminal stdout) start
``rlscale`` itself.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from rlscale.cli import main
from helpers import OkHandler

RLSCALE = str(Path(sys.executable).with_name("rlscale"))
COMMANDS = ("simulate", "train", "export", "serve", "loadgen", "calibrate", "evaluate", "demo")


def every_command() -> list[str]:
    """Every command and subcommand the ``rlscale`` app has now (so a new one is held to the same rules)."""
    import typer

    from rlscale.cli import app

    group = typer.main.get_command(app)
    names = []
    for name, command in sorted(group.commands.items()):
        names.append(name)
        names += [f"{name} {sub}" for sub in sorted(getattr(command, "commands", {}))]
    return names


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- usage errors and help


@pytest.mark.parametrize("command", ["simulate", "serve", "loadgen"])
def test_negative_seed_is_a_one_line_usage_error(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, _, err = run_cli(capsys, command, "--seed", "-1")
    assert code == 2
    assert err.strip().count("\n") == 0, err
    assert "--seed" in err and "greater than or equal to 0" in err


def test_a_value_given_to_a_flag_is_a_one_line_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "simulate", "--json", "true")
    assert code == 2
    assert err.strip().count("\n") == 0 and err.startswith("error: ")


@pytest.mark.parametrize("command", every_command())
def test_help_fits_80_columns_and_shows_flags_without_a_value(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run_cli(capsys, *command.split(), "--help")
    assert code == 0
    assert "<bool>" not in out
    assert "…" not in out, "help text cut off"
    too_wide = [line for line in out.splitlines() if len(line) > 80]
    assert not too_wide, too_wide


@pytest.mark.parametrize("command, words", [
    ("evaluate", ["target_tracking", "ppo:models/general:repack=0"]),
    ("sweep", ["train/sweeps/web-diurnal-seeds.yaml"]),
    ("shadow", ["shadow-audit.jsonl"]),
    ("serve", ["runs/serve/audit-<start", "--keda-grpc", "127.0.0.1:9090"]),
])
def test_help_at_80_columns_never_cuts_a_word_or_path_in_two(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: str, words: list[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    _, out, _ = run_cli(capsys, command, "--help")
    tokens = set(" ".join(out.split()).translate(str.maketrans("()[],;", "      ")).split())
    for word in words:
        assert word in tokens, (word, out)


def test_serve_help_groups_its_options_under_headings(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    _, out, _ = run_cli(capsys, "serve", "--help")
    headings = [line for line in out.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert headings == ["Policy and cluster:", "Audit log and summary:", "HTTP API:", "Guard rails:", "Kubernetes and KEDA:", "Options:"]
    section = out.split("Guard rails:")[1].split("\n\n")[0]
    assert "--max-step-change" in section and "--port" not in section


def test_top_level_help_lists_every_command_without_cutting_its_summary(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for command in COMMANDS:
        line = next(line for line in out.splitlines() if line.strip().startswith(command + " "))
        assert not line.rstrip().endswith("..."), line


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    from rlscale import __version__

    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == f"rlscale {__version__}"


def test_simulate_help_lists_the_oracle_and_export_help_names_the_checkpoint(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    _, out, _ = run_cli(capsys, "simulate", "--help")
    assert "oracle" in out.split("--policy", 1)[1].split("--steps", 1)[0]
    _, out, _ = run_cli(capsys, "export", "--help")
    assert "best checkpoint" in out and "last" in out


def test_train_help_explains_the_best_score(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    _, out, _ = run_cli(capsys, "train", "--help")
    assert "best checkpoint is picked by its score" in " ".join(out.split())


# --------------------------------------------------------------------------- refusing to destroy work


def tiny_train_config(path: Path, **extra: object) -> Path:
    data = {"scenario": "web-diurnal", "n_envs": 4, "n_timesteps": 5_000_000, "episode_steps": 120, "n_steps": 128,
            "batch_size": 256, "n_epochs": 2, "eval": {"freq": 10**9, "seeds": 1, "episode_steps": 30}, **extra}
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


@pytest.mark.slow
def test_the_commands_train_prints_to_copy_are_one_line_and_quoted_on_a_narrow_terminal(tmp_path: Path) -> None:
    """The resume line broke in two in an 80-column log (rich wraps); a path with a space or a bracket broke the copy."""
    config = tiny_train_config(tmp_path / "ppo tiny.yaml")
    runs = tmp_path / "my runs [a]"
    done = subprocess.run([RLSCALE, "train", "--config", str(config), "--logdir", str(runs), "--timesteps", "512",
                           "--no-progress"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "40"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    resume = next(line for line in lines if line.startswith("resume with: "))
    assert shlex.split(resume.removeprefix("resume with: ")) == [
        "rlscale", "train", "--config", str(config), "--resume", str(runs / "ppo-web-diurnal-s0")]
    watch = next(line for line in lines if line.startswith("watch with: "))
    assert shlex.split(watch.removeprefix("watch with: ")) == ["tensorboard", "--logdir", str(runs / "ppo-web-diurnal-s0" / "tb")]


def test_train_into_an_existing_run_refuses_and_names_the_ways_out(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run = tmp_path / "runs" / "ppo-web-diurnal-s0"
    (run / "last").mkdir(parents=True)
    (run / "last" / "model.zip").write_bytes(b"an interrupted run's checkpoint")
    config = tiny_train_config(tmp_path / "ppo-tiny.yaml")
    code, _, err = run_cli(capsys, "train", "--config", str(config), "--logdir", str(tmp_path / "runs"), "--no-progress")
    assert code == 2
    assert err.strip().count("\n") == 0
    assert str(run) in err and "--resume" in err and "--overwrite" in err
    assert (run / "last" / "model.zip").read_bytes() == b"an interrupted run's checkpoint"


def test_overwrite_clears_the_old_run_so_tensorboard_events_do_not_pile_up(tmp_path: Path) -> None:
    from rlscale.learn.train import check_run_dir

    run = tmp_path / "run"
    for sub in ("last", "best", "tb"):
        (run / sub).mkdir(parents=True)
        (run / sub / "file").write_text("old")
    (run / "evaluations.jsonl").write_text("{}\n")
    (run / "notes.txt").write_text("not the run's: kept")
    check_run_dir(run, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    check_run_dir(tmp_path / "new", overwrite=False)  # nothing there: no complaint


def test_export_refuses_to_replace_a_policy_and_says_what_is_there(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from helpers import export_random_policy

    shipped = export_random_policy(tmp_path / "models" / "web-diurnal")
    card = json.loads((shipped / "card.json").read_text())
    card["training"]["timesteps"] = 3_002_368
    card["evaluation"]["cost_vs_hpa"] = 0.784
    (shipped / "card.json").write_text(json.dumps(card))
    before = (shipped / "policy.npz").read_bytes()
    code, _, err = run_cli(capsys, "export", str(tmp_path / "runs" / "x"), "--out", str(shipped))
    assert code == 2 and err.strip().count("\n") == 0
    assert "policy.npz" in err and "card.json" in err and "--force" in err
    assert "web-diurnal" in err and "3,002,368" in err and "0.784" in err
    assert (shipped / "policy.npz").read_bytes() == before
    # with --force the refusal is gone (and the missing run is the next thing reported)
    code, _, err = run_cli(capsys, "export", str(tmp_path / "runs" / "x"), "--out", str(shipped), "--force")
    assert code == 2 and "would replace" not in err and "not a training run" in err


def test_train_refuses_an_out_that_holds_a_policy_before_training(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from helpers import export_random_policy

    out = export_random_policy(tmp_path / "models" / "mine")
    config = tiny_train_config(tmp_path / "ppo-tiny.yaml")
    code, _, err = run_cli(capsys, "train", "--config", str(config), "--logdir", str(tmp_path / "runs"), "--out", str(out))
    assert code == 2 and "--force" in err
    assert not (tmp_path / "runs").exists(), "refused before any training started"


def test_calibrate_refuses_to_rewrite_the_scenario_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "local.yaml"
    out.write_text("name: local\n")
    (tmp_path / "local-diurnal.csv").write_text("timestamp,value\n")
    code, _, err = run_cli(capsys, "calibrate", "--out", str(out))
    assert code == 2 and err.strip().count("\n") == 0
    assert str(out) in err and "local-diurnal.csv" in err and "--force" in err
    assert out.read_text() == "name: local\n"


# --------------------------------------------------------------------------- loadgen stopped by its cap


@pytest.fixture
def http_ok() -> str:
    server = ThreadingHTTPServer(("127.0.0.1", 0), OkHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/work"
    server.shutdown()
    server.server_close()


def test_loadgen_says_when_max_requests_stopped_it_early(capsys: pytest.CaptureFixture[str], http_ok: str) -> None:
    code, out, _ = run_cli(capsys, "loadgen", "--target", http_ok, "--speedup", "480", "--duration", "30",
                           "--peak-rps", "40", "--start-hour", "12", "--max-requests", "25")
    assert code == 0
    assert "25 requests" in out
    line = next(line for line in out.splitlines() if line.startswith("stopped at --max-requests 25"))
    assert "of the asked 30.0 s" in line


def test_loadgen_without_the_cap_reaching_says_nothing_about_it(http_ok: str) -> None:
    from rlscale.clusters.local.loadgen import run

    result = run("web-diurnal", http_ok, 480.0, 0.5, peak_rps=20.0, start_s=12 * 3600.0, max_requests=10_000)
    assert "capped" not in result.meta and result.summary()["requests"] > 0


def test_loadgen_says_what_a_run_dir_target_waits_for_and_gives_up_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([RLSCALE, "loadgen", "--target", str(tmp_path / "nope"), "--wait", "1.5"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    waiting, error = proc.stderr.strip().splitlines()[0], proc.stderr.strip().splitlines()[-1]
    assert waiting.startswith(f"waiting up to 1.5 s for {tmp_path / 'nope' / 'cluster.json'} ({tmp_path / 'nope'} does not exist yet)")
    assert "rlscale cluster up" in waiting
    assert error.startswith(f"error: --target {tmp_path / 'nope'}: no local cluster there")
    assert "Traceback" not in proc.stderr


def test_loadgen_reports_progress_while_it_replays(http_ok: str) -> None:
    from rlscale.clusters.local.loadgen import run

    lines: list[str] = []
    result = run("web-diurnal", http_ok, 480.0, 3.2, peak_rps=40.0, start_s=12 * 3600.0, say=lines.append, every_s=1.0)
    assert lines[0] == f"replaying web-diurnal at 480x for 3 s against {http_ok}"
    ticks = [re.fullmatch(r"(\d+) of 3 s: (\d+) sent, (\d+) ok, 0 failed; p95 \d+ ms in the last 1 s", t) for t in lines[1:]]
    assert len(ticks) == 3 and all(ticks), lines
    assert [int(t[1]) for t in ticks] == [1, 2, 3]
    sent = [int(t[2]) for t in ticks]
    assert 0 < sent[0] < sent[1] < sent[2] <= result.summary()["requests"]


# --------------------------------------------------------------------------- the numba compile notice


def test_the_first_compilation_is_announced_once_and_a_cached_one_not_at(tmp_path: Path) -> None:
    (tmp_path / "tinykernel.py").write_text(
        "from numba import njit\n\n@njit(cache=True)\ndef add_one(x):\n    return x + 1\n"
    )
    probe = (
        "import io, tinykernel\n"
        "from rlscale.sim import kernel as K\n"
        "buf = io.StringIO()\n"
        "first = K.announce_compile(tinykernel.add_one, buf)\n"
        "tinykernel.add_one(1)\n"
        "again = K.announce_compile(tinykernel.add_one, buf)\n"
        "print(first, again, repr(buf.getvalue()))\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(tmp_path)}
    cold = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert cold.stdout.startswith("True False"), cold.stderr
    assert "compiling the simulator, once per machine, ~1 min" in cold.stdout
    warm = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert warm.stdout.startswith("False False"), warm.stderr


def test_a_cached_caller_recompiles_when_a_file_it_calls_into_changes(tmp_path: Path) -> None:
    """numba stamps a cache with its own file only; ``stale_with`` adds the files of the kernels a caller fuses."""
    (tmp_path / "callee.py").write_text("from numba import njit\n\n@njit(cache=True)\ndef f(x):\n    return x + 1\n")
    (tmp_path / "caller.py").write_text(
        "from numba import njit\n\nimport callee\nfrom rlscale.sim import kernel as K\n\n"
        "@njit(cache=True)\ndef g(x):\n    return callee.f(x) * 10\n\nK.stale_with(g, callee)\n"
    )
    probe = "import caller\nprint(caller.g(1))\n"
    path = os.pathsep.join([str(tmp_path), str(Path(__file__).resolve().parents[1])])  # this checkout's rlscale
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": path}

    def run() -> str:
        proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path,
                              timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    assert run() == "20"
    assert run() == "20"  # from the cache
    callee = tmp_path / "callee.py"
    callee.write_text(callee.read_text().replace("x + 1", "x + 2"))
    os.utime(callee, (time.time() + 5, time.time() + 5))  # a new stamp even within the file system's mtime resolution
    assert run() == "30"


def _on_a_terminal(argv: list[str], until: str, then_signal: int, timeout_s: float = 240.0) -> str:
    """Run ``argv`` with a pseudo-terminal as stdout and stderr; send ``then_signal`` once ``until`` shows; all output."""
    import pty
    import select as _select

    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 columns wide
    # a terminal's foreground job has SIGINT at its default; a shell's background job (a CI runner's, say) passes it
    # on ignored, and then a Ctrl-C landing after the bar's first draw was lost and training ran on (seen once)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, close_fds=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(slave)
    out = b""
    sent = False
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = _select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            if not sent and until in out.decode(errors="replace"):
                proc.send_signal(then_signal)
                sent = True
            if proc.poll() is not None and not ready:
                break
        assert sent, out.decode(errors="replace")[-2000:]
        assert proc.wait(timeout=60) == 0, out.decode(errors="replace")[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return out.decode(errors="replace")


@pytest.mark.slow
def test_a_resumed_runs_progress_bar_counts_from_its_checkpoint_and_ends_before_the_interrupt_message(tmp_path: Path) -> None:
    config = tiny_train_config(tmp_path / "ppo-tiny.yaml")
    runs = tmp_path / "runs"
    first = subprocess.run([RLSCALE, "train", "--config", str(config), "--logdir", str(runs), "--timesteps", "4096",
                            "--no-progress"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    run = runs / "ppo-web-diurnal-s0"
    out = _on_a_terminal([RLSCALE, "train", "--config", str(config), "--resume", str(run)], "/5,000,000 steps",
                         signal.SIGINT)
    frames = [f.strip() for f in re.split(r"[\r\n]+", out) if f.strip()]
    bars = [f for f in frames if "/5,000,000 steps" in f]
    assert bars and re.search(r"\| ([\d,]+)/5,000,000 steps", bars[0])
    assert int(re.search(r"\| ([\d,]+)/", bars[0])[1].replace(",", "")) >= 4096  # where the run stood, not 0
    message = next(i for i, f in enumerate(frames) if f.startswith("interrupted; checkpoint saved"))
    assert not [f for f in frames[message:] if "/5,000,000 steps" in f], frames[message:]


# --------------------------------------------------------------------------- serve's audit log


@pytest.mark.slow
def test_serve_keeps_its_audit_log_out_of_the_working_directory(tmp_path: Path) -> None:
    proc = subprocess.run(
        [RLSCALE, "serve", "--policy", "hpa", "--cluster", "sim", "--steps", "2", "--speedup", "6000", "--port", "0"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "audit.jsonl").exists()
    (log,) = (tmp_path / "runs" / "serve").glob("audit-*.jsonl")
    assert log.stat().st_size > 0


# --------------------------------------------------------------------------- SIGTERM and progress in a file


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_progress_lines_reach_a_pipe_while_training(tmp_path: Path) -> None:
    config = tiny_train_config(tmp_path / "ppo-tiny.yaml")
    proc = subprocess.Popen(
        [RLSCALE, "train", "--config", str(config), "--logdir", str(tmp_path / "runs")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("step "):
            break
    assert lines and lines[-1].startswith("step "), f"no progress line while training: {lines} {proc.stderr.read()}"
    assert "env steps/s" in lines[-1] and "/ 5,000,000" in lines[-1]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "interrupted; checkpoint saved" in out
    assert "lower is better" in out
    state = json.loads((tmp_path / "runs" / "ppo-web-diurnal-s0" / "last" / "state.json").read_text())
    assert 0 < state["num_timesteps"] < 5_000_000


# --------------------------------------------------------------------------- churn next to HPA's


def test_simulate_reports_scaling_actions_per_hour_next_to_hpas_on_the_same_episode(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run_cli(capsys, "simulate", "--policy", "static", "--steps", "120", "--json")
    assert code == 0
    metrics = json.loads(out)["metrics"]
    assert metrics["scaling_actions_per_hour"] == pytest.approx(metrics["scaling_actions"] / 2.0)
    _, hpa_out, _ = run_cli(capsys, "simulate", "--policy", "hpa", "--steps", "120", "--json")
    hpa = json.loads(hpa_out)["metrics"]
    assert metrics["hpa_scaling_actions_per_hour"] == pytest.approx(hpa["scaling_actions_per_hour"])
    code, out, _ = run_cli(capsys, "simulate", "--policy", "static", "--steps", "120")
    row = next(line for line in out.splitlines() if "scaling_actions_per_hour" in line)
    assert f"{hpa['scaling_actions_per_hour']:.1f}" in row and "hpa" in out


def test_the_report_table_has_churn_and_its_ratio_to_hpa() -> None:
    from rlscale.evaluation.report import comparison_table

    def entry(label: str, actions: float) -> dict:
        est = {"mean": 1.0, "ci95": 0.0}
        return {"label": label, "mean": {m: dict(est) for m in ("cost_usd", "slo_violation_rate", "dropped_fraction",
                                                                 "utilisation", "rebalances", "episode_reward")}
                | {"scaling_actions": {"mean": actions, "ci95": 0.0}}}

    data = {"steps": 1440, "step_s": 60.0, "policies": [entry("hpa", 96.0), entry("ppo:x", 1440.0)]}
    head, _, hpa, ppo = comparison_table(data)
    assert head.split(" | ")[-2:] == ["scaling actions / h", "churn / HPA |"]
    assert hpa.split(" | ")[-2:] == ["4.0", "1.00 |"] and ppo.split(" | ")[-2:] == ["60.0", "15.00 |"]


def test_loadgen_target_may_be_a_local_clusters_run_dir(tmp_path: Path) -> None:
    from rlscale.config import ConfigError
    from rlscale.clusters.local.loadgen import resolve_target

    (tmp_path / "cluster.json").write_text(json.dumps({"services": {"api": "http://127.0.0.1:4321/work"}}))
    assert resolve_target(str(tmp_path)) == "http://127.0.0.1:4321/work"
    assert resolve_target("http://127.0.0.1:9/work") == "http://127.0.0.1:9/work"
    with pytest.raises(ConfigError, match="no local cluster there"):
        resolve_target(str(tmp_path / "nowhere"), wait_s=0.0)


def test_the_demo_table_shows_churn_and_fits_80_columns() -> None:
    from rich.console import Console

    from rlscale.evaluation.demo import results_table

    def entry(label: str, actions: float) -> dict:
        means = {m: {"mean": 0.5, "ci95": 0.01} for m in ("slo_violation_rate", "dropped_fraction", "utilisation",
                                                          "rebalances", "episode_reward")}
        means |= {"cost_usd": {"mean": 52.78, "ci95": 1.23}, "scaling_actions": {"mean": actions, "ci95": 3.0}}
        return {"label": label, "mean": means, "cost_vs_oracle": {"mean": 1.05}, "cost_vs_hpa": {"mean": 0.78}}

    data = {"steps": 1440, "step_s": 60.0,
            "policies": [entry("ppo:web-diurnal", 1437.0), entry("target_tracking", 80.0), entry("hpa", 96.0)]}
    console = Console(width=80, record=True, color_system=None)
    console.print(results_table(data, "web-diurnal: mean over 10 held-out seeds"))
    text = console.export_text()
    assert "…" not in text and "act/h" in text
    assert "59.9" in text and "4.0" in text  # 1437 and 96 actions in a day, per hour


def test_the_evaluate_table_keeps_small_costs_apart_and_names_long_specs_in_a_legend_at_80_columns() -> None:
    from rich.console import Console

    from rlscale.evaluation.demo import results_table

    def entry(label: str, cost: float, ci: float, vs_hpa: float) -> dict:
        means = {m: {"mean": 0.0, "ci95": 0.0} for m in ("slo_violation_rate", "dropped_fraction", "rebalances", "episode_reward")}
        means |= {"cost_usd": {"mean": cost, "ci95": ci}, "scaling_actions": {"mean": 40.0, "ci95": 3.0},
                  "utilisation": {"mean": 0.71, "ci95": 0.01}}
        return {"label": label, "mean": means, "cost_vs_oracle": {"mean": 1.05}, "cost_vs_hpa": {"mean": vs_hpa}}

    long = "predictive:target=0.8:headroom=1.1:down=0.1"
    data = {"steps": 72, "step_s": 5.0,
            "policies": [entry("ppo:models/local", 0.019412, 0.00031, 0.7987), entry(long, 0.0221, 0.0004, 0.909),
                         entry("target_tracking", 0.0262, 0.0005, 1.078), entry("hpa", 0.02431, 0.0004, 1.0)]}
    console = Console(width=80, record=True, color_system=None)
    console.print(results_table(data, "local: mean over 10 held-out seeds"))
    text = console.export_text()
    assert "…" not in text and max(len(line.rstrip()) for line in text.splitlines()) <= 80
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.strip() and " = " not in line}
    assert rows["ppo[1]"][1] == "0.0194±0.0003" and rows["hpa"][1] == "0.0243±0.0004"  # not 0.02±0.00 for both
    assert rows["ppo[1]"][3] == "0.799" and rows["predictive[2]"][3] == "0.909"  # the README's rounding of ratios
    assert rows["target_tracking"][0] == "target_tracking"  # short labels stay as they are
    legend = [line.strip() for line in text.splitlines() if " = " in line]
    assert legend == ["ppo[1] = ppo:models/local", f"predictive[2] = {long}"]
