"""The best tuned rule (DESIGN.md section 11): what an SRE reaches by turning the knobs they already have.

A learned policy that only beats HPA at its 70% default has not beaten what
anyone would run. ``best_tuned_rule`` sweeps HPA (target utilisation,
scale-down window) and the predictive policy (target, headroom, scale-down
rate) on the same episodes, and keeps the cheapest setting whose
SLO-violation rate and dropped fraction are no higher than default HPA's.
Specs use the policy-parameter syntax, so the winner can be passed back to
``rlscale evaluate --policies``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

from rlscale.config import Scenario
from rlscale.policies import make_policy
from rlscale.policies.calibration import non_inferior
from rlscale.rollout import run_policy

HPA_TARGETS = (0.5, 0.6, 0.7, 0.8, 0.9)
HPA_WINDOWS_S = (60, 150, 300)
PREDICTIVE_TARGETS = (0.6, 0.7, 0.8, 0.9)
PREDICTIVE_HEADROOM = (1.0, 1.1, 1.2)
PREDICTIVE_DOWN = (0.1, 0.3)


def rule_grid() -> list[str]:
    """Every setting the sweep tries, as policy specs."""
    specs = [f"hpa:target={t:g}:window={w:g}" for t in HPA_TARGETS for w in HPA_WINDOWS_S]
    specs += [f"predictive:target={t:g}:headroom={h:g}:down={d:g}"
              for t in PREDICTIVE_TARGETS for h in PREDICTIVE_HEADROOM for d in PREDICTIVE_DOWN]
    return specs


@dataclass(frozen=True)
class RulePoint:
    spec: str
    cost_usd: float
    slo_violation_rate: float
    dropped_fraction: float
    scaling_actions: float
    rebalances: float = 0.0

    @property
    def churn(self) -> float:
        """Scaling actions and rebalances per episode: what the generalist's churn bound counts."""
        return self.scaling_actions + self.rebalances


CHURN_BOUND = 2.0
"""The generalist may change replicas or rebalance at most this many times as often as default HPA (issue 10)."""


@dataclass(frozen=True)
class TunedRule:
    """The sweep's outcome: default HPA, every point tried, and the cheapest within HPA's SLO and drops."""

    hpa: RulePoint
    points: tuple[RulePoint, ...]
    best: RulePoint | None
    margin: bool = False
    """Admissible is non-inferior to HPA with the seed-noise margin (``non_inferior``) rather than strictly within."""

    @property
    def within(self) -> list[RulePoint]:
        return [p for p in self.points if self.admissible(p)]

    def admissible(self, p: RulePoint) -> bool:
        return (non_inferior if self.margin else within_hpa)(asdict(p), asdict(self.hpa))

    def best_within_churn(self, bound: float = CHURN_BOUND) -> RulePoint | None:
        """The cheapest admissible setting that also churns at most ``bound`` x HPA's.

        The sweep's winner is usually a predictive setting that resizes every
        interval (5-58x HPA's scaling actions on the generalisation suite); a
        policy held to the churn bound is fairly compared with the best rule
        held to it too. The default grid holds default HPA's own setting, so
        with it there is always an answer.
        """
        ok = [p for p in self.within if p.churn <= bound * self.hpa.churn + 1e-9]
        return min(ok, key=lambda p: p.cost_usd) if ok else None


def within_hpa(means: Mapping[str, float], hpa: Mapping[str, float]) -> bool:
    """SLO-violation rate and dropped fraction no higher than default HPA's: the bar every comparison keeps."""
    return (means["slo_violation_rate"] <= hpa["slo_violation_rate"] + 1e-12
            and means["dropped_fraction"] <= hpa["dropped_fraction"] + 1e-12)


def rule_point(spec: str, means: Mapping[str, float]) -> RulePoint:
    """A point from a rollout's per-metric means (``Rollout.mean()``)."""
    return RulePoint(spec, float(means["cost_usd"]), float(means["slo_violation_rate"]),
                     float(means["dropped_fraction"]), float(means["scaling_actions"]), float(means.get("rebalances", 0.0)))


def measure(spec: str, scenario: Scenario, seeds: Sequence[int], steps: int | None = None) -> RulePoint:
    return rule_point(spec, run_policy(scenario, make_policy(spec, scenario), list(seeds), steps=steps).mean())


def best_tuned_rule(scenario: Scenario, seeds: Sequence[int], steps: int | None = None, *,
                    grid: Sequence[str] | None = None,
                    on_point: Callable[[RulePoint], None] | None = None,
                    hpa: RulePoint | None = None, margin: bool = False) -> TunedRule:
    """Sweep ``grid`` (default ``rule_grid()``) on the seeds; the cheapest admissible setting, if any.

    ``hpa``: default HPA on the same seeds, when the caller has already run it.
    """
    hpa = hpa or measure("hpa", scenario, seeds, steps)
    points = []
    for spec in grid or rule_grid():
        p = measure(spec, scenario, seeds, steps)
        points.append(p)
        if on_point is not None:
            on_point(p)
    rule = TunedRule(hpa, tuple(points), None, margin)
    within = rule.within
    return TunedRule(hpa, tuple(points), min(within, key=lambda p: p.cost_usd) if within else None, margin)
