"""The ``rlscale`` command line: the edge where user input, files and clocks meet the core.

A user mistake (bad scenario, unknown policy, missing file) prints one line
and exits 2; nothing below this module prints a traceback at a user.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from rlscale.config import ConfigError

app = typer.Typer(
    name="rlscale",
    help="Reinforcement-learning autoscaling: simulate, train, evaluate, export and serve policies.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()


@app.callback()
def _root() -> None:
    """Reinforcement-learning autoscaling: simulate, train, evaluate, export and serve policies."""

err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def user_errors(func: F) -> F:
    """Turn ConfigError into one line on stderr and exit code 2."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as err:
            err_console.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def metrics_table(title: str, rows: dict[str, dict[str, float]]) -> Table:
    """One column per policy, one row per DESIGN.md section 8 metric."""
    from rlscale.rollout import METRIC_NAMES

    table = Table(title=title)
    table.add_column("metric")
    for name in rows:
        table.add_column(name, justify="right")
    for metric in METRIC_NAMES:
        values = [rows[name][metric] for name in rows]
        table.add_row(metric, *[_fmt(metric, v) for v in values])
    return table


def _fmt(metric: str, value: float) -> str:
    if metric in ("scaling_actions", "rebalances"):
        return f"{value:.0f}"
    if metric == "cost_usd":
        return f"{value:.2f}"
    if metric == "episode_reward":
        return f"{value:.1f}"
    return f"{value:.3f}"


@app.command()
@user_errors
def simulate(
    scenario: str = typer.Option("web-diurnal", help="scenario name in envs/ or a YAML path"),
    policy: str = typer.Option("hpa", help="hpa | static | target_tracking | predictive | ppo:models/NAME"),
    steps: int | None = typer.Option(None, min=1, help="decision intervals (default: the scenario's episode)"),
    seed: int = typer.Option(0, help="episode seed"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Run one policy on one seeded episode and print the DESIGN.md section 8 metrics."""
    from rlscale.config import load_scenario
    from rlscale.policies import make_policy
    from rlscale.rollout import run_policy

    sc = load_scenario(scenario)
    pol = make_policy(policy, sc)
    result = run_policy(sc, pol, [seed], steps=steps)
    values = result.mean()
    if as_json:
        print(json.dumps({"scenario": sc.name, "policy": policy, "seed": seed, "metrics": values}, indent=2))
        return
    console.print(metrics_table(f"{sc.name}, seed {seed}, {steps or sc.episode_steps} steps", {policy: values}))


@app.command()
@user_errors
def train(
    config: str = typer.Option(..., "--config", help="training file, e.g. train/ppo-web-diurnal.yaml"),
    timesteps: int | None = typer.Option(None, min=1, help="override n_timesteps"),
    seed: int | None = typer.Option(None, min=0, max=999, help="override the training seed"),
    n_envs: int | None = typer.Option(None, min=1, help="override the number of parallel simulated clusters"),
    logdir: str = typer.Option("runs", help="parent directory of the run (TensorBoard, checkpoints)"),
    out: str | None = typer.Option(None, help="export the best policy here when done, e.g. models/web-diurnal"),
    resume: str | None = typer.Option(None, help="a run directory or checkpoint to continue from"),
    name: str | None = typer.Option(None, help="run name (default: ppo-<scenario>-s<seed>)"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Train a PPO autoscaler; Ctrl-C saves a checkpoint you can --resume."""
    import shlex
    from pathlib import Path

    from rlscale.config import load_train_config

    cfg = load_train_config(config)
    updates = {k: v for k, v in {"n_timesteps": timesteps, "seed": seed, "n_envs": n_envs}.items() if v is not None}
    cfg = cfg.model_copy(update=updates)
    from rlscale.config import load_scenario

    load_scenario(cfg.scenario)
    run_dir = Path(resume) if resume and Path(resume, "config.json").exists() else Path(logdir) / (name or f"ppo-{cfg.scenario}-s{cfg.seed}")
    from rlscale.train import train as run_training

    command = "rlscale " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    outcome = run_training(cfg, run_dir, resume=Path(resume) if resume else None, progress_bar=progress, command=command)
    state = "interrupted; checkpoint saved" if outcome.interrupted else "done"
    console.print(f"{state}: {outcome.timesteps} steps in {outcome.wall_s:.0f} s, best score {outcome.best_score:.3f}")
    console.print(f"resume with: rlscale train --config {config} --resume {run_dir}")
    console.print(f"watch with:  tensorboard --logdir {run_dir / 'tb'}")
    if out and not outcome.interrupted:
        from rlscale.export import export_run

        card = export_run(run_dir, Path(out))
        ev = card["evaluation"]
        console.print(f"exported to {out}: cost vs HPA {ev['cost_vs_hpa']:.3f} on held-out seeds {ev['held_out_seeds'][0]}..{ev['held_out_seeds'][-1]}")


@app.command()
@user_errors
def export(
    run: str = typer.Argument(..., help="a run directory, checkpoint directory or model.zip"),
    out: str = typer.Option(..., help="output directory, e.g. models/web-diurnal"),
    seeds: int = typer.Option(10, min=1, help="held-out seeds for the card's evaluation against HPA"),
) -> None:
    """Write policy.npz + card.json from a training run (loadable without torch or pickle)."""
    from pathlib import Path

    from rlscale.export import export_run

    card = export_run(Path(run), Path(out), seeds=seeds)
    ev = card["evaluation"]
    console.print(metrics_table(f"{card['scenario']}: held-out seeds {ev['held_out_seeds'][0]}..{ev['held_out_seeds'][-1]}",
                                {"ppo": ev["ppo"], "hpa": ev["hpa"]}))
    console.print(f"cost vs HPA: {ev['cost_vs_hpa']:.3f}; wrote {out}/policy.npz and {out}/card.json")


def main() -> None:
    app(prog_name="rlscale")


if __name__ == "__main__":
    sys.exit(main())
