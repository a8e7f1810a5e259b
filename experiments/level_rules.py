"""Hand-made level rules through the generalist's decoder, on validation data only: what choosing a level buys.

The network of ``models/general`` keeps the level it starts from (65%) on
almost every interval. Before asking a network to learn when to run hotter,
this asks whether any simple rule on the service's own recent history can:

- ``fixed:level=L``: one target utilisation throughout (0.65 is where the network starts);
- ``spread:z=Z:memory=M``: ``U_MAX / exp(Z x sigma)``, where sigma is the
  root mean square (over ~M intervals) of demand's rise over the service's
  lead time: hot where demand has been predictable, cautious where it jumped;
- ``quiet:step=D:window=W:top=T``: start at 0.65, add D after every W
  intervals without an SLO violation or a drop, up to T; back to 0.65 at
  the first violation or drop (additive increase, reset on harm);
- ``worst:crit=C:memory=M:samples=K:top=T``: ``C`` over the worst rise of
  demand within the lead time seen in the last ``M`` intervals, between 0.65
  and ``T``, and 0.65 until ``K`` intervals have been seen: hot only where the
  recent past shows no jump a hotter level could not absorb.

Every rule goes through ``RelativeDecoder.replicas_at``: the same windows,
tolerance, margin floor, limits and calm repacking as the network's levels.
Cases: the four shipped scenarios on validation seeds (5000 and up), scored
as training scores checkpoints (``GeneralEvalResult.score``); web-diurnal's
cluster replaying the Alibaba trace's five training days; and the same cluster
replaying training families without minute-level noise (``smooth-families``:
ramps, random walks, regime switches, from a validation seed); and web-diurnal
with the slowest node provisioning of the training ranges. Never the
generalisation suite.

    python experiments/level_rules.py [--seeds 8] [RULE ...]

No anchor: a quality table. A trial kept for the record: ``docs/experiments/level-rules.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from rlscale.config import ConfigError, Scenario, load_scenario
from rlscale.evaluation.evaluate import TraceSource, trace_scenario
from rlscale.learn.general_eval import GeneralEvalResult
from rlscale.policies import make_policy, parse_parameters
from rlscale.policies.general import GeneralPolicy
from rlscale.policies.hpa import HPAPolicy
from rlscale.policies.relative import U_MAX
from rlscale.rollout import Rollout, run_policy
from rlscale.spaces import Action, Metrics

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root: benchmarks.*
from benchmarks.quality.repacking import SLOW, slow_nodes, smooth_days, training_days  # noqa: E402

SCENARIOS = ("web-diurnal", "flash-crowd", "mixed-pools", "ml-platform")
DEFAULT_RULES = ("fixed:level=0.65", "fixed:level=0.72", "spread:z=3:memory=120", "spread:z=4:memory=120",
                 "quiet:step=0.03:window=180:top=0.84", "quiet:step=0.05:window=720:top=0.84")
START = 0.65
BUFFER = 64
RULE_PARAMS = {"fixed": ("level",), "spread": ("z", "memory"), "quiet": ("step", "window", "top"),
               "worst": ("crit", "memory", "samples", "top")}


def parse_rule(spec: str) -> tuple[str, dict[str, float]]:
    """The baselines' ``name:key=value`` syntax and errors (``parse_parameters``), with every key required."""
    kind, _, text = spec.partition(":")
    if kind not in RULE_PARAMS:
        raise ConfigError(f"rule {spec!r}: expected one of {', '.join(RULE_PARAMS)}")
    params = parse_parameters(spec, kind, text, {k: k for k in RULE_PARAMS[kind]}) if text else {}
    missing = [k for k in RULE_PARAMS[kind] if k not in params]
    if missing:
        raise ConfigError(f"rule {spec!r}: missing {', '.join(missing)}")
    return kind, params


