"""The outputs of an evaluation: TensorBoard runs, ``report.md``, ``results.json`` and PNG plots.

Both output folders are built in a temporary sibling directory and swapped
into place only once complete, so a failure part-way leaves the previous
report (or nothing) behind, never half of a new one.
"""

from __future__ import annotations

import math
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from rlscale.atomic import staged_dir, write_json
from rlscale.evaluation.evaluate import STEP_TAGS, Evaluation, format_estimate, run_name, summary
from rlscale.rollout import METRIC_NAMES

SECONDS_PER_DAY = 86_400.0


def per_hour(count: float, steps: int, step_s: float) -> float:
    """A count over an episode of ``steps`` intervals of ``step_s`` seconds, per hour (e.g. scaling actions: churn)."""
    return float(count) / max(steps * step_s / 3600.0, 1e-12)


def churn(data: dict[str, Any], entry: dict[str, Any]) -> tuple[float, float | None]:
    """A policy's scaling actions per hour and their ratio to HPA's on the same episodes (None without HPA).

    Churn costs: every change restarts or drains replicas, so it is reported next
    to HPA's (DESIGN.md section 10: at most twice HPA's).
    """
    rate = per_hour(entry["mean"]["scaling_actions"]["mean"], data["steps"], data["step_s"])
    hpa = next((p for p in data["policies"] if p["label"] == "hpa"), None)
    if hpa is None:
        return rate, None
    ref = per_hour(hpa["mean"]["scaling_actions"]["mean"], data["steps"], data["step_s"])
    return rate, (rate / ref if ref > 0 else None)


