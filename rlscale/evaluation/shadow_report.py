"""``rlscale shadow-report AUDIT.jsonl``: what the shadowed policy would have done, and what it would have cost.

Input: the audit log of ``rlscale shadow`` (its start event carries the
scenario; each decision line its inputs, the policy's final action, the
guard rails that adjusted it, a fallback reason if any, and ``actual``: what
the cluster ran). Output (a folder, swapped in whole): ``report.md``,
``replicas.png`` and ``shadow.json``.

The simulator's estimate, on the arrival rates that really happened:

* **actual**: the replicas that actually ran, replayed (ready counts as
  measured, no cold start: they were ready);
* **policy (as logged)**: the policy's decisions replayed as desired counts,
  with the scenario's cold start and provisioning delay (they were never
  applied, so they would have had to start);
* **policy (closed loop)** and **hpa (closed loop)**: each policy run in the
  simulator on the same rates, acting on the simulated cluster's own
  metrics: what it would have done had it been in charge;
* with ``--planned`` (a scenario ``rlscale plan`` wrote): the replicas that
  ran and both closed loops again with the planned replica sizes, today's
  sizing against the plan under the same policies.

A **disagreement** is a decision whose replicas differ from the desired
count the acting autoscaler reported at the next decision (its answer to the
same interval).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlscale.atomic import staged_dir, write_json, write_text
from rlscale.config import ConfigError, Scenario, parse_model, read_user_text
from rlscale.sim import Simulator
from rlscale.sim.kernel import O_VIOLATION
from rlscale.spaces import Action


@dataclass
class ShadowLog:
    start: dict[str, Any]
    decisions: list[dict[str, Any]]
    scenario: Scenario


def read_log(path: str | Path) -> ShadowLog:
    """The shadow run's start event and decisions; a wrong file is one ConfigError line."""
    p = Path(path)
    text = read_user_text(p, "audit log", max_bytes=1 << 30)
    start: dict[str, Any] | None = None
    decisions: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise ConfigError(f"{p}: line {number}: not JSON (an audit log is one JSON object per line)") from None
        if record.get("kind") == "event" and record.get("event") == "start":
            if record.get("mode") == "shadow":
                start, decisions = record, []  # the last shadow run in the file
            else:
                start = None
        elif record.get("kind") == "decision" and start is not None and "actual" in record:
            decisions.append(record)
    if start is None:
        raise ConfigError(f"{p}: no `rlscale shadow` run in this audit log (no start event with mode shadow)")
    if len(decisions) < 2:
        raise ConfigError(f"{p}: the shadow run has {len(decisions)} decisions with measurements; need at least 2")
    scenario = parse_model(Scenario, start.get("scenario_config"), f"{p}: start event scenario_config")
    return ShadowLog(start, decisions, scenario)


def _replay(scenario: Scenario, rates: np.ndarray, counts: np.ndarray, warm: bool) -> dict[str, float]:
    """Cost, SLO-violation rate and dropped fraction of the simulator following ``counts`` on ``rates``."""
    sc = scenario
    if warm:
        svc = [s.model_copy(update={"cold_start_s": 0.0, "min_replicas": 0}) for s in sc.services]
        pools = [p.model_copy(update={"provision_delay_s": 0.0}) for p in sc.pools]
        sc = sc.model_copy(update={"services": svc, "pools": pools})
    sim = Simulator(sc, 1)
    sim.reset(0, key=7, initial_replicas=counts[:1].astype(np.int64))
    cost = violated = arrived = dropped = 0.0
    for k in range(rates.size):
        result = sim.step(Action(replicas=counts[k : k + 1, None].astype(np.int64), rebalance=np.zeros(1, dtype=np.int64)),
                          rates[k : k + 1, None].astype(np.float64))
        cost += float(result.cost_usd[0])
        violated += float(result.cluster[0, O_VIOLATION])
        arrived += float(result.arrived.sum())
        dropped += float(result.dropped.sum())
    return {"cost_usd": cost, "slo_violation_rate": violated / max(1, rates.size),
            "dropped_fraction": dropped / arrived if arrived > 0 else 0.0,
            "replica_hours": float(counts.sum()) * sc.step_s / 3600.0}


