"""The README tells the truth: its generated blocks match the code, and every command in it runs.

Commands run in the order the README gives them, in a scratch directory laid
out like the repository (``envs/``, ``models/``, ``train/``), each in a
shortened form: fewer steps, seeds and seconds, a tiny training config at the
README's config path. A README command this file has no shortened form for
fails the test, so a new command cannot slip in untried. A command aimed at the
reader's own infrastructure (a Kubernetes cluster, their Prometheus, files
they write first) cannot run here: it must at least parse, every option known
and every value valid.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))  # benchmarks.docs.readme

TINY_TRAINING = (
    "# the README's config, shortened by tests/test_readme.py\n"
    "scenario: web-diurnal\nseed: 0\nn_envs: 4\nn_timesteps: 1024\nepisode_steps: 120\n"
    "policy_kwargs: {net_arch: [64, 64], activation_fn: tanh}\nn_steps: 128\nbatch_size: 256\nn_epochs: 1\n"
    "eval: {freq: 100000, seeds: 1, seed_base: 5000, episode_steps: 30}\n"
)


def _set(args: list[str], option: str, value: str) -> list[str]:
    """``args`` with ``option`` set to ``value`` (replaced if present, else appended)."""
    if option in args:
        i = args.index(option)
        return [*args[: i + 1], value, *args[i + 2:]]
    return [*args, option, value]


def _shorten(*pairs: tuple[str, str]) -> Callable[[list[str]], list[str]]:
    def apply(args: list[str]) -> list[str]:
        for option, value in pairs:
            args = _set(args, option, value)
        return args

    return apply


# subcommand -> how to shorten it (the training config is shortened on disk instead)
SHORTER: dict[str, Callable[[list[str]], list[str]]] = {
    "simulate": _shorten(("--steps", "30")),
    "train": lambda args: args,
    "export": _shorten(("--seeds", "2")),
    "evaluate": _shorten(("--seeds", "1"), ("--steps", "30"), ("--workers", "1")),
    "serve": _shorten(("--steps", "3"), ("--speedup", "6000"), ("--port", "0")),
    "loadgen": _shorten(("--duration", "4")),
    "calibrate": _shorten(("--level-seconds", "3"), ("--workers", "1")),
    "cluster": lambda args: args,  # up / down / status: already as short as they get
}
LOCAL_CLUSTER = ("--cluster", "local")
# options whose value is something the command reads (a missing one is the reader's own file)
INPUT_OPTIONS = ("--config", "--scenario", "--model", "--cluster-config", "--resume")
LOOPBACK = ("127.0.0.1", "localhost")


def readme_commands(text: str) -> list[str]:
    """Every command line of the README's ``bash`` blocks (continuations joined, comments dropped)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if line:
                commands.append(line)
    return commands


def needs_own_infrastructure(argv: list[str], cwd: Path) -> bool:
    """A Kubernetes cluster, a Prometheus elsewhere, or an input the reader writes first (or such a command makes)."""
    if "kubernetes" in argv or any(a.startswith("http") and not any(h in a for h in LOOPBACK) for a in argv):
        return True
    inputs = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in INPUT_OPTIONS]
    inputs += [a for i, a in enumerate(argv[2:], 2) if not a.startswith("-") and not argv[i - 1].startswith("-")]
    return any(("/" in a or a.endswith((".yaml", ".yml", ".jsonl", ".csv"))) and ":" not in a and not (cwd / a).exists()
               for a in inputs)


def check_parses(argv: list[str]) -> None:
    """Parse ``rlscale ...`` as the CLI would, without running it: unknown options and bad values fail here."""
    import typer

    from rlscale.cli import app

    command = typer.main.get_command(app)
    ctx = command.make_context("rlscale", [argv[1]])
    args = list(argv[1:])
    while hasattr(command, "get_command") and args:
        sub = command.get_command(ctx, args[0])
        assert sub is not None, f"unknown command in: {' '.join(argv)}"
        command, args = sub, args[1:]
        probe = args[:1] if hasattr(command, "get_command") else args
        ctx = command.make_context(command.name, list(probe), parent=ctx)


def needs_local_cluster(argv: list[str]) -> bool:
    joined = " ".join(argv)
    return " ".join(LOCAL_CLUSTER) in joined or (argv[1:2] == ["loadgen"] and "runs/local" in joined) or argv[1:2] == ["cluster"]


def workspace(tmp: Path) -> Path:
    """A directory laid out like the repository, with the shipped models linked and a tiny training config."""
    shutil.copytree(ROOT / "envs", tmp / "envs")
    (tmp / "models").mkdir()
    for model in (ROOT / "models").iterdir():
        (tmp / "models" / model.name).symlink_to(model, target_is_directory=True)
    (tmp / "train").mkdir()
    for config in (ROOT / "train").glob("*.yaml"):
        (tmp / "train" / config.name).write_text(TINY_TRAINING)
    return tmp


def test_the_readmes_generated_blocks_match_the_code() -> None:
    from benchmarks.docs.readme import render

    text = README.read_text()
    assert "<!-- begin generated: results" in text and "<!-- begin generated: simulate" in text
    _, changed = render(text)
    assert not changed, f"README.md drifted from the code in {changed}: run python benchmarks/docs/readme.py"


def test_the_results_table_reports_churn_next_to_hpas() -> None:
    from benchmarks.docs.readme import results_block

    head, _, *rows = results_block().splitlines()
    assert head.split(" | ")[-2:] == ["PPO actions/h", "HPA actions/h |"]
    assert rows and all(float(r.split(" | ")[-1].rstrip(" |")) > 0 for r in rows)


