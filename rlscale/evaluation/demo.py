"""The flow of ``rlscale evaluate`` and ``rlscale demo``: check inputs, run, write, print.

Kept out of ``cli.py`` so the command functions stay a list of options; the
work itself is in ``rlscale.evaluation.evaluate`` (running) and ``rlscale.evaluation.report``
(writing).
"""

from __future__ import annotations

import math
import shlex
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from rlscale.config import load_scenario
from rlscale.evaluation.evaluate import (
    BASELINES, HELD_OUT_SEED_BASE, EvalConfig, Evaluation, PolicyResult, evaluate, make_config,
    shipped_model,
)
from rlscale.evaluation.tune import TunedRule
from rlscale.evaluation.report import churn, write_outputs

DEMO_SCENARIO = "web-diurnal"
DEMO_SEEDS = 5


LABEL_WIDTH = 15
"""Policy labels longer than this get a short name in the table and a line in its legend."""


def say_command(console: Console, label: str, *argv: object) -> None:
    """A command to copy: quoted for the shell and on one line, however narrow the terminal or odd the path."""
    line = shlex.join(str(a) for a in argv)
    console.print(f"{label} {line}" if label else line, soft_wrap=True, markup=False, highlight=False)


def significant(x: float, digits: int = 3) -> str:
    """``x`` to ``digits`` significant digits without an exponent (0.0194, 52.8, 787, 1440): small costs stay apart."""
    if x != x:
        return "-"
    if x == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{x:.{decimals}f}"


def _estimate(mean: float, half: float | None, digits: int = 3) -> str:
    """``mean±half``, the half-width to the mean's last digit (``0.0194±0.0003``)."""
    text = significant(mean, digits)
    if half is None or half != half:
        return text
    decimals = len(text.split(".")[1]) if "." in text else 0
    return f"{text}±{half:.{decimals}f}"


def short_labels(labels: list[str]) -> dict[str, str]:
    """Each label as the table shows it: itself if short, else its policy name and a number (``predictive[1]``)."""
    out: dict[str, str] = {}
    for label in labels:
        shortened = sum(out[x] != x for x in out)
        out[label] = label if len(label) <= LABEL_WIDTH else f"{label.split(':')[0][:LABEL_WIDTH - 4]}[{shortened + 1}]"
    return out


def results_table(data: dict[str, Any], title: str) -> Table:
    """One row per policy: cost (mean ± 95% CI), its ratios to the oracle and to HPA, then the other metrics' means.

    ``act/h`` is churn: scaling actions per hour of the episode (the count is in the report). Numbers have
    significant digits, not fixed decimals, so a cost of 0.0194 is not printed as 0.02 beside 0.0243; a label
    longer than ``LABEL_WIDTH`` gets a short name and a line in the caption (the legend). The table fits 80 columns.
    """
    names = short_labels([p["label"] for p in data["policies"]])
    legend = [f"{short} = {label}" for label, short in names.items() if short != label]
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=0,
                  caption="\n".join(legend) or None, caption_justify="left")
    table.add_column("policy", no_wrap=True)
    for name in ("cost USD", "/oracle", "/HPA", "SLO %", "drop %", "util", "act/h", "rebal"):
        table.add_column(name, justify="right", no_wrap=True)
    for p in data["policies"]:
        mean = {m: p["mean"][m]["mean"] for m in p["mean"]}
        cost = p["mean"]["cost_usd"]
        row = [names[p["label"]], _estimate(cost["mean"], cost["ci95"])]
        for name in ("oracle", "hpa"):
            r = p.get(f"cost_vs_{name}")
            row.append(significant(r["mean"]) if r and r["mean"] is not None else "-")
        row += [significant(100 * mean["slo_violation_rate"], 2), significant(100 * mean["dropped_fraction"], 2),
                significant(mean["utilisation"], 2), significant(churn(data, p)[0]), f"{mean['rebalances']:.0f}"]
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
    tune: bool = False,
    history_days: float | None = None,
) -> Evaluation:
    """Check everything, evaluate, write the TensorBoard runs and the report, print the table and where they are.

    ``tune``: first sweep HPA's and the predictive policy's knobs on the same seeds and add the best tuned
    rule (the cheapest setting within default HPA's SLO-violation rate and drops) to the policies.
    """
    config = make_config(scenario, policies, seeds=seeds, seed_base=seed_base, steps=steps, trace=trace,
                         trace_column=trace_column, workers=workers, history_days=history_days)
    tuned = None
    if tune:
        config, tuned = add_tuned_rule(console, config)
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
    if tuned is not None:
        from rlscale.atomic import write_json

        write_json(Path(report) / "tune.json", tuned_summary(tuned))
    console.print(results_table(data, f"{name}: mean over {len(config.seeds)} held-out seeds ({result.wall_s:.0f} s)"))
    floor = data["oracle_floor_usd"]
    if "vs_oracle" in floor and floor["vs_oracle"]["mean"] is not None:
        console.print(f"oracle floor (proven lower bound on cost): {floor['mean']:.2f} USD, "
                      f"{floor['vs_oracle']['mean']:.3f} of the oracle's cost")
    console.print(f"report: {report}/report.md (with results.json and the plots as PNG)")
    say_command(console, "", "tensorboard", "--logdir", logdir)
    return result


