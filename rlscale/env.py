"""Gymnasium environments over the cluster simulator.

``ClusterEnv`` is ``gym.make("rlscale/Cluster-v0")``; ``ClusterVectorEnv`` is the
batched version (``gym.make_vec(..., vectorization_mode="vector_entry_point")``);
``SB3ClusterVecEnv`` lets stable-baselines3 train on the same batched engine.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv

from rlscale.config import Scenario
from rlscale.episode import ClusterEpisodes, step_info
from rlscale.spaces import OBS_CLIP, InvalidAction


def _spaces(engine: ClusterEpisodes) -> tuple[spaces.Box, spaces.MultiDiscrete]:
    obs = spaces.Box(-OBS_CLIP, OBS_CLIP, shape=(engine.obs_spec.size,), dtype=np.float32)
    act = spaces.MultiDiscrete(engine.action_spec.nvec)
    return obs, act


class ClusterEnv(gym.Env[np.ndarray, np.ndarray]):
    """One simulated cluster that an agent autoscales.

    ## Description
    A scenario file (``envs/*.yaml``) describes node pools with prices and
    provisioning delays, and services with per-request work, cold starts,
    replica sizes, SLOs and a workload. Each step is one decision interval
    (``step_s``, 60 s by default): the agent scales each service and may
    rebalance the cluster, then the simulator serves that interval's load.

    ## Action space
    ``MultiDiscrete([2k+1] * S + [3])``: for each of the S services a replica
    delta ``a_i - k`` in {-k..k} (k = ``actions.max_step``), then a rebalance
    verb: 0 none, 1 consolidate (repack so nodes can be released), 2 spread
    (even replicas out of hot nodes). Moving replicas restarts them.

    ## Observation space
    ``Box(-10, 10, (S * 15 + 3 * P + 7,), float32)``, names in
    ``ObsSpec.feature_names()``. Per service: load (arrivals / capacity of
    max replicas), load at lags 1, 2, 5, 10, 15 steps, trend, ready, desired
    and pending replicas (/ max replicas), utilisation, p95 latency / SLO,
    backlog, dropped fraction, load per ready replica. Per pool: nodes ready
    and provisioning (/ max nodes), CPU packing. Cluster: cost rate (/ reward
    cost scale), time of day and of week (sin, cos), hot-spot index,
    rebalance in progress.

    ## Reward
    ``-(cost / cost_scale + w_slo * slo_violation + w_drop * dropped_fraction
    + w_churn * replicas_changed)``; every term is in ``info``.

    ## Starting state
    The workload of the episode is drawn from the seed (randomised when
    ``randomise=True``); replicas start warm, sized for 60% utilisation of the
    first interval's load.

    ## Episode end
    Never terminates; truncated after ``episode_steps`` (a day by default).

    ## Arguments
    ``scenario`` (name in ``envs/`` or path), ``episode_steps``, ``randomise``
    (workload randomisation for training).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        scenario: str | Scenario = "web-diurnal",
        episode_steps: int | None = None,
        randomise: bool = False,
    ) -> None:
        self.engine = ClusterEpisodes(scenario, 1, episode_steps=episode_steps, randomise=randomise)
        self.observation_space, self.action_space = _spaces(self.engine)
        self._action_shape = self.action_space.nvec.shape

    @property
    def scenario(self) -> Scenario:
        return self.engine.scenario

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.engine.set_rng(0, self.np_random)
        self.engine.reset(0)
        return self.engine.observe()[0], {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        raw = np.asarray(action)
        if raw.shape != self._action_shape:
            raise ValueError(self._outside(action))
        try:
            result, terms, truncated = self.engine.step_raw(raw[None, :])  # the decoder checks the range
        except InvalidAction:
            raise ValueError(self._outside(action)) from None
        obs = self.engine.observe()[0]
        return obs, float(terms.reward[0]), False, bool(truncated[0]), step_info(result, terms, 0)

    def _outside(self, action: Any) -> str:
        return f"action {action!r} is not in {self.action_space}"


class ClusterVectorEnv(VectorEnv):
    """N clusters stepped by one simulator call, with Gymnasium's next-step autoreset."""

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int = 8,
        scenario: str | Scenario = "web-diurnal",
        episode_steps: int | None = None,
        randomise: bool = False,
    ) -> None:
        self.engine = ClusterEpisodes(scenario, num_envs, episode_steps=episode_steps, randomise=randomise)
        self.num_envs = num_envs
        self.single_observation_space, self.single_action_space = _spaces(self.engine)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self._autoreset = np.zeros(num_envs, dtype=bool)

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            seeds = [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else list(seed)
            for i, s in enumerate(seeds):
                self.engine.seed(i, s)
        elif not hasattr(self, "_seeded"):
            for i in range(self.num_envs):
                self.engine.seed(i, None)
        self._seeded = True
        for i in range(self.num_envs):
            self.engine.reset(i)
        self._autoreset[:] = False
        return self.engine.observe(), {}

    def step(self, actions: np.ndarray):
        actions = np.asarray(actions, dtype=np.int64)
        result, terms, truncated = self.engine.step_raw(actions)
        rewards = terms.reward.astype(np.float64)
        truncated = truncated.copy()
        for i in np.flatnonzero(self._autoreset):
            self.engine.reset(i)
            rewards[i] = 0.0
            truncated[i] = False
        obs = self.engine.observe()
        infos: dict[str, Any] = {}
        for key in ("cost_usd", "slo_violation", "dropped_fraction", "replicas_changed"):
            infos[key] = getattr(terms, key).copy()
            infos[f"_{key}"] = ~self._autoreset
        self._autoreset = truncated
        return obs, rewards, np.zeros(self.num_envs, dtype=bool), truncated, infos
