"""Does `rlscale plan` recover a replica's real size, and does the planned scenario cost less at the same SLO and drops?

Each case is a shipped scenario (or a case of the generalisation suite)
whose replicas declare a request 1.5-2x what they really use (``cpu`` vs
``cpu_used``, ``memory_gib`` vs ``memory_used_gib``; ``rlscale/config.py``),
or exactly what they use (the right-sized control). For each case:

1. a usage history: HPA runs today's scenario on training seeds 1 and 2 (one
   day each) and each interval's real per-replica use is recorded
   (``rlscale.assess.simulated``: CPU = busy fraction x the cores a busy
   replica uses; memory by the stated working-set model);
2. ``make_plan`` on that history (the defaults of ``rlscale plan``), and the
   planned scenario it writes;
3. today's and the planned scenario under HPA and under ``models/general`` on
   the same test seeds (10000..), cost, SLO-violation rate and dropped
   fraction; the planned run is non-inferior when both rates are
   <= max(1.1 x, + 0.005 percentage points over) today's under the same
   policy (DESIGN.md section 11), and the generalist's is also held to
   today's HPA.

Run: ``python benchmarks/quality/plan.py [--seeds 8] [--json docs/data/planning.json]``
(prints the Markdown table of docs/PLANNING.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rlscale.assess.plan import Method  # noqa: E402
from rlscale.assess.planning import make_plan, planned_data  # noqa: E402
from rlscale.assess.simulated import simulated_usage  # noqa: E402
from rlscale.atomic import write_json  # noqa: E402
from rlscale.config import Scenario, parse_model, read_yaml  # noqa: E402
from rlscale.policies import make_policy  # noqa: E402
from rlscale.rollout import run_policy  # noqa: E402

MARGIN = 0.15
USAGE_SEEDS = (1, 2)
CASES: list[tuple[str, str, float, bool]] = [
    # (case, scenario file, declared / used, memory declared = peak + margin (a right size) or x that)
    ("web-diurnal, 2x", "envs/web-diurnal.yaml", 2.0, False),
    ("web-diurnal, 1.5x", "envs/web-diurnal.yaml", 1.5, False),
    ("web-diurnal, right-sized", "envs/web-diurnal.yaml", 1.0, True),
    ("suite delay-x3, 2x", "envs/generalisation/delay-x3.yaml", 2.0, False),
    ("suite peak-x3, 1.5x", "envs/generalisation/peak-x3.yaml", 1.5, False),
    ("suite family-bimodal-cron, 1.75x", "envs/generalisation/family-bimodal-cron.yaml", 1.75, False),
    ("suite five-services, 1.6x", "envs/generalisation/five-services.yaml", 1.6, False),
    ("suite five-services, right-sized", "envs/generalisation/five-services.yaml", 1.0, True),
]


def oversized(path: str, factor: float, right_memory: bool) -> tuple[dict[str, Any], Scenario]:
    """The scenario with each CPU service's request ``factor`` x its real use (the shipped request is the real use)."""
    raw = read_yaml(ROOT / path)
    for svc in raw["services"]:
        rep = svc["replica"]
        if rep.get("gpus", 0):
            continue
        cpu, mem = float(rep["cpu"]), float(rep["memory_gib"])
        rep.update({"cpu_used": cpu, "memory_used_gib": mem, "cpu": round(cpu * factor, 6),
                    "memory_gib": round(mem * (1 + MARGIN) if right_memory else mem * factor, 6)})
    trace_base = (ROOT / path).parent
    for svc in raw["services"]:
        trace = svc.get("workload", {}).get("trace")
        if trace and not Path(trace).is_absolute():
            svc["workload"]["trace"] = str((trace_base / trace).resolve())
    return raw, parse_model(Scenario, raw, path)


def non_inferior(x: float, ref: float, absolute: float) -> bool:
    return x <= max(1.1 * ref, ref + absolute) + 1e-12


def evaluate(sc: Scenario, spec: str, seeds: list[int]) -> dict[str, float]:
    m = run_policy(sc, make_policy(spec, sc), seeds).mean()
    return {k: m[k] for k in ("cost_usd", "slo_violation_rate", "dropped_fraction")}