def _closed_loop(scenario: Scenario, spec: str, rates: np.ndarray) -> dict[str, float]:
    from rlscale.policies import make_policy
    from rlscale.rollout import run_policy

    policy = make_policy(spec, scenario)
    trace = np.concatenate([rates, rates[-1:]])[:, None]
    result = run_policy(scenario, policy, [0], steps=rates.size, trace=trace)
    m = result.mean()
    return {k: float(m[k]) for k in ("cost_usd", "slo_violation_rate", "dropped_fraction", "utilisation", "scaling_actions")}


def analyse(log: ShadowLog, planned: Scenario | None = None) -> dict[str, Any]:
    """The report's numbers; with ``planned`` (``rlscale plan``'s scenario) the same runs again with its replica sizes."""
    d = log.decisions
    rates = np.array([r["actual"]["arrivals_rps"][0] for r in d], dtype=np.float64)
    ready = np.array([r["actual"]["ready"][0] for r in d], dtype=np.float64)
    desired = np.array([r["actual"]["desired"][0] for r in d], dtype=np.float64)
    policy = np.array([math.nan if r.get("final_action") is None else r["final_action"]["replicas"][0] for r in d],
                      dtype=np.float64)
    t = np.array([r.get("time_s", i) for i, r in enumerate(d)], dtype=np.float64)
    known = np.isfinite(policy)
    filled_policy = np.where(known, policy, ready)
    rates = np.nan_to_num(rates, nan=0.0)
    next_desired = np.concatenate([desired[1:], [math.nan]])
    compare = known & np.isfinite(next_desired)
    disagree = compare & (policy != next_desired)
    guards: Counter[str] = Counter()
    for r in d:
        for a in r.get("adjustments", []):
            guards[a.get("guard", "?")] += 1
    fallbacks = Counter((r.get("fallback") or {}).get("reason") for r in d if r.get("fallback"))
    sc = log.scenario
    estimates = {
        "actual (replicas that ran)": _replay(sc, rates, np.rint(ready), warm=True),
        "policy (its decisions, as logged)": _replay(sc, rates, np.rint(filled_policy), warm=False),
    }
    model = str(log.start.get("model", ""))
    closed: dict[str, dict[str, float]] = {}
    for label, spec in (("policy (closed loop)", f"ppo:{model}" if model else None), ("hpa (closed loop)", "hpa")):
        if spec is None:
            continue
        try:
            closed[label] = _closed_loop(sc, spec, rates)
        except ConfigError as err:
            closed[label] = {"error": str(err)}  # type: ignore[dict-item]
    if planned is not None:
        estimates["actual replicas, planned sizes"] = _replay(planned, rates, np.rint(ready), warm=True)
        for label, spec in (("policy (closed loop, planned sizes)", f"ppo:{model}" if model else None),
                            ("hpa (closed loop, planned sizes)", "hpa")):
            if spec is None:
                continue
            try:
                closed[label] = _closed_loop(planned, spec, rates)
            except ConfigError as err:
                closed[label] = {"error": str(err)}  # type: ignore[dict-item]
    actual_cost = estimates["actual (replicas that ran)"]["cost_usd"]
    logged_cost = estimates["policy (its decisions, as logged)"]["cost_usd"]
    return {
        "model": model,
        "policy": log.start.get("policy"),
        "scenario": sc.name,
        "prometheus": log.start.get("prometheus"),
        "step_s": sc.step_s,
        "decisions": len(d),
        "policy_decisions": int((np.array([r.get("acted_by") for r in d]) == "policy").sum()),
        "disagreements": int(disagree.sum()),
        "compared": int(compare.sum()),
        "policy_above": int((compare & (policy > next_desired)).sum()),
        "policy_below": int((compare & (policy < next_desired)).sum()),
        "guards_fired": dict(guards),
        "fallbacks": {str(k): v for k, v in fallbacks.items()},
        "estimates": {**estimates, **closed},
        "savings_vs_actual": (1.0 - logged_cost / actual_cost) if actual_cost > 0 else None,
        "series": {"time_s": (t - t[0]).tolist(), "arrivals_rps": rates.tolist(), "actual_ready": ready.tolist(),
                   "actual_desired": desired.tolist(), "policy": [None if not math.isfinite(x) else x for x in policy]},
    }


