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


def main() -> None:
    app(prog_name="rlscale")


if __name__ == "__main__":
    sys.exit(main())