def run_case(name: str, path: str, factor: float, right_memory: bool, seeds: list[int], method: Method) -> dict[str, Any]:
    t0 = time.time()
    raw, today = oversized(path, factor, right_memory)
    usages = simulated_usage(today, "hpa", USAGE_SEEDS, end_unix=1.7e9)
    plan = make_plan(today, {u.service: u for u in usages}, method, source="simulated usage")
    planned = parse_model(Scenario, planned_data(raw, ROOT / path, ROOT / path, plan, "benchmarks/quality/plan.py"), name)
    sizes = []
    for svc, new in zip(today.services, planned.services):
        sp = plan.sized(svc.name)
        if sp is None or sp.cpu is None or sp.memory is None:
            continue
        used_cpu, used_mem = svc.replica.cpu_used or svc.replica.cpu, svc.replica.memory_used_gib or svc.replica.memory_gib
        sizes.append({"service": svc.name, "declared_cpu": svc.replica.cpu, "real_cpu": used_cpu, "planned_cpu": new.replica.cpu,
                      "cpu_error": new.replica.cpu / used_cpu - 1, "cpu_change": new.replica.cpu / svc.replica.cpu - 1,
                      "declared_memory_gib": svc.replica.memory_gib, "peak_memory_gib": used_mem,
                      "planned_memory_gib": new.replica.memory_gib,
                      "memory_error": new.replica.memory_gib / (used_mem * (1 + MARGIN)) - 1,
                      "memory_change": new.replica.memory_gib / svc.replica.memory_gib - 1,
                      "cpu_risk": sp.cpu.risk, "cpu_lower": sp.cpu.lower, "cpu_upper": sp.cpu.upper})
    runs: dict[str, dict[str, float]] = {}
    for label, sc in (("today", today), ("planned", planned)):
        for spec in ("hpa", "ppo:models/general"):
            runs[f"{label} {spec}"] = evaluate(sc, spec, seeds)
    verdict = {}
    for spec in ("hpa", "ppo:models/general"):
        a, b = runs[f"today {spec}"], runs[f"planned {spec}"]
        verdict[spec] = {
            "saving": 1 - b["cost_usd"] / a["cost_usd"],
            "slo_ok": non_inferior(b["slo_violation_rate"], a["slo_violation_rate"], 5e-5),
            "drops_ok": non_inferior(b["dropped_fraction"], a["dropped_fraction"], 5e-5),
        }
    h, g = runs["today hpa"], runs["planned ppo:models/general"]
    verdict["general planned vs hpa today"] = {
        "saving": 1 - g["cost_usd"] / h["cost_usd"],
        "slo_ok": non_inferior(g["slo_violation_rate"], h["slo_violation_rate"], 5e-5),
        "drops_ok": non_inferior(g["dropped_fraction"], h["dropped_fraction"], 5e-5),
    }
    mix_saving = (1 - plan.planned.cost_per_hour / plan.today.cost_per_hour) if plan.today and plan.planned else None
    out = {"case": name, "scenario": path, "factor": factor, "sizes": sizes, "runs": runs, "verdict": verdict,
           "peak_mix_saving": mix_saving, "seconds": time.time() - t0}
    print(json.dumps(out), file=sys.stderr, flush=True)
    return out


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| case | CPU declared -> planned (real) | error | memory planned / (peak + 15%) - 1 | "
             "saving HPA | saving general | SLO, drops non-inferior (HPA / general) |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in results:
        s = r["sizes"]
        cpu = "; ".join(f"{x['declared_cpu']:g} -> {x['planned_cpu']:.3g} ({x['real_cpu']:g})" for x in s)
        err = ", ".join(f"{x['cpu_error']:+.1%}" for x in s)
        mem = ", ".join(f"{x['memory_error']:+.1%}" for x in s)
        v = r["verdict"]

        def ok(k: str) -> str:
            return ("yes" if v[k]["slo_ok"] else "SLO no") + ("" if v[k]["drops_ok"] else ", drops no")

        lines.append(f"| {r['case']} | {cpu} | {err} | {mem} | {v['hpa']['saving']:.1%} | "
                     f"{v['ppo:models/general']['saving']:.1%} | {ok('hpa')} / {ok('ppo:models/general')} |")
    lines += ["", "| case | policy | today cost | planned cost | today SLO-violation rate | planned | today dropped | planned |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for spec in ("hpa", "ppo:models/general"):
            a, b = r["runs"][f"today {spec}"], r["runs"][f"planned {spec}"]
            lines.append(f"| {r['case']} | {spec} | {a['cost_usd']:.2f} | {b['cost_usd']:.2f} | {a['slo_violation_rate']:.4f} | "
                         f"{b['slo_violation_rate']:.4f} | {a['dropped_fraction']:.5f} | {b['dropped_fraction']:.5f} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--seed-base", type=int, default=10_000)
    p.add_argument("--json", default=None, help="write the results here (docs/data/planning.json)")
    p.add_argument("--cases", default=None, help="comma-separated case indices (default: all)")
    p.add_argument("--percentile", type=float, default=Method().cpu_percentile, help="CPU target percentile")
    args = p.parse_args()
    seeds = list(range(args.seed_base, args.seed_base + args.seeds))
    chosen = [CASES[int(i)] for i in args.cases.split(",")] if args.cases else CASES
    method = Method(cpu_percentile=args.percentile, upper_percentile=max(args.percentile, Method().upper_percentile))
    results = [run_case(*case, seeds=seeds, method=method) for case in chosen]
    if args.json:
        write_json(args.json, {"command": "python " + " ".join(sys.argv), "seeds": seeds, "usage_seeds": list(USAGE_SEEDS), "method": method.__dict__,
                               "results": results})
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