def test_the_readme_and_results_md_give_each_policys_cost_ratio_as_one_number() -> None:
    """README's PPO / HPA (from the cards, as ``rlscale export`` prints it) is RESULTS.md's ``cost / HPA``, digit for digit."""
    from benchmarks.docs.readme import results_block

    results = (ROOT / "docs" / "RESULTS.md").read_text()
    compared = 0
    for row in results_block().splitlines()[2:]:
        scenario, _, _, ratio = (c.strip() for c in row.strip("|").split("|")[:4])
        found = re.search(rf"^## {re.escape(scenario)}\n.*?^\| `ppo:{re.escape(scenario)}` \| [^|]+ \| [^|]+ \| ([0-9.]+) ±",
                          results, re.DOTALL | re.MULTILINE)
        if found:
            assert found[1] == ratio, scenario
            compared += 1
    assert compared >= 4


def test_results_py_and_generalisation_py_each_rewrite_only_their_own_block() -> None:
    """Rerunning the minute-long results.py must not erase the hours-long generalisation suite's section, nor the reverse."""
    from benchmarks.docs import results
    from benchmarks.quality import generalisation

    doc = (ROOT / "docs" / "RESULTS.md").read_text()
    ours = f"{results.START}\n# Results\n\nnew\n{results.END}"
    theirs = f"{generalisation.START}\n## Generalisation\n\nnew\n{generalisation.END}"
    for module, block, other in ((results, ours, generalisation), (generalisation, theirs, results)):
        spliced = module.splice(doc, block)
        assert block in spliced
        kept = doc[doc.index(other.START):doc.index(other.END) + len(other.END)]
        assert kept in spliced and spliced.count(other.START) == 1
    assert results.splice("", ours) == ours + "\n"


def test_the_readme_runs_the_test_command_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme_commands(README.read_text()) and "\nmake test\n" in ci


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A scratch directory with a short path: the README's `--run-dir runs/local-cluster` holds Unix sockets, whose
    paths may not exceed ~100 bytes, and pytest's own (longer still under pytest-xdist) can exceed that."""
    path = Path(tempfile.mkdtemp(prefix="rls-readme-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("local_cluster", [False, True], ids=["simulated", "local-cluster"])
def test_every_readme_command_runs_in_a_shortened_form(short_tmp: Path, local_cluster: bool) -> None:
    """In two halves that share nothing (each its own workspace), so two workers run them side by side."""
    if local_cluster and not (shutil.which("haproxy") and shutil.which("prometheus")):
        pytest.skip("no HAProxy/Prometheus here; CI installs them (.ci/run)")
    cwd = workspace(short_tmp)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "COLUMNS": "100"}
    background: list[tuple[str, subprocess.Popen[str]]] = []
    ran = []
    try:
        for line in readme_commands(README.read_text()):
            argv = shlex.split(line.rstrip("&").strip())
            if needs_local_cluster(argv) != local_cluster:
                continue  # the other half's
            if argv[0] == "make":  # `make demo` / `make test`: the main job and the suite this test is part of
                assert argv[1:] in (["demo"], ["test"]), line
                continue
            if argv[0] == "source":
                assert (ROOT / argv[1]).parent.is_dir() or Path(sys.prefix, "bin", "activate").is_file(), line
                continue
            if argv[0] == "tensorboard":
                assert (BIN / "tensorboard").is_file(), "tensorboard is not installed with rlscale"
                assert (cwd / argv[argv.index("--logdir") + 1]).is_dir(), f"{line}: nothing to show yet"
                continue
            assert argv[0] == "rlscale", f"README command this test does not know: {line}"
            if needs_own_infrastructure(argv, cwd):
                check_parses(argv)
                continue
            assert argv[1] in SHORTER, f"README command without a shortened form in tests/test_readme.py: {line}"
            short = SHORTER[argv[1]](argv)
            if line.endswith("&"):
                background.append((line, subprocess.Popen(short, cwd=cwd, env=env, text=True,
                                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
                continue
            started = time.monotonic()
            proc = subprocess.run(short, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, f"{line}\n(ran: {shlex.join(short)})\n{proc.stdout}\n{proc.stderr}"
            assert "Traceback" not in proc.stderr, line
            ran.append((shlex.join(short), round(time.monotonic() - started, 1)))
            if argv[1] == "loadgen":
                assert " 0 failed" in proc.stdout, proc.stdout
        for line, proc in background:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"{line}\n{out}\n{err}"
    finally:
        for _, proc in background:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
    if local_cluster:
        assert any(" cluster up " in f" {cmd} " for cmd, _ in ran), ran
    else:
        assert (cwd / "models" / "my-policy" / "card.json").is_file()
        assert any(" simulate " in f" {cmd} " for cmd, _ in ran), ran


def test_the_makefile_installs_pytorchs_cpu_build_when_asked_as_the_readme_says(tmp_path: Path) -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    index = "https://download.pytorch.org/whl/cpu"
    assert f"make demo TORCH_INDEX={index}" in README.read_text().replace("\n", " ")
    plain = subprocess.run([make, "-n", "-C", str(ROOT), f"VENV={tmp_path / 'venv'}", "install"], capture_output=True, text=True)
    cpu = subprocess.run([make, "-n", "-C", str(ROOT), f"VENV={tmp_path / 'venv'}", "install", f"TORCH_INDEX={index}"],
                         capture_output=True, text=True)
    torch_line = lambda out: next(line for line in out.splitlines() if "pip install" in line and " torch==" in line)  # noqa: E731
    assert torch_line(plain.stdout).rstrip().endswith("torch==2.13.0")
    assert torch_line(cpu.stdout).rstrip().endswith(f"torch==2.13.0 --index-url {index}")