class LevelRule(GeneralPolicy):
    """The generalist's observation and decoder with a hand-made level in place of the network."""

    def __init__(self, spec: str, scenario: Scenario) -> None:
        self.kind, self.p = parse_rule(spec)
        super().__init__(None, scenario, name=spec)

    def reset(self, n: int = 1) -> None:
        super().reset(n)
        S = self.traits.n_services
        lead = self.traits.arrays()["lead_s"] / self.traits.step_s
        self.back = np.clip(np.round(np.maximum(lead, 1.0)).astype(np.int64) + 1, 1, BUFFER - 1)
        self.arrivals = np.zeros((n, BUFFER, S))
        self.seen = 0
        self.rise_sq = np.zeros((n, S))
        self.level = np.full((n, S), START)
        self.quiet = np.zeros((n, S))
        self.levels: list[np.ndarray] = []
        self.worst_rise = np.zeros((n, int(self.p.get("memory", 1)), S))

    def _push(self) -> np.ndarray:
        """This interval's arrivals ``[N, S]``, also kept in a ``BUFFER``-interval history the rules look back over."""
        a = self.builder.history[:, 0]
        self.arrivals = np.roll(self.arrivals, 1, axis=1)
        self.arrivals[:, 0] = a
        if self.seen == 0:
            self.arrivals[:] = a[:, None, :]
        self.seen += 1
        return a

    def _worst(self) -> np.ndarray:
        a = self._push()
        k = int(self.back.max())
        low = self.arrivals[:, 1 : k + 1].min(axis=1)
        ratio = np.maximum(a, 1e-9) / np.maximum(low, 1e-9)
        self.worst_rise = np.roll(self.worst_rise, 1, axis=1)
        self.worst_rise[:, 0] = ratio
        worst = self.worst_rise.max(axis=1)
        level = np.clip(self.p["crit"] / np.maximum(worst, 1e-9), START, self.p["top"])
        return np.where(self.seen > self.p["samples"], level, START)

    def _spread(self) -> np.ndarray:
        a = self._push()
        past = self.arrivals[:, self.back, np.arange(a.shape[1])]
        rise = np.maximum(np.log(np.maximum(a, 1e-9) / np.maximum(past, 1e-9)), 0.0)
        alpha = 1.0 / self.p["memory"]
        self.rise_sq = (1.0 - alpha) * self.rise_sq + alpha * rise ** 2
        return np.clip(U_MAX / np.exp(self.p["z"] * np.sqrt(self.rise_sq)), 0.4, 0.9)

    def _quiet(self) -> np.ndarray:
        hurt = self.builder.hurting
        self.quiet = np.where(hurt, 0.0, self.quiet + 1.0)
        up = self.quiet >= self.p["window"]
        self.level = np.where(hurt, START, np.where(up, np.minimum(self.level + self.p["step"], self.p["top"]), self.level))
        self.quiet = np.where(up, 0.0, self.quiet)
        return self.level

    def act(self, metrics: Metrics) -> Action:
        self.observe(metrics)
        if self.kind == "fixed":
            level = np.full(self.builder.current.shape, self.p["level"])
        elif self.kind == "spread":
            level = self._spread()
        elif self.kind == "worst":
            level = self._worst()
        else:
            level = self._quiet()
        self.levels.append(level.ravel().copy())
        verb = self.verb(metrics, np.zeros(metrics.n, dtype=np.int64))
        return Action(replicas=self.decoder.replicas_at(level, self.builder), rebalance=verb)


def cases(tmp: Path) -> list[tuple[str, Scenario]]:
    wd = load_scenario("web-diurnal")
    alibaba = trace_scenario(wd, TraceSource(str(training_days(tmp / "a.csv"))))
    smooth = trace_scenario(wd, TraceSource(str(smooth_days(tmp / "s.csv"))))
    return [(n, load_scenario(n)) for n in SCENARIOS] + [("alibaba-training-days", alibaba), ("smooth-families", smooth),
                                                         (f"nodes-in-{SLOW:g}s", slow_nodes(wd))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rules", nargs="*", default=list(DEFAULT_RULES))
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--model", default="models/general", help="the shipped network, for reference")
    args = ap.parse_args()
    try:
        for spec in args.rules:
            parse_rule(spec)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seeds = list(range(5000, 5000 + args.seeds))
    with tempfile.TemporaryDirectory() as tmp:
        todo = cases(Path(tmp))
        hpa = {name: run_policy(sc, HPAPolicy(sc), seeds) for name, sc in todo}
        print(f"validation seeds {seeds[0]}..{seeds[-1]}; each cell: cost / HPA, SLO-violating intervals, dropped, "
              "mean level; score over the four scenarios (lower is better)\n")
        print("| policy | score | " + " | ".join(name for name, _ in todo) + " |")
        print("|---|---:|" + "---|" * len(todo))
        for spec in [f"ppo:{args.model}", *args.rules]:
            runs: dict[str, Rollout] = {}
            cells = []
            for name, sc in todo:
                policy = make_policy(spec, sc) if spec.startswith("ppo:") else LevelRule(spec, sc)
                r = runs[name] = run_policy(sc, policy, seeds)
                e, h = r.mean(), hpa[name].mean()
                level = f", {np.concatenate(policy.levels).mean():.2f}" if isinstance(policy, LevelRule) else ""
                cells.append(f"{e['cost_usd'] / h['cost_usd']:.3f}, {100 * e['slo_violation_rate']:.2f}% "
                             f"(HPA {100 * h['slo_violation_rate']:.2f}%), {100 * e['dropped_fraction']:.3f}% "
                             f"(HPA {100 * h['dropped_fraction']:.3f}%){level}")
            score = GeneralEvalResult({n: (runs[n], hpa[n]) for n in SCENARIOS}).score
            print(f"| `{spec}` | {score:.3f} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
