"""Episodes over the batched simulator: workload, observation, reward, bookkeeping.

``ClusterEpisodes`` is the one engine behind the Gymnasium env, the vector
env, the SB3 adapter and evaluation, so they cannot drift apart: each of them
only adapts its reset/step conventions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rlscale import workload
from rlscale.config import RewardSpec, Scenario, load_scenario
from rlscale.sim import Simulator, StepResult
from rlscale.sim import kernel as K
from rlscale.spaces import (
    SECONDS_PER_DAY,
    Action,
    ActionDecoder,
    ActionSpec,
    Metrics,
    ObservationBuilder,
    ObsSpec,
)

INITIAL_UTILISATION = 0.6


@dataclass
class RewardTerms:
    """Each term of DESIGN.md section 6, per cluster, so evaluation can report them apart."""

    cost_usd: np.ndarray
    slo_violation: np.ndarray
    dropped_fraction: np.ndarray
    replicas_changed: np.ndarray
    reward: np.ndarray


_TERM_COLUMNS = np.array([K.O_COST, K.O_VIOLATION, K.O_DROPPED_FRACTION, K.O_CHURN])


def reward_weights(spec: RewardSpec) -> np.ndarray:
    """The reward as a dot product with (cost, slo_violation, dropped_fraction, replicas_changed)."""
    return -np.array([1.0 / spec.cost_scale, spec.w_slo, spec.w_drop, spec.w_churn])


def reward_terms(weights: np.ndarray, result: StepResult) -> RewardTerms:
    """r = -(cost / cost_scale + w_slo * slo_violation + w_drop * dropped_fraction + w_churn * replicas_changed).

    ``slo_violation`` is the share of services whose p95 (or batch backlog age) exceeded its SLO this interval;
    ``weights`` comes from ``reward_weights``.
    """
    terms = result.cluster[:, _TERM_COLUMNS]
    # an elementwise sum in a fixed order, not ``terms @ weights``: BLAS may sum a batch in another order than
    # a single row, and a cluster's reward must not depend on its batch, bit for bit
    reward = terms[:, 0] * weights[0]
    for k in range(1, weights.shape[0]):
        reward = reward + terms[:, k] * weights[k]
    return RewardTerms(terms[:, 0], terms[:, 1], terms[:, 2], terms[:, 3], reward)


class ClusterEpisodes:
    """N clusters of one scenario, each running its own seeded episode.

    Each cluster owns a ``numpy.random.Generator``; an episode's workload, start
    time and simulator key are all drawn from it at reset, so a cluster's
    episode depends only on its seed, never on its neighbours in the batch.
    """

    def __init__(
        self,
        scenario: Scenario | str,
        n: int = 1,
        *,
        episode_steps: int | None = None,
        randomise: bool = False,
        trace: np.ndarray | None = None,
        sampler: Callable[[np.random.Generator, int, float, float], np.ndarray] | None = None,
    ) -> None:
        self.scenario = load_scenario(scenario)
        self.sampler = sampler
        self.n = n
        self.episode_steps = int(episode_steps or self.scenario.episode_steps)
        self.randomise = randomise
        self.fixed_trace = trace
        self.sim = Simulator(self.scenario, n)
        self.obs_spec = ObsSpec.from_scenario(self.scenario)
        self.action_spec = ActionSpec.from_scenario(self.scenario)
        self.builder = ObservationBuilder(self.obs_spec, n)
        self.decoder = ActionDecoder(self.action_spec)
        S = len(self.scenario.services)
        self.arrivals = np.zeros((n, self.episode_steps + 1, S))
        self.step_index = np.zeros(n, dtype=np.int64)
        self.rngs: list[np.random.Generator] = [np.random.default_rng(i) for i in range(n)]
        self._replica_rps = np.array([s.replica_rps for s in self.scenario.services])
        self._min = np.array([s.min_replicas for s in self.scenario.services])
        self._max = np.array([s.max_replicas for s in self.scenario.services])
        self._rows = np.arange(n)
        self.reward_weights = reward_weights(self.scenario.reward)

    def seed(self, index: int, seed: int | None) -> None:
        self.rngs[index] = np.random.default_rng(seed)

    def set_rng(self, index: int, rng: np.random.Generator) -> None:
        self.rngs[index] = rng

    def reset(self, index: int) -> None:
        """Draw a new episode for cluster ``index`` from its generator."""
        rng = self.rngs[index]
        sc = self.scenario
        day = int(rng.integers(7)) if sc.randomisation.random_start_day else 0
        start_s = day * SECONDS_PER_DAY
        if self.sampler is not None:
            self.arrivals[index] = self.sampler(rng, self.episode_steps + 1, sc.step_s, start_s)
        for j, svc in enumerate(sc.services if self.sampler is None else ()):
            spec = workload.randomise(svc.workload, sc.randomisation, rng) if self.randomise else svc.workload
            if self.fixed_trace is not None:
                self.arrivals[index, :, j] = self.fixed_trace[: self.episode_steps + 1, j]
            else:
                self.arrivals[index, :, j] = workload.generate(spec, self.episode_steps + 1, sc.step_s, rng, start_s)
        key = int(rng.integers(0, 2**63 - 1))
        initial = np.ceil(self.arrivals[index, 0] / (self._replica_rps * INITIAL_UTILISATION))
        initial = np.clip(initial, self._min, self._max).astype(np.int64)
        self.sim.reset(index, key, initial, start_s)
        self.sim.out_s[index, :, K.O_UTIL] = np.minimum(1.0, self.arrivals[index, 0] / (initial * self._replica_rps))
        self.step_index[index] = 0
        self.builder.reset(np.arange(self.n) == index)

    def current_arrivals(self) -> np.ndarray:
        return self.arrivals[self._rows, self.step_index]

    def metrics(self) -> Metrics:
        """What the cluster reported for the interval just past (arrivals of that interval)."""
        past = np.maximum(self.step_index - 1, 0)
        return self.sim.metrics(self.arrivals[self._rows, past])

    def observe(self) -> np.ndarray:
        """Observations of every cluster; call once per step (it advances the load history)."""
        return self.builder.build(self.metrics())

    def observe_fresh(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``obs`` with the masked rows replaced by the first observation of their new episodes."""
        rows = np.flatnonzero(mask)
        obs = obs.copy()
        obs[rows] = self.builder.build(self.metrics().select(rows), rows)
        return obs

    def step_action(self, action: Action) -> tuple[StepResult, RewardTerms, np.ndarray]:
        """Apply a typed action to every cluster; returns the result, reward terms and truncation flags."""
        result = self.sim.step(action, self.current_arrivals())
        self.step_index += 1
        terms = reward_terms(self.reward_weights, result)
        truncated = self.step_index >= self.episode_steps
        return result, terms, truncated

    def step_raw(self, raw: np.ndarray) -> tuple[StepResult, RewardTerms, np.ndarray]:
        return self.step_action(self.decoder.decode(raw, self.sim.desired))


def step_info(result: StepResult, terms: RewardTerms, i: int) -> dict[str, float]:
    """The per-step info dict of cluster i: every reward term and the DESIGN.md section 8 per-step values."""
    c = result.cluster[i].tolist()
    return {
        "cost_usd": c[K.O_COST],
        "slo_violation": c[K.O_VIOLATION],
        "dropped_fraction": c[K.O_DROPPED_FRACTION],
        "replicas_changed": c[K.O_CHURN],
        "reward": float(terms.reward[i]),
        "rebalanced": c[K.O_REBALANCED],
        "arrivals": c[K.O_ARRIVED_TOTAL],
        "dropped": c[K.O_DROPPED_TOTAL],
        "replicas": c[K.O_READY_TOTAL],
        "nodes": c[K.O_NODES],
        "latency_p95_s": c[K.O_P95_MAX],
        "useful_cpu_s": c[K.O_USEFUL_CPU],
        "paid_cpu_s": c[K.O_PAID_CPU],
    }