def add_tuned_rule(console: Console, config: EvalConfig) -> tuple[EvalConfig, TunedRule]:
    """Sweep the rules on the config's seeds (a progress bar), print the winner, add it to the policies."""
    from rich.progress import Progress

    from rlscale.evaluation.tune import CHURN_BOUND, best_tuned_rule, rule_grid

    grid = rule_grid()
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"tuning {len(grid)} rule settings", total=len(grid))
        tuned = best_tuned_rule(config.scenario, config.seeds, config.steps, grid=grid,
                                on_point=lambda _: bar.advance(task))
    if tuned.best is None:
        console.print(f"best tuned rule: none of {len(grid)} settings stays within default HPA's SLO-violation rate "
                      f"({tuned.hpa.slo_violation_rate:.4f}) and dropped fraction ({tuned.hpa.dropped_fraction:.4f})")
        return config, tuned
    b = tuned.best
    console.print(f"best tuned rule: {b.spec}: {b.cost_usd / tuned.hpa.cost_usd:.3f} of HPA's cost at "
                  f"{b.slo_violation_rate:.4f} SLO violations (HPA {tuned.hpa.slo_violation_rate:.4f}); "
                  f"{len(tuned.within)} of {len(grid)} settings within HPA's SLO and drops")
    bounded = tuned.best_within_churn()
    if bounded is not None and bounded != b:
        console.print(f"best tuned rule within {CHURN_BOUND:g}x HPA's scaling actions and rebalances: {bounded.spec}: "
                      f"{bounded.cost_usd / tuned.hpa.cost_usd:.3f} of HPA's cost (the best above churns "
                      f"{b.churn / max(tuned.hpa.churn, 1e-9):.1f}x HPA's)")
    # a bounded winner that plays exactly like default HPA would only repeat HPA's row
    same_as_hpa = bounded is not None and (bounded.cost_usd, bounded.churn) == (tuned.hpa.cost_usd, tuned.hpa.churn)
    wanted = [b.spec, *([bounded.spec] if bounded is not None and not same_as_hpa else []), "hpa"]
    specs = (*config.policies, *(s for s in dict.fromkeys(wanted) if s not in config.policies))
    return replace(config, policies=specs), tuned


def tuned_summary(tuned: TunedRule) -> dict[str, Any]:
    return {
        "hpa": asdict(tuned.hpa),
        "best": None if tuned.best is None else asdict(tuned.best),
        "best_within_churn": None if (bounded := tuned.best_within_churn()) is None else asdict(bounded),
        "points": [{**asdict(p), "within_hpa_slo": tuned.admissible(p)} for p in tuned.points],
    }


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
