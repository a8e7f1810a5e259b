"""The files ``rlscale assess`` writes: history and trace CSVs, the fitted scenario, the fit report.

Every file is written atomically (``rlscale.atomic``); the report folder is
built aside and swapped in whole. The scenario's YAML carries its provenance
and the fit errors in its header comment and its ``description`` (the
scenario schema has no free-form field), and in full in ``<report>/fit.json``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rlscale.assess.fit import Fit, cost_per_replica_hour, summary
from rlscale.assess.history import History, iso
from rlscale.assess.service import ServiceConfig
from rlscale.atomic import staged_dir, write_json, write_text
from rlscale.config import ConfigError, Scenario, load_scenario


def split(history: History, holdout: float) -> int:
    """Index of the first held-out interval (the last ``holdout`` of the history; at least 2 intervals each side)."""
    n = history.size
    cut = int(round(n * (1.0 - holdout)))
    return min(max(cut, 2), n) if holdout > 0 else n


def csv_rows(t: np.ndarray, values: np.ndarray) -> str:
    return "timestamp,value\n" + "".join(f"{a:.3f},{v:.6g}\n" for a, v in zip(t, values))


def write_history_csv(path: Path, history: History, fit: Fit, cut: int) -> None:
    cols = ["arrivals_rps", "ready", "latency_p95_s", "utilisation"]
    head = "timestamp,value," + ",".join(cols[1:]) + ",sim_latency_p95_s,sim_utilisation,filled,holdout\n"
    lines = []
    start = history.t - history.step_s
    for k in range(history.size):
        cells = [f"{start[k]:.3f}", f"{history.series['arrivals_rps'][k]:.6g}"]
        for c in cols[1:]:
            v = history.series.get(c)
            cells.append("" if v is None or not math.isfinite(v[k]) else f"{v[k]:.6g}")
        cells += [f"{fit.replay.latency_p95_s[k]:.6g}", f"{fit.replay.utilisation[k]:.6g}", str(int(history.filled[k])),
                  str(int(k >= cut))]
        lines.append(",".join(cells))
    write_text(path, head + "\n".join(lines) + "\n")


def scenario_data(config: ServiceConfig, fit: Fit, history: History, cut: int, name: str, trace_name: str,
                  errors_line: str) -> dict[str, Any]:
    train = history.series["arrivals_rps"][:cut]
    ready = history.series["ready"][:cut]
    pool = config.pool
    per_node = pool.replicas_per_node
    step = history.step_s
    cost_scale = max(1e-9, float(np.mean(ready)) * cost_per_replica_hour(config) * step / 3600.0)
    reward = config.reward.model_dump() if config.reward is not None else {
        "cost_scale": float(f"{cost_scale:.6g}"), "w_slo": 10.0, "w_drop": 50.0, "w_churn": 0.002}
    return {
        "name": name,
        "description": (
            f"Fitted by `rlscale assess` to {config.service!r}'s Prometheus history {iso(history.t[0] - step)}.."
            f"{iso(history.t[-1])} ({history.size} intervals of {step:g} s; the first {cut} are the training trace): "
            f"{fit.capacity_rps:.2f} req/s per replica ({fit.capacity_from}), service time {fit.work_s * 1000:.1f} ms "
            f"(cv {fit.service_cv:.2f}), cold start {fit.cold_start_s:.2f} s. Replay of the history: {errors_line}."
        ),
        "step_s": step,
        "substeps": 5,
        "episode_steps": cut,
        "pools": [{
            "name": pool.name, "vcpu": round(fit.servers * per_node, 6),
            "memory_gib": round(config.replica.memory_gib * per_node, 6), "price_per_hour": pool.price_per_hour,
            "provision_delay_s": round(fit.provision_delay_s, 3), "min_nodes": 0,
            "max_nodes": min(256, math.ceil(config.limits.max_replicas / per_node)), "idle_release_s": pool.idle_release_s,
        }],
        "services": [{
            "name": config.service, "kind": "online", "work_s": round(fit.work_s, 6),
            "replica": {"cpu": round(fit.servers, 6), "memory_gib": config.replica.memory_gib},
            "cold_start_s": round(fit.cold_start_s, 3),
            "min_replicas": config.limits.min_replicas, "max_replicas": config.limits.max_replicas,
            "queue_limit": config.limits.queue_limit, "service_cv": round(fit.service_cv, 4),
            "slo": {"p95_latency_s": config.slo_s}, "pools": [pool.name],
            "workload": {"peak_rps": float(f"{max(float(np.percentile(train, 99)), 1e-6):.6g}"), "noise": 0.0,
                         "trace": trace_name},
        }],
        "actions": {"max_step": config.limits.max_step},
        "reward": reward,
        "imbalance": {"drift_sigma": 0.0, "drift_reversion": 0.0, "contention": 0.0},
        "randomisation": {"scale": [0.8, 1.2], "phase_h": [0.0, 0.0], "noise": [0.02, 0.08]},
    }


def errors_line(fit: Fit) -> str:
    e = fit.errors
    return (f"p95 latency off by {e.latency_p95_median_ape:.1%} (median over {e.latency_intervals} intervals; "
            f"{e.latency_p95_wape:.1%} weighted), utilisation by {e.utilisation_wape:.1%} (weighted)")


def figure(path: Path, history: History, fit: Fit, cut: int, slo_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    minutes = (history.t - history.t[0]) / 60.0
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    ax = axes[0]
    ax.plot(minutes, history.series["arrivals_rps"], color="tab:blue", label="arrivals (req/s)")
    ax.set_ylabel("req/s")
    twin = ax.twinx()
    twin.step(minutes, history.series["ready"], where="mid", color="tab:grey", label="ready replicas")
    twin.set_ylabel("replicas")
    ax.legend(loc="upper left")
    twin.legend(loc="upper right")
    ax = axes[1]
    ax.plot(minutes, history.series["latency_p95_s"], color="tab:blue", label="measured p95")
    ax.plot(minutes, fit.replay.latency_p95_s, color="tab:orange", label="simulated p95 (replay)")
    ax.axhline(slo_s, color="tab:red", linestyle="--", label="SLO")
    ax.set_yscale("log")
    ax.set_ylabel("p95 latency (s)")
    ax.legend(loc="upper left")
    ax = axes[2]
    util = history.series.get("utilisation")
    if util is not None:
        ax.plot(minutes, util, color="tab:blue", label="measured utilisation")
    ax.plot(minutes, fit.replay.utilisation, color="tab:orange", label="simulated utilisation")
    ax.set_ylabel("busy fraction")
    ax.set_xlabel("minutes since the start of the history")
    ax.legend(loc="upper left")
    for a in axes:
        if cut < history.size:
            a.axvline(minutes[cut], color="black", linewidth=0.8)
    axes[0].set_title("history replayed in the simulator with the replicas that ran (right of the line: held out)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def markdown(config: ServiceConfig, fit: Fit, history: History, cut: int, files: dict[str, str], command: str) -> str:
    e = fit.errors
    s = history.step_s
    lines = [
        f"# Fit report: {config.service}",
        "",
        f"Command: `{command}`",
        "",
        f"History: {iso(history.t[0] - s)} .. {iso(history.t[-1])}, {history.size} intervals of {s:g} s "
        f"({int(history.filled.sum())} filled by interpolation); training trace: the first {cut}, held out: {history.size - cut}.",
        "",
        "| fitted | value | from |",
        "|---|---:|---|",
        f"| capacity per replica | {fit.capacity_rps:.2f} req/s | {fit.capacity_from} |",
        f"| service time (`work_s`) | {fit.work_s * 1000:.1f} ms | p95 latency, replayed |",
        f"| parallel servers per replica (`replica.cpu`) | {fit.servers:.3f} | capacity x service time |",
        f"| service time's coefficient of variation (`service_cv`) | {fit.service_cv:.2f} | p95 latency's rise with load, replayed |",
        f"| cold start | {fit.cold_start_s:.2f} s | {fit.delays_from} ({fit.scale_up_events} replicas) |",
        f"| provisioning delay | {fit.provision_delay_s:.2f} s | {fit.delays_from if config.pool.provision_delay_s is None else 'service.yaml'} |",
        "",
        "Replay of the whole history in the simulator with the replica counts that actually ran:",
        "",
        "| error | p95 latency | utilisation |",
        "|---|---:|---:|",
        f"| median of per-interval relative errors | {e.latency_p95_median_ape:.1%} | |",
        f"| weighted (sum of absolute errors / sum of measured) | {e.latency_p95_wape:.1%} | {e.utilisation_wape:.1%} |",
        f"| mean of per-interval relative errors | {e.latency_p95_mean_ape:.1%} | {e.utilisation_mean_ape:.1%} |",
        f"| intervals compared | {e.latency_intervals} | {e.utilisation_intervals} |",
        "",
    ]
    lat = history.series["latency_p95_s"]
    ok = np.isfinite(lat) & (lat > 0)
    ratio = np.where(ok, fit.replay.latency_p95_s / np.where(ok, lat, 1.0), np.nan)
    off = int(np.sum(ok & ((ratio > 2.0) | (ratio < 0.5))))
    if off:
        lines += [f"In {off} intervals the simulated p95 is off by more than 2x: see `docs/ASSESS.md` (limits of the fit); "
                  "near saturation the simulator's steady-state queue predicts far longer waits than a few seconds of "
                  "real queueing build.", ""]
    if fit.notes or history.notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in history.notes + fit.notes] + [""]
    lines += ["Files:", ""] + [f"- {k}: `{v}`" for k, v in files.items()] + ["", "![fit](fit.png)", ""]
    return "\n".join(lines)


def write_all(config: ServiceConfig, fit: Fit, history: History, out: Path, report: Path, command: str,
              source: dict[str, Any]) -> Scenario:
    """Write everything; returns the scenario, loaded back through the ordinary loader (so it surely loads)."""
    if out.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"--out {out}: expected a .yaml path, e.g. envs/my-service.yaml")
    cut = split(history, config.history.holdout)
    name = out.stem
    history_csv = out.with_name(f"{name}-history.csv")
    train_csv = out.with_name(f"{name}-train.csv")
    holdout_csv = out.with_name(f"{name}-holdout.csv")
    start = history.t - history.step_s
    arrivals = history.series["arrivals_rps"]
    write_text(train_csv, csv_rows(start[:cut], arrivals[:cut]))
    if cut < history.size:
        write_text(holdout_csv, csv_rows(start[cut:], arrivals[cut:]))
    write_history_csv(history_csv, history, fit, cut)
    line = errors_line(fit)
    data = scenario_data(config, fit, history, cut, name, train_csv.name, line)
    header = (
        f"# Written by `{command}`; edit by re-running it.\n"
        f"# Fit: {fit.capacity_rps:.3f} req/s per replica ({fit.capacity_from}), service time {fit.work_s * 1000:.2f} ms "
        f"(cv {fit.service_cv:.3f}), cold start {fit.cold_start_s:.2f} s, provisioning {fit.provision_delay_s:.2f} s\n"
        f"# Replay errors: {line}\n"
        f"# History: {history_csv.name}; held out: {holdout_csv.name if cut < history.size else 'none'}; report: {report}\n"
    )
    write_text(out, header + yaml.safe_dump(data, sort_keys=False, width=110))
    try:
        scenario = load_scenario(out)
    except ConfigError as err:
        raise ConfigError(f"assess wrote a scenario that does not load ({err}); please report this") from None
    files = {"scenario": str(out), "history (measured and replayed)": str(history_csv), "training trace": str(train_csv)}
    if cut < history.size:
        files["held-out trace"] = str(holdout_csv)
    meta = {"service": config.service, "command": command, "source": source, "fit": summary(fit),
            "history": {"start_unix": float(start[0]), "end_unix": float(history.t[-1]), "step_s": history.step_s,
                        "intervals": history.size, "filled": int(history.filled.sum()), "train_intervals": cut,
                        "notes": history.notes},
            "files": files}
    with staged_dir(report) as tmp:
        figure(tmp / "fit.png", history, fit, cut, config.slo_s)
        write_text(tmp / "report.md", markdown(config, fit, history, cut, files, command))
        write_json(tmp / "fit.json", meta)
    return scenario