def figure(path: Path, data: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    s = data["series"]
    t = np.array(s["time_s"]) / 60.0
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.step(t, s["actual_ready"], where="post", color="tab:grey", label="actual: ready replicas")
    policy = np.array([np.nan if v is None else v for v in s["policy"]], dtype=float)
    name = Path(str(data["model"])).name if data.get("model") else str(data["policy"])
    ax.step(t, policy, where="post", color="tab:orange", label=f"policy ({name}), dry run")
    ax.set_xlabel("minutes since the shadow run started")
    ax.set_ylabel("replicas")
    twin = ax.twinx()
    twin.plot(t, s["arrivals_rps"], color="tab:blue", alpha=0.4, label="arrivals (req/s)")
    twin.set_ylabel("req/s")
    ax.legend(loc="upper left")
    twin.legend(loc="upper right")
    ax.set_title("replicas over time: the shadowed policy vs what ran")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def markdown(data: dict[str, Any], source: str) -> str:
    lines = [
        f"# Shadow report: {data['policy']} on {data['scenario']}",
        "",
        (f"Audit log: `{source}`; {data['decisions']} decisions every {data['step_s']:g} s, "
         f"{data['policy_decisions']} of them by the policy (others: the HPA fallback); Prometheus {data['prometheus']}."),
        "",
        "The simulator's estimate on the arrival rates that really happened (`docs/ASSESS.md`):",
        "",
        "| run | cost USD | SLO-violation rate | dropped fraction |",
        "|---|---:|---:|---:|",
    ]
    for label, m in data["estimates"].items():
        if "error" in m:
            lines.append(f"| {label} | {m['error']} | | |")
        else:
            lines.append(f"| {label} | {m['cost_usd']:.4g} | {m['slo_violation_rate']:.3f} | {m['dropped_fraction']:.4f} |")
    if data.get("planned"):
        sizes = "; ".join(f"{name} cpu {r['cpu'][0]:g} -> {r['cpu'][1]:.3g}, memory {r['memory_gib'][0]:g} -> "
                          f"{r['memory_gib'][1]:.3g} GiB" for name, r in data["planned"]["requests"].items())
        lines += ["", f"Planned sizes from `{data['planned']['scenario']}` (`rlscale plan`): {sizes}."]
    if data["savings_vs_actual"] is not None:
        lines += ["", (f"The policy's logged decisions cost {1 - data['savings_vs_actual']:.3f} of what ran "
                       f"({data['savings_vs_actual']:+.1%} saved).")]
    lines += [
        "",
        (f"Disagreements with the acting autoscaler: {data['disagreements']} of {data['compared']} decisions "
         f"(policy higher {data['policy_above']}, lower {data['policy_below']})."),
        "",
        "Guard rails fired: " + (", ".join(f"{k} x{v}" for k, v in sorted(data["guards_fired"].items())) or "none") + ".",
        "Fallbacks: " + (", ".join(f"{k} x{v}" for k, v in sorted(data["fallbacks"].items())) or "none") + ".",
        "",
        "![replicas](replicas.png)",
        "",
    ]
    return "\n".join(lines)


def write_report(audit: str | Path, out: str | Path | None = None,
                 planned: str | Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Read the audit log, estimate, and write the report folder; returns (folder, data)."""
    log = read_log(audit)
    plan_sc = None
    if planned is not None:
        from rlscale.config import load_scenario

        plan_sc = load_scenario(planned)
        if [x.name for x in plan_sc.services] != [x.name for x in log.scenario.services]:
            raise ConfigError(f"--planned {planned}: services {[x.name for x in plan_sc.services]} are not the shadowed "
                              f"scenario's {[x.name for x in log.scenario.services]}")
    data = analyse(log, plan_sc)
    if plan_sc is not None:
        data["planned"] = {"scenario": str(planned), "requests": {
            x.name: {"cpu": [t.replica.cpu, x.replica.cpu], "memory_gib": [t.replica.memory_gib, x.replica.memory_gib]}
            for t, x in zip(log.scenario.services, plan_sc.services)}}
    folder = Path(out) if out is not None else Path(audit).with_name(Path(audit).stem + "-report")
    with staged_dir(folder) as tmp:
        figure(tmp / "replicas.png", data)
        write_text(tmp / "report.md", markdown(data, str(audit)))
        write_json(tmp / "shadow.json", data)
    return folder, data
