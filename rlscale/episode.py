"""Episodes over the batched simulator: workload, observation, reward, bookkeeping.

``ClusterEpisodes`` is the one engine behind the Gymnasium env, the vector
env, the SB3 adapter and evaluation, so they cannot drift apart: each of them
only adapts its reset/step conventions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numba import njit

from rlscale import spaces, workload
from rlscale.config import RewardSpec, Scenario, load_scenario
from rlscale.sim import Simulator, StepResult
from rlscale.sim import kernel as K
from rlscale.spaces import (
    PACKED_FIELDS,
    SECONDS_PER_DAY,
    Action,
    ActionDecoder,
    ActionSpec,
    InvalidAction,
    Metrics,
    ObservationBuilder,
    ObsSpec,
    _decode,
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
_N_TERMS = len(_TERM_COLUMNS) + 1  # rows of a terms array: the four terms, then the reward
# where ObservationBuilder.build_packed finds each Metrics field in the simulator's out_s / out_p / out_c
_SIM_COLUMNS = {
    "ready": K.O_READY, "desired": K.O_DESIRED, "utilisation": K.O_UTIL, "latency_p95_s": K.O_P95,
    "backlog": K.O_BACKLOG, "dropped": K.O_DROPPED,
    "nodes_ready": K.O_NODES_READY, "nodes_provisioning": K.O_NODES_PROV, "packing": K.O_PACKING,
    "cost_rate_usd_h": K.O_COST_RATE, "hot_spot": K.O_HOT_SPOT, "rebalancing": K.O_REBALANCING,
}
_PACKED_COLUMNS = np.array([_SIM_COLUMNS[name] for name in PACKED_FIELDS], dtype=np.int64)


def reward_weights(spec: RewardSpec) -> np.ndarray:
    """The reward as a dot product with (cost, slo_violation, dropped_fraction, replicas_changed)."""
    return -np.array([1.0 / spec.cost_scale, spec.w_slo, spec.w_drop, spec.w_churn])


def reward_terms(weights: np.ndarray, result: StepResult) -> RewardTerms:
    """r = -(cost / cost_scale + w_slo * slo_violation + w_drop * dropped_fraction + w_churn * replicas_changed).

    ``slo_violation`` is the share of services whose p95 (or batch backlog age) exceeded its SLO this interval;
    ``weights`` comes from ``reward_weights``. The arrays are fresh (rows of one new ``[5, N]`` array), not
    views of the simulator's buffers, so they stay valid after the next step.
    """
    t = np.empty((_N_TERMS, result.cluster.shape[0]))
    _reward_terms(result.cluster, _TERM_COLUMNS, weights, t)
    return RewardTerms(t[0], t[1], t[2], t[3], t[4])


@njit(cache=True)
def _end_step(cluster, columns, weights, step_index, episode_steps, terms, truncated):
    """Count the step just taken in ``step_index``; write the reward terms ``[5, N]`` and the truncation flags.

    One compiled call for an engine step's bookkeeping: numpy spends about a microsecond on each in-place
    operation on a small array, several times what the arithmetic itself costs. The outputs come from the
    caller because numba hands a new array back through a Python-level call, which costs as much again.
    """
    for i in range(step_index.shape[0]):
        step_index[i] += 1
        truncated[i] = step_index[i] >= episode_steps
    _reward_terms(cluster, columns, weights, terms)


@njit(cache=True)
def _reward_terms(cluster, columns, weights, out):
    """Write into ``out`` ``[5, N]`` the terms at ``columns`` of ``cluster`` ``[N, *]``, then the reward.

    An elementwise sum in a fixed order (term 0 * w0 + term 1 * w1 + ...), not ``terms @ weights``: BLAS may
    sum a batch in another order than a single row, and a cluster's reward must not depend on its batch, bit
    for bit. Compiled because on one cluster numpy's per-call overhead was most of an env step's reward cost.
    """
    n = cluster.shape[0]
    K_ = columns.shape[0]
    for i in range(n):
        reward = cluster[i, columns[0]] * weights[0]
        out[0, i] = cluster[i, columns[0]]
        for k in range(1, K_):
            out[k, i] = cluster[i, columns[k]]
            reward = reward + cluster[i, columns[k]] * weights[k]
        out[K_, i] = reward


_OUTSIDE, _PAST_END = 1, 2  # _step_raw's refusals


@njit(cache=True)
def _step_raw(raw, max_step, lo, hi, nvec, replicas, rebalance, arrivals, step_index, past,
              pool_f, pool_range, node_pool, svc_f, pref, fits, misc, node_state, node_f, rep, warming, warm_left,
              svc_i, backlog, rebalance_left, key, t, time_s, out_s, out_p, out_c, buf_i, buf_f, buf_m,
              columns, weights, episode_steps, terms, truncated):
    """``ClusterEpisodes.step_raw`` in one compiled call: ``_decode``, the interval's load into ``past``, the
    serial kernel, ``_end_step``; each the function its own entry point runs, so both ways give the same bits.

    0 when stepped; ``_OUTSIDE`` or ``_PAST_END`` (no load left for a cluster), nothing stepped, otherwise.
    """
    if not _decode(raw, svc_i[:, :, K.I_DESIRED], max_step, lo, hi, nvec, replicas, rebalance):
        return _OUTSIDE
    for i in range(step_index.shape[0]):
        if step_index[i] >= arrivals.shape[1]:
            return _PAST_END
        past[i, :] = arrivals[i, step_index[i]]
    K.step_serial(pool_f, pool_range, node_pool, svc_f, pref, fits, misc, node_state, node_f, rep, warming,
                  warm_left, svc_i, backlog, rebalance_left, key, t, time_s, replicas, rebalance, past,
                  out_s, out_p, out_c, buf_i, buf_f, buf_m)
    _end_step(out_c, columns, weights, step_index, episode_steps, terms, truncated)
    return 0


K.stale_with(_step_raw, *K.SOURCES, spaces)


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
        history_days: float = 0.0,
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
        self.history_steps = int(round(history_days * SECONDS_PER_DAY / self.scenario.step_s))
        self.history = np.full((n, self.history_steps, S), np.nan)
        """``[n, H, S]`` demand of the intervals before each episode (DESIGN.md section 15), oldest first."""
        self.step_index = np.zeros(n, dtype=np.int64)
        self.start_s = np.zeros(n)
        # arrivals[i, max(step_index[i] - 1, 0)]: the rate of the interval just past, kept by step_action and reset
        self._past_arrivals = np.zeros((n, S))
        self.rngs: list[np.random.Generator] = [np.random.default_rng(i) for i in range(n)]
        self._replica_rps = np.array([s.replica_rps for s in self.scenario.services])
        self._min = np.array([s.min_replicas for s in self.scenario.services])
        self._max = np.array([s.max_replicas for s in self.scenario.services])
        self._rows = np.arange(n)
        self.reward_weights = reward_weights(self.scenario.reward)
        # step_raw's compiled call: its arguments around the action, the load and the simulator's, gathered once
        self._raw_shape = (n, S + 1)
        scratch = (np.empty((n, S), dtype=np.int64), np.empty(n, dtype=np.int64))  # the decoded action
        self._decode_args = (*self.decoder.bounds, *scratch, self.arrivals, self.step_index)
        self._step_args = (*self.sim.kernel_out, _TERM_COLUMNS, self.reward_weights, self.episode_steps)

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
        H = self.history_steps
        # the history's own stream: an episode's draws are the same with or without its history
        past_rng = np.random.Generator(rng.bit_generator.jumped()) if H else rng
        if self.sampler is not None:
            full = self.sampler(rng, H + self.episode_steps + 1, sc.step_s, start_s - H * sc.step_s)
            self.arrivals[index] = full[H:]
            self.history[index] = full[:H]
        for j, svc in enumerate(sc.services if self.sampler is None else ()):
            spec = workload.randomise(svc.workload, sc.randomisation, rng) if self.randomise else svc.workload
            if self.fixed_trace is not None:
                trace = self.fixed_trace if self.fixed_trace.ndim == 2 else self.fixed_trace[index]
                self.arrivals[index, :, j] = trace[: self.episode_steps + 1, j]
            else:
                self.arrivals[index, :, j] = workload.generate(spec, self.episode_steps + 1, sc.step_s, rng, start_s)
                if H:
                    self.history[index, :, j] = workload.generate(spec, H, sc.step_s, past_rng, start_s - H * sc.step_s)
        key = int(rng.integers(0, 2**63 - 1))
        initial = np.ceil(self.arrivals[index, 0] / (self._replica_rps * INITIAL_UTILISATION))
        initial = np.clip(initial, self._min, self._max).astype(np.int64)
        self.sim.reset(index, key, initial, start_s)
        self.start_s[index] = start_s
        self.sim.out_s[index, :, K.O_UTIL] = np.minimum(1.0, self.arrivals[index, 0] / (initial * self._replica_rps))
        self.step_index[index] = 0
        past = self._past_arrivals.copy()  # a new array: a Metrics handed out before keeps its values
        past[index] = self.arrivals[index, 0]
        self._past_arrivals = past
        self.builder.reset(np.arange(self.n) == index)

    def give_history(self, policy: object) -> None:
        """Hand each cluster's past to a policy that reads history (``load_history``); others ignore it."""
        load = getattr(policy, "load_history", None)
        if self.history_steps and callable(load):
            for i in range(self.n):
                load(i, self.history[i], float(self.start_s[i]) - self.scenario.step_s)

    def current_arrivals(self) -> np.ndarray:
        return self.arrivals[self._rows, self.step_index]

    def metrics(self) -> Metrics:
        """What the cluster reported for the interval just past (arrivals of that interval).

        Every array is the engine's own (``arrivals_rps`` included, kept from the last step or reset):
        read them, and copy what you keep past the next step or want to change.
        """
        return self.sim.metrics(self._past_arrivals)

    def observe(self) -> np.ndarray:
        """Observations of every cluster; call once per step (it advances the load history).

        The same features as ``builder.build(self.metrics())``, read straight from the simulator's buffers.
        """
        sim = self.sim
        return self.builder.build_packed(sim.time_s, self._past_arrivals, sim.out_s, sim.out_p, sim.out_c,
                                         _PACKED_COLUMNS)

    def observe_fresh(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``obs`` with the masked rows replaced by the first observation of their new episodes."""
        rows = np.flatnonzero(mask)
        obs = obs.copy()
        obs[rows] = self.builder.build(self.metrics().select(rows), rows)
        return obs

    def step_action(self, action: Action) -> tuple[StepResult, RewardTerms, np.ndarray]:
        """Apply a typed action to every cluster; returns the result, reward terms and truncation flags."""
        arrivals = self.current_arrivals()
        result = self.sim.step(action, arrivals)
        self._past_arrivals = arrivals
        t = np.empty((_N_TERMS, self.n))
        truncated = np.empty(self.n, dtype=bool)
        _end_step(result.cluster, _TERM_COLUMNS, self.reward_weights, self.step_index, self.episode_steps, t, truncated)
        return result, RewardTerms(t[0], t[1], t[2], t[3], t[4]), truncated

    def step_raw(self, raw: np.ndarray) -> tuple[StepResult, RewardTerms, np.ndarray]:
        """``step_action`` of the decoded ``raw`` (``[N, S + 1]`` MultiDiscrete); ``InvalidAction`` outside the space.

        Below ``kernel.PARALLEL_FROM`` clusters an int64 ``[N, S + 1]`` action takes one compiled call running the
        functions decode and ``step_action`` run: on one cluster their Python glue and the unboxing of their
        arguments, call by call, cost as much as the kernel.
        """
        raw = np.asarray(raw)
        if raw.dtype != np.int64 or raw.shape != self._raw_shape or self.n >= K.PARALLEL_FROM:
            return self.step_action(self.decoder.decode(raw, self.sim.desired))
        past = np.empty(self._past_arrivals.shape)  # a new array: a Metrics handed out before keeps its values
        t = np.empty((_N_TERMS, self.n))
        truncated = np.empty(self.n, dtype=bool)
        K.first_call(_step_raw)
        status = _step_raw(raw, *self._decode_args, past, *self.sim.kernel_state, *self._step_args, t, truncated)
        if status == _OUTSIDE:
            raise InvalidAction(f"action {raw!r} is not in MultiDiscrete({self.action_spec.nvec})")
        if status == _PAST_END:
            raise IndexError(f"a cluster is past the end of its {self.episode_steps}-step episode: reset it first")
        self._past_arrivals = past
        return self.sim.last(), RewardTerms(t[0], t[1], t[2], t[3], t[4]), truncated


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
