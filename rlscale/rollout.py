"""Run a policy on seeded episodes of a scenario and measure it (DESIGN.md section 8).

All seeds run as one batch through the same engine the env uses, so a
policy's numbers here are exactly what training and serving would see.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from rlscale.config import Scenario
from rlscale.episode import ClusterEpisodes, RewardTerms
from rlscale.policies.base import Policy
from rlscale.policies.history import days_wanted
from rlscale.sim import StepResult
from rlscale.sim import kernel as K

METRIC_NAMES = (
    "cost_usd",
    "slo_violation_rate",
    "dropped_fraction",
    "utilisation",
    "scaling_actions",
    "rebalances",
    "episode_reward",
)
SERIES_NAMES = ("arrivals_rps", "replicas", "nodes", "latency_p95_s", "slo_s", "cost_rate_usd_h", "capacity_rps")


@dataclass
class Rollout:
    """Episode metrics per seed, and per-step series when recorded."""

    policy: str
    seeds: list[int]
    episodes: dict[str, np.ndarray]
    series: dict[str, np.ndarray] = field(default_factory=dict)

    def mean(self) -> dict[str, float]:
        return {k: float(v.mean()) for k, v in self.episodes.items()}



class EpisodeTotals:
    """Accumulates the DESIGN.md section 8 episode metrics of N clusters, one interval at a time.

    Shared by ``run_policy`` and the simulated backend the controller drives,
    so that serving and evaluation count the same things the same way.
    """

    def __init__(self, n: int) -> None:
        self.steps = 0
        self.sums = {name: np.zeros(n) for name in ("cost_usd", "episode_reward", "scaling_actions", "rebalances",
                                                     "violated", "arrived", "dropped", "useful", "paid")}

    def add(self, desired_before: np.ndarray, desired_after: np.ndarray, result: StepResult, terms: RewardTerms) -> None:
        s = self.sums
        self.steps += 1
        s["scaling_actions"] += (desired_after != desired_before).sum(axis=1)
        s["rebalances"] += result.rebalanced
        s["cost_usd"] += terms.cost_usd
        s["episode_reward"] += terms.reward
        s["violated"] += terms.slo_violation
        s["arrived"] += result.arrived.sum(axis=1)
        s["dropped"] += result.dropped.sum(axis=1)
        s["useful"] += result.cluster[:, K.O_USEFUL_CPU]
        s["paid"] += result.cluster[:, K.O_PAID_CPU]

    def metrics(self) -> dict[str, np.ndarray]:
        s = self.sums
        out = {name: s[name].copy() for name in ("cost_usd", "scaling_actions", "rebalances", "episode_reward")}
        out["slo_violation_rate"] = s["violated"] / max(self.steps, 1)
        out["dropped_fraction"] = np.where(s["arrived"] > 0, s["dropped"] / np.maximum(s["arrived"], 1e-12), 0.0)
        out["utilisation"] = np.where(s["paid"] > 0, s["useful"] / np.maximum(s["paid"], 1e-12), 0.0)
        return {name: out[name] for name in METRIC_NAMES}


def run_policy(
    scenario: Scenario | str,
    policy: Policy,
    seeds: list[int],
    *,
    steps: int | None = None,
    trace: np.ndarray | None = None,
    record: bool = False,
    on_step: Callable[[int], None] | None = None,
    history_days: float | None = None,
) -> Rollout:
    """Play ``policy`` on one episode per seed (evaluation: no workload randomisation).

    With ``history_days`` each episode carries the days before its start (the
    same generator's warm-up days, or a trace's preceding days), handed to a
    policy that reads history; the episodes themselves are the same as without.
    None: the days the policy's card asks for (0 for a policy without history).
    ``trace`` replaces the workload: ``[T+1, S]`` for every episode, or ``[n, T+1, S]`` one per seed.
    """
    if history_days is None:  # a policy that reads history gets the days its card asks for
        history_days = days_wanted(policy)
    engine = ClusterEpisodes(scenario, len(seeds), episode_steps=steps, randomise=False, trace=trace,
                             history_days=history_days)
    for i, seed in enumerate(seeds):
        engine.seed(i, seed)
        engine.reset(i)
    policy.reset(len(seeds))
    engine.give_history(policy)
    calibrate(policy, engine.scenario)
    n, T = len(seeds), engine.episode_steps
    prepare = getattr(policy, "prepare", None)
    if callable(prepare):
        # a policy with foresight (the oracle) sees the episodes' arrivals [n, T, S] and their simulator before acting
        prepare(engine.arrivals[:, :T].copy(), engine.sim)
    totals = EpisodeTotals(n)
    slo = np.array([s.slo_target_s for s in engine.scenario.services])
    rps = np.array([s.replica_rps for s in engine.scenario.services])
    series = {k: np.zeros((T, n)) for k in SERIES_NAMES} if record else {}
    for t in range(T):
        before = engine.sim.desired.copy()
        action = policy.act(engine.metrics())
        result, terms, _ = engine.step_action(action)
        totals.add(before, engine.sim.desired, result, terms)
        if record:
            series["arrivals_rps"][t] = result.arrived.sum(axis=1) / engine.scenario.step_s
            series["replicas"][t] = result.ready.sum(axis=1)
            series["nodes"][t] = result.nodes
            series["latency_p95_s"][t] = (result.latency_p95_s / slo).max(axis=1) * slo[0]
            series["slo_s"][t] = slo[0]
            series["cost_rate_usd_h"][t] = result.cluster[:, K.O_COST_RATE]
            series["capacity_rps"][t] = (result.ready * rps).sum(axis=1)
        if on_step is not None:
            on_step(t)
    return Rollout(policy.name, list(seeds), totals.metrics(), series)


def calibrate(policy: Policy, scenario: Scenario) -> bool:
    """Replay each cluster's history under the candidates a calibrating policy asks for, and hand it the results.

    A policy without ``calibration_request`` (or with too little history) is
    left as it is, and False returned. The replays are ordinary episodes of ``scenario`` with the
    history as their workload, run by ``run_policy`` itself, so the calibration
    judges exactly what the policy will do.
    """
    ask = getattr(policy, "calibration_request", None)
    request = ask() if callable(ask) else None
    if request is None:
        return False
    seeds = list(range(len(request.owners)))
    runs = [run_policy(scenario, candidate, seeds, steps=request.steps, trace=request.episodes, history_days=0.0).episodes
            for candidate in request.policies]
    policy.settle(request.choose(runs))
    return True
