"""What repacking half-empty nodes buys the generalist, and what it costs, on validation data only.

Runs web-diurnal on validation seeds (5000 and up), and web-diurnal's cluster
replaying the first five days of the Alibaba 2018 trace (the generalist's
training days; the held-out tail is the suite's), and web-diurnal with nodes
that take the longest provisioning delay of the training ranges, with HPA, the oracle and the
generalist with and without ``calm_repack`` (and without its one-node drain).
Also the training families without noise (``smooth_days``), where
load falls suddenly and the drain matters. Prints cost over HPA's,
SLO-violating intervals, dropped requests, repacks, and node CPU paid per
replica CPU requested.

    python benchmarks/quality/repacking.py [--model models/general] [--seeds 12] [--delay 270]

No anchor: a quality table (cost over HPA's on the same seeds).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from rlscale.config import PROJECT_ROOT, GeneralRanges, Scenario, load_scenario
from rlscale.evaluation.evaluate import TraceSource, trace_scenario
from rlscale.learn import traffic
from rlscale.learn.traffic import Replay
from rlscale.policies import make_policy
from rlscale.rollout import run_policy

TRACE = PROJECT_ROOT.parent / "shared" / "traces" / "alibaba2018-cpu-300s.csv"
TRAIN_DAYS = 5


def training_days(out: Path) -> Path:
    """The trace's training days as a CSV, cut where the generalist's training cuts them (``Replay``)."""
    days = Replay(str(TRACE), TRAIN_DAYS)
    out.write_text("timestamp,value\n" + "".join(f"{t:g},{v:.6g}\n" for t, v in zip(days.t, days.v)))
    return out


def smooth_days(out: Path, days: int = 10, seed: int = 5000) -> Path:
    """Training families without minute-level noise (ramps, random walks, regimes), a day each, from a validation seed."""
    rng = np.random.default_rng(seed)
    n, step = 1440, 60.0
    shapes = [traffic.ramp, traffic.random_walk, traffic.regimes]
    x = np.concatenate([np.maximum(shapes[d % 3](rng, n, step, 0.0), 0.05) for d in range(days)])
    out.write_text("timestamp,value\n" + "".join(f"{i * step:g},{v:.6g}\n" for i, v in enumerate(x)))
    return out


def row(sc: Scenario, spec: str, seeds: list[int], hpa_cost: float | None) -> dict[str, float]:
    r = run_policy(sc, make_policy(spec, sc), seeds, record=True)
    e = r.episodes
    paid = (r.series["nodes"] * sc.pools[0].vcpu).sum()
    requested = (r.series["replicas"] * sc.services[0].replica.cpu).sum()
    cost = float(e["cost_usd"].mean())
    return {"cost": cost / (hpa_cost or cost), "slo": 100 * float(e["slo_violation_rate"].mean()),
            "drops": 100 * float(e["dropped_fraction"].mean()), "repacks": float(e["rebalances"].mean()),
            "node_per_replica": float(paid / requested), "usd": cost}


SLOW = GeneralRanges().provision_delay_s[1]
"""The slowest node provisioning the generalist trained on: where warm holes are worth most."""


def slow_nodes(sc: Scenario, delay_s: float = SLOW) -> Scenario:
    return sc.model_copy(update={"pools": [p.model_copy(update={"provision_delay_s": delay_s}) for p in sc.pools]})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/general")
    ap.add_argument("--seeds", type=int, default=12)
    ap.add_argument("--delay", type=float, default=SLOW, help="node provisioning of the slow-nodes case, s")
    args = ap.parse_args()
    seeds = list(range(5000, 5000 + args.seeds))
    with tempfile.TemporaryDirectory() as tmp:
        cases = [("web-diurnal", load_scenario("web-diurnal")),
                 ("web-diurnal on Alibaba days 0-5", trace_scenario(load_scenario("web-diurnal"),
                                                                     TraceSource(str(training_days(Path(tmp) / "a.csv"))))),
                 ("smooth families", trace_scenario(load_scenario("web-diurnal"), TraceSource(str(smooth_days(Path(tmp) / "s.csv"))))),
                 (f"web-diurnal, nodes in {args.delay:g} s", slow_nodes(load_scenario("web-diurnal"), args.delay))]
        print("| case | policy | cost / HPA | SLO-violating intervals | dropped | repacks/day | node CPU / replica CPU |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for name, sc in cases:
            hpa = row(sc, "hpa", seeds, None)
            runs = [("HPA", hpa), ("oracle", row(sc, "oracle", seeds, hpa["usd"])),
                    ("generalist", row(sc, f"ppo:{args.model}", seeds, hpa["usd"])),
                    ("generalist, no one-node drain", row(sc, f"ppo:{args.model}:drain=0", seeds, hpa["usd"])),
                    ("generalist, no repacking", row(sc, f"ppo:{args.model}:repack=0", seeds, hpa["usd"]))]
            for label, r in runs:
                print(f"| {name} | {label} | {r['cost']:.3f} | {r['slo']:.2f}% | {r['drops']:.3f}% | "
                      f"{r['repacks']:.0f} | {r['node_per_replica']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
