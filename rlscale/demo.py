"""The flow of ``rlscale evaluate`` and ``rlscale demo``: check inputs, run, write, print.

Kept out of ``cli.py`` so the command functions stay a list of options; the
work itself is in ``rlscale.evaluate`` (running) and ``rlscale.report``
(writing).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from rlscale.config import load_scenario
from rlscale.evaluate import (
    BASELINES, HELD_OUT_SEED_BASE, Evaluation, PolicyResult, evaluate, format_estimate, make_config, shipped_model,
)
from rlscale.report import churn, write_outputs

DEMO_SCENARIO = "web-diurnal"
DEMO_SEEDS = 5


def results_table(data: dict[str, Any], title: str) -> Table:
    """One row per policy: cost (mean ± 95% CI), its ratios to the oracle and to HPA, then the other metrics' means.

    ``act/h`` is churn: scaling actions per hour of the episode.
    """
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0, 0, 1))
    table.add_column("policy", no_wrap=True)
    for name in ("cost USD", "/oracle", "/HPA", "SLO %", "drop %", "util", "scale", "act/h", "rebal"):
        table.add_column(name, justify="right", no_wrap=True)
    for p in data["policies"]:
        mean = {m: p["mean"][m]["mean"] for m in p["mean"]}
        cost = p["mean"]["cost_usd"]
        row = [p["label"], format_estimate("cost_usd", cost["mean"], cost["ci95"]).replace(" ± ", "±")]
        for name in ("oracle", "hpa"):
            r = p.get(f"cost_vs_{name}")
            row.append(f"{r['mean']:.2f}" if r and r["mean"] is not None else "-")
        row += [f"{100 * mean['slo_violation_rate']:.2f}", f"{100 * mean['dropped_fraction']:.2f}",
                f"{mean['utilisation']:.2f}", f"{mean['scaling_actions']:.0f}", f"{churn(data, p)[0]:.1f}",
                f"{mean['rebalances']:.0f}"]
        table.add_row(*row)
    return table


def run_evaluation(
    console: Console,
    scenario: str,
    policies: str | None,
    *,
    seeds: int,
    seed_base: int,
    steps: int | None,
    trace: str | None,
    trace_column: str,
    logdir: str | None,
    report: str | None,
    workers: int,
    command: str | None = None,
) -> Evaluation:
    """Check everything, evaluate, write the TensorBoard runs and the report, print the table and where they are."""
    config = make_config(scenario, policies, seeds=seeds, seed_base=seed_base, steps=steps, trace=trace,
                         trace_column=trace_column, workers=workers)
    if seed_base < HELD_OUT_SEED_BASE:
        console.print(f"note: seeds below {HELD_OUT_SEED_BASE} are the ones training draws from; these results are not held out")
    name = config.scenario.name + ("-" + Path(trace).stem if trace else "")
    logdir = logdir or f"runs/eval-{name}"
    report = report or f"reports/{name}"
    console.print(f"evaluating {', '.join(config.policies)} on {name}: seeds {config.seeds[0]}..{config.seeds[-1]}, "
                  f"{config.episode_steps} steps, {min(config.workers, len(config.policies))} process(es)")

    def done(r: PolicyResult) -> None:
        console.print(f"  {r.label}: {r.wall_s:.1f} s")

    result = evaluate(config, on_done=done)
    command = command or "rlscale " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    data = write_outputs(result, report, logdir, command)
    console.print(results_table(data, f"{name}: mean over {len(config.seeds)} held-out seeds ({result.wall_s:.0f} s)"))
    floor = data["oracle_floor_usd"]
    if "vs_oracle" in floor and floor["vs_oracle"]["mean"] is not None:
        console.print(f"oracle floor (proven lower bound on cost): {floor['mean']:.2f} USD, "
                      f"{floor['vs_oracle']['mean']:.3f} of the oracle's cost")
    console.print(f"report: {report}/report.md (with results.json and the plots as PNG)")
    console.print(f"tensorboard --logdir {logdir}")
    return result


def run_demo(console: Console, *, seeds: int, steps: int | None, logdir: str, report: str, workers: int) -> Evaluation:
    """The shipped web-diurnal policy against HPA and the oracle; the baselines if no policy is shipped yet."""
    sc = load_scenario(DEMO_SCENARIO)
    ppo = shipped_model(DEMO_SCENARIO)
    if ppo:
        policies = f"{ppo},hpa,oracle"
    else:
        console.print(f"no trained policy in models/{DEMO_SCENARIO} yet (rlscale train --config train/ppo-{DEMO_SCENARIO}.yaml "
                      f"--out models/{DEMO_SCENARIO}); evaluating the baselines against the oracle instead")
        policies = ",".join((*BASELINES, "oracle"))
    return run_evaluation(console, sc.name, policies, seeds=seeds, seed_base=HELD_OUT_SEED_BASE, steps=steps, trace=None,
                          trace_column="value", logdir=logdir, report=report, workers=workers, command="rlscale demo")