def seed_table(evaluation: Evaluation, result: Any) -> str:
    """Markdown: one row per seed, one column per metric (TensorBoard's Text tab shows it as a table)."""
    head = ["seed", *METRIC_NAMES]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---:"] * len(head)) + "|"]
    for i, seed in enumerate(evaluation.config.seeds):
        cells = [str(seed)] + [format_estimate(m, float(np.asarray(result.episodes[m])[i]), None) for m in METRIC_NAMES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- TensorBoard


def write_tensorboard(evaluation: Evaluation, logdir: Path) -> None:
    """One run per policy: per-step series of the first seed, per-seed episode metrics, and an HParams row.

    Per-step series are scalars (time is their axis). Per-seed episode
    metrics are a histogram per metric at step 0 and a table in the Text tab:
    as scalars with the seed as the step, the default smoothing would draw a
    meaningless trend across seeds.
    """
    from rlscale.evaluation.tblog import RunWriter

    data = summary(evaluation)
    labels = [r.label for r in evaluation.results]
    for r, entry in zip(evaluation.results, data["policies"]):
        with RunWriter(logdir / run_name(r.label)) as w:
            for key, tag in STEP_TAGS.items():
                if key in r.series:
                    w.scalars(tag, r.series[key][:, 0])
            for metric, values in r.episodes.items():
                w.histogram(f"episode/{metric}", np.asarray(values))
            w.text("episode/per_seed", seed_table(evaluation, r))
            finals = {f"mean/{m}": float(entry["mean"][m]["mean"]) for m in METRIC_NAMES}
            for name in ("oracle", "hpa"):
                if f"cost_vs_{name}" in entry:
                    finals[f"mean/cost_vs_{name}"] = float(entry[f"cost_vs_{name}"]["mean"])
            hparams = {"policy": r.label, "scenario": evaluation.scenario.name, "seeds": len(evaluation.config.seeds)}
            w.hparams(hparams, finals, domains={"policy": labels})


# --------------------------------------------------------------------------- plots


def _colours(labels: list[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {label: cmap(i % 10) for i, label in enumerate(labels)}


def figures(evaluation: Evaluation) -> dict[str, Any]:
    """The report's figures by file name (matplotlib, Agg): one colour per policy, axes in units, a legend on each."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    results = evaluation.results
    colour = _colours([r.label for r in results])
    step_s = evaluation.scenario.step_s
    first = evaluation.config.seeds[0]
    T = evaluation.config.episode_steps
    day = min(T, max(1, int(round(SECONDS_PER_DAY / step_s))))
    hours = np.arange(T) * step_s / 3600.0
    title = f"{evaluation.scenario.name}" + (" (trace)" if evaluation.config.trace else "")
    out: dict[str, Any] = {}

    # load vs provisioned capacity over one day, one panel per policy
    cols = min(3, len(results))
    rows = math.ceil(len(results) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 3.2 * rows), sharex=True, sharey=True, squeeze=False)
    for ax, r in zip(axes.flat, results):
        ax.fill_between(hours[:day], r.series["arrivals_rps"][:day, 0], color="0.8", label="load")
        ax.plot(hours[:day], r.series["capacity_rps"][:day, 0], color=colour[r.label], lw=1.4, label=f"{r.label} capacity")
        ax.set_title(r.label, fontsize=10)
        ax.set_xlabel("time (h)")
        ax.set_ylabel("load, capacity (requests/s)")
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(results):]:
        ax.set_visible(False)
    fig.suptitle(f"{title}: load vs ready capacity (ready replicas x nominal replica rate), seed {first}")
    fig.tight_layout()
    out["load_capacity.png"] = fig

    # cost vs SLO violations, every seed and the mean per policy
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    for r in results:
        x = 100.0 * np.asarray(r.episodes["slo_violation_rate"])
        y = np.asarray(r.episodes["cost_usd"])
        ax.scatter(x, y, color=colour[r.label], alpha=0.45, s=22)
        ax.scatter([x.mean()], [y.mean()], color=colour[r.label], s=110, edgecolor="black", label=r.label, zorder=3)
    top = max(100.0 * float(np.max(r.episodes["slo_violation_rate"])) for r in results)
    ax.set_xlim(-0.03 * (top or 1.0), 1.08 * (top or 1.0))
    ax.set_xlabel("SLO violations (% of intervals)")
    ax.set_ylabel("cost per episode (USD)")
    ax.set_title(f"{title}: cost vs SLO violations ({len(evaluation.config.seeds)} seeds; large = mean)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out["cost_vs_slo.png"] = fig

    # replicas and nodes over the episode
    fig, (upper, lower) = plt.subplots(2, 1, figsize=(10.0, 6.5), sharex=True)
    for r in results:
        upper.plot(hours, r.series["replicas"][:, 0], color=colour[r.label], lw=1.1, label=r.label)
        lower.plot(hours, r.series["nodes"][:, 0], color=colour[r.label], lw=1.1, label=r.label)
    upper.set_ylabel("ready replicas (count)")
    lower.set_ylabel("paid nodes (count)")
    for ax in (upper, lower):
        ax.set_xlabel("time (h)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=3)
    upper.set_title(f"{title}: replicas and nodes over time, seed {first}")
    fig.tight_layout()
    out["replicas.png"] = fig

    # p95 latency against the SLO
    fig, ax = plt.subplots(figsize=(10.0, 4.2))
    for r in results:
        ax.plot(hours, np.maximum(r.series["latency_p95_s"][:, 0], 1e-3), color=colour[r.label], lw=1.0, label=r.label)
    ax.plot(hours, results[0].series["slo_s"][:, 0], color="black", ls="--", lw=1.2, label="SLO")
    ax.set_yscale("log")
    ax.set_xlabel("time (h)")
    ax.set_ylabel("p95 latency (s, log scale)")
    ax.set_title(f"{title}: p95 latency vs SLO (worst service, in the first service's SLO units), seed {first}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=4)
    fig.tight_layout()
    out["latency.png"] = fig
    return out


def write_plots(evaluation: Evaluation, out: Path) -> list[str]:
    """Save ``figures(evaluation)`` as PNG files in ``out``; returns their names."""
    import matplotlib.pyplot as plt

    names = []
    for name, fig in figures(evaluation).items():
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        names.append(name)
    return names


# --------------------------------------------------------------------------- markdown


def comparison_table(data: dict[str, Any]) -> list[str]:
    """Markdown: one row per policy, cost with its ratios to the oracle and to HPA, then the other metrics."""
    head = (["policy", "cost_usd", "cost / oracle", "cost / HPA", "vs HPA W/L/T/M"] + [m for m in METRIC_NAMES if m != "cost_usd"]
            + ["scaling actions / h", "churn / HPA"])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for p in data["policies"]:
        cells = [f"`{p['label']}`", format_estimate("cost_usd", p["mean"]["cost_usd"]["mean"], p["mean"]["cost_usd"]["ci95"])]
        for name in ("oracle", "hpa"):
            r = p.get(f"cost_vs_{name}")
            cells.append(format_estimate("ratio", r["mean"], r["ci95"]) if r else "n/a")
        v = p.get("vs_hpa")
        cells.append(f"{v['wins']}/{v['losses']}/{v['ties']}/{v['mixed']}" if v else "n/a")
        for m in METRIC_NAMES:
            if m != "cost_usd":
                cells.append(format_estimate(m, p["mean"][m]["mean"], p["mean"][m]["ci95"]))
        rate, vs_hpa = churn(data, p)
        cells += [f"{rate:.1f}", f"{vs_hpa:.2f}" if vs_hpa is not None else "n/a"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(evaluation: Evaluation, data: dict[str, Any], command: str | None, plots: list[str]) -> str:
    cfg = evaluation.config
    seeds = cfg.seeds
    load = (f"the trace `{cfg.trace.path}` (column `{cfg.trace.column}`), scaled so its 99th percentile is each "
            f"service's `peak_rps`, each seed replaying the day it draws" if cfg.trace else "the scenario's workload generator")
    lines = [
        f"# Evaluation: {evaluation.scenario.name}",
        "",
        f"{len(seeds)} held-out seeds ({seeds[0]}..{seeds[-1]}), {cfg.episode_steps} steps of "
        f"{evaluation.scenario.step_s:g} s each; load from {load}. Every policy plays the same episodes "
        "(paired comparison). Values are means over seeds ± the half-width of a 95% confidence interval "
        "(Student's t); a cost ratio is the ratio of the mean costs (as in the model cards and the README), "
        "± the half-width of the per-seed ratios' interval. "
        "W/L/T/M counts seeds where the policy beats HPA on cost and SLO violations together "
        "(no worse on both, better on one), loses, ties, or trades one for the other. "
        "Scaling actions / h is churn (changes of a service's replica count per hour of the episode); "
        "churn / HPA is its ratio to HPA's.",
        "",
        *comparison_table(data),
        "",
    ]
    floor = data["oracle_floor_usd"]
    lines.append(
        f"Oracle floor: {format_estimate('cost_usd', floor['mean'], floor['ci95'])} USD per episode, a proven lower "
        "bound on what any policy that meets the SLO in every interval without dropping a request pays on these "
        "episodes (`rlscale/policies/oracle.py`)"
        + (f"; {floor['vs_oracle']['mean']:.3f} of the oracle's cost, so the oracle costs at most "
           f"{1.0 / floor['vs_oracle']['mean'] - 1.0:.0%} more than the optimum." if "vs_oracle" in floor else ".")
    )
    oracle = next((p for p in data["policies"] if p["label"] == "oracle"), None)
    if oracle and "notes" in oracle:
        capped = sum(oracle["notes"]["capped_intervals"])
        unresolved = sum(oracle["notes"]["unresolved_intervals"])
        lines += ["", f"Oracle: {unresolved} interval(s) over the SLO or dropping requests in total; {capped} "
                  "interval(s) needed more than `max_replicas` even in its plan (there it runs every replica it may)."]
    lines += ["", "## Figures", ""]
    captions = {
        "load_capacity.png": "Load and ready capacity over one day (first seed), one panel per policy.",
        "cost_vs_slo.png": "Cost against SLO violations, every seed (small) and the mean (large).",
        "replicas.png": "Ready replicas and paid nodes over the episode (first seed).",
        "latency.png": "p95 latency against the SLO (first seed).",
    }
    for name in plots:
        lines += [f"![{captions[name]}]({name})", "", captions[name], ""]
    lines += ["## Reproduce", "", "```", command or "rlscale evaluate ...", "```", ""]
    return "\n".join(lines)


def write_report(evaluation: Evaluation, out: Path, command: str | None = None) -> dict[str, Any]:
    """``report.md``, ``results.json`` and the plots into ``out`` (an existing, empty directory)."""
    from rlscale import __version__

    data = summary(evaluation)
    data["command"] = command
    data["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    data["versions"] = {"rlscale": __version__, "python": sys.version.split()[0], "numpy": np.__version__}
    plots = write_plots(evaluation, out)
    write_json(out / "results.json", data)
    (out / "report.md").write_text(markdown(evaluation, data, command, plots))
    return data


def write_outputs(
    evaluation: Evaluation, report: str | Path | None, logdir: str | Path | None, command: str | None = None
) -> dict[str, Any]:
    """Write the TensorBoard runs and the report, each folder atomically; returns ``results.json``'s content."""
    data: dict[str, Any] = {}
    if logdir is not None:
        with staged_dir(logdir) as tmp:
            write_tensorboard(evaluation, tmp)
    if report is not None:
        with staged_dir(report) as tmp:
            data = write_report(evaluation, tmp, command)
    return data or summary(evaluation)
