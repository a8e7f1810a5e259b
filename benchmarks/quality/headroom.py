"""How far below HPA's cost can any policy go, per scenario, at no more SLO violations?

Two yardsticks on the same held-out episodes as ``docs/RESULTS.md``:

- the oracle (perfect foresight, the least capacity that meets the SLO in
  every interval): its cost relative to HPA's is the room a controller has
  without spending any SLO;
- the cheapest *tuned* baseline: HPA and the predictive policy swept over
  their target utilisation (and the predictive headroom), keeping only the
  settings whose mean SLO-violation rate and dropped fraction are no higher
  than the default HPA's (70% CPU). This is what an SRE could get by turning
  the knobs they already have, and so the bar a learned policy should clear.

Usage: ``python benchmarks/quality/headroom.py [--seeds 10] [--scenario NAME ...]``.
``benchmarks/docs/results.py`` puts the same table at the top of ``docs/RESULTS.md``.

No anchor: a quality table (cost over HPA's on the same seeds).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import numpy as np

from rlscale.config import ConfigError, Scenario, load_scenario, scenario_names
from rlscale.evaluation.evaluate import HELD_OUT_SEED_BASE, shipped_model
from rlscale.policies import HPAPolicy, Policy, PredictivePolicy, make_policy
from rlscale.rollout import run_policy

HPA_TARGETS = (0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
PREDICTIVE = tuple((t, h) for t in (0.7, 0.75, 0.8, 0.85, 0.9) for h in (1.0, 1.1, 1.2))
TARGET_RATIO = 0.8


@dataclass(frozen=True)
class Point:
    label: str
    cost_vs_hpa: float
    slo_violation_rate: float
    dropped_fraction: float


@dataclass(frozen=True)
class Headroom:
    scenario: str
    hpa_slo: float
    oracle: Point
    best_tuned: Point | None
    ppo: Point | None
    swept: int


def _point(label: str, policy: Policy, scenario: Scenario, seeds: list[int], hpa_cost: np.ndarray) -> Point:
    """The cost ratio is that of the mean costs, the one number the cards, the README and evaluate print."""
    e = run_policy(scenario, policy, seeds).episodes
    return Point(label, float(e["cost_usd"].mean() / hpa_cost.mean()), float(e["slo_violation_rate"].mean()),
                 float(e["dropped_fraction"].mean()))


def headroom(name: str, seeds: int = 10) -> Headroom:
    """The oracle's ratio, the best tuned baseline within HPA's SLO, and the shipped PPO policy, on one scenario."""
    sc = load_scenario(name)
    ids = list(range(HELD_OUT_SEED_BASE, HELD_OUT_SEED_BASE + seeds))
    hpa = run_policy(sc, HPAPolicy(sc), ids).episodes
    hpa_slo, hpa_drop = float(hpa["slo_violation_rate"].mean()), float(hpa["dropped_fraction"].mean())
    candidates = [(f"hpa target {t:.2f}", HPAPolicy(sc, target_utilisation=t)) for t in HPA_TARGETS[1:]]
    candidates += [(f"predictive target {t:.2f} headroom {h:.1f}", PredictivePolicy(sc, target_utilisation=t, headroom=h))
                   for t, h in PREDICTIVE]
    within = [p for p in (_point(label, pol, sc, ids, hpa["cost_usd"]) for label, pol in candidates)
              if p.slo_violation_rate <= hpa_slo and p.dropped_fraction <= hpa_drop]
    model = shipped_model(name)
    return Headroom(
        scenario=name,
        hpa_slo=hpa_slo,
        oracle=_point("oracle", make_policy("oracle", sc), sc, ids, hpa["cost_usd"]),
        best_tuned=min(within, key=lambda p: p.cost_vs_hpa) if within else None,
        ppo=_point(model, make_policy(model, sc), sc, ids, hpa["cost_usd"]) if model else None,
        swept=len(candidates),
    )


def table(rows: list[Headroom]) -> list[str]:
    lines = [
        "| scenario | HPA SLO violations | oracle cost / HPA | best tuned baseline within HPA's SLO | its cost / HPA | "
        "shipped PPO cost / HPA | PPO SLO violations | PPO meets 0.8 at ≤ HPA's SLO |",
        "|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in rows:
        best = r.best_tuned
        ppo = r.ppo
        meets = "n/a" if ppo is None else (
            "yes" if ppo.cost_vs_hpa <= TARGET_RATIO and ppo.slo_violation_rate <= r.hpa_slo else "no")
        lines.append(
            f"| {r.scenario} | {r.hpa_slo:.4f} | {r.oracle.cost_vs_hpa:.3f} | "
            f"{best.label if best else f'none of {r.swept}'} | {f'{best.cost_vs_hpa:.3f}' if best else 'n/a'} | "
            f"{f'{ppo.cost_vs_hpa:.3f}' if ppo else 'n/a'} | {f'{ppo.slo_violation_rate:.4f}' if ppo else 'n/a'} | {meets} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--scenario", action="append", help="scenario name or YAML path (default: every one in envs/)")
    args = parser.parse_args()
    start = time.perf_counter()
    try:
        rows = [headroom(name, args.seeds) for name in (args.scenario or scenario_names())]
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(table(rows)))
    print(f"({args.seeds} seeds, {time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
