"""The simulator as a cluster backend, on an accelerated clock, so the controller can be watched running for real.

It is the engine evaluation uses (``rlscale.episode.ClusterEpisodes`` with one
cluster, seeded and reset the way ``rlscale.rollout.run_policy`` does), so a
policy served against it follows exactly the trajectory ``run_policy``
reports for the same seed: ``read_metrics`` returns ``engine.metrics()`` and
``apply`` is ``engine.step_action``. The simulated clock advances one
``step_s`` per ``apply``; ``speedup`` says how fast the controller should pace
its intervals in wall time (60: one simulated minute per real second).
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np

from rlscale.clusters.base import MetricsSample
from rlscale.config import ConfigError, Scenario
from rlscale.episode import ClusterEpisodes
from rlscale.rollout import EpisodeTotals
from rlscale.spaces import Action, Metrics

class SimulatedCluster:
    """One seeded episode of a scenario behind the ``Cluster`` protocol, with episode totals.

    ``steps`` is the episode length (the scenario's by default); after that many
    ``apply`` calls the episode is ``done``. ``hold()`` lets one interval pass
    without acting (dry-run), since here time only moves when the engine steps.
    """

    def __init__(self, scenario: Scenario | str, seed: int = 0, steps: int | None = None, speedup: float = 60.0,
                 history_days: float = 0.0) -> None:
        if not speedup > 0:
            raise ConfigError(f"--speedup {speedup}: expected a factor > 0")
        self.engine = ClusterEpisodes(scenario, 1, episode_steps=steps, randomise=False, history_days=history_days)
        self.engine.seed(0, seed)
        self.engine.reset(0)
        self.scenario = self.engine.scenario
        self.seed = seed
        self.speedup = float(speedup)
        self.steps = self.engine.episode_steps
        self.step_s = float(self.scenario.step_s)
        self._services = [s.name for s in self.scenario.services]
        self._slo = np.array([s.slo_target_s for s in self.scenario.services])
        self._totals = EpisodeTotals(1)

    def past(self) -> tuple[np.ndarray, float] | None:
        """The episode's days before its start ``[H, S]`` and the end of their last interval (None without)."""
        if not self.engine.history_steps:
            return None
        return self.engine.history[0].copy(), float(self.engine.start_s[0]) - self.step_s

    def services(self) -> list[str]:
        return list(self._services)

    def now(self) -> float:
        return float(self.engine.sim.time_s[0])

    @property
    def done(self) -> bool:
        return self._totals.steps >= self.steps

    @property
    def steps_taken(self) -> int:
        return self._totals.steps

    def read_metrics(self) -> MetricsSample | None:
        view = self.engine.metrics()
        copy = Metrics(**{f.name: np.array(getattr(view, f.name), copy=True) for f in fields(Metrics)})
        return MetricsSample(metrics=copy, observed_at=self.now())

    def apply(self, action: Action) -> None:
        """Step the engine one interval with this action (what ``run_policy`` does after ``policy.act``)."""
        if self.done:
            raise RuntimeError(f"the simulated episode has ended after {self.steps} intervals")
        engine = self.engine
        before = engine.sim.desired.copy()
        result, terms, _ = engine.step_action(action)
        self._totals.add(before, engine.sim.desired, result, terms)

    def hold(self) -> None:
        """Let one interval pass with the current replicas and no rebalance."""
        self.apply(Action(replicas=self.engine.sim.desired.copy(), rebalance=np.zeros(1, dtype=np.int64)))

    def totals(self) -> dict[str, float]:
        """The episode so far in DESIGN.md section 8 metrics, counted by the same code as ``run_policy``."""
        return {name: float(v[0]) for name, v in self._totals.metrics().items()}

    def close(self) -> None:
        pass
