"""The batched cluster engine as a stable-baselines3 ``VecEnv`` (same-step autoreset)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

from rlscale.config import Scenario
from rlscale.env import _spaces
from rlscale.episode import ClusterEpisodes, step_info


class InProcessVecEnv(VecEnv):
    """A ``VecEnv`` whose environments all live in this process as one object (no sub-envs to address)."""

    def close(self) -> None:
        return None

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self, attr_name)] * len(self._indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *args, indices=None, **kwargs) -> list[Any]:
        return [getattr(self, method_name)(*args, **kwargs) for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False] * len(self._indices(indices))

    def _indices(self, indices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        if isinstance(indices, int):
            return [indices]
        return list(indices)


class SB3ClusterVecEnv(InProcessVecEnv):
    """N simulated clusters for SB3: one simulator call per step for all of them.

    Episode seeds come from ``seed``: cluster i draws all its episodes from
    ``numpy.random.default_rng(seed + i)``, so a run is reproducible and
    resumable from the generators' state.
    """

    render_mode = None

    def __init__(
        self,
        scenario: str | Scenario,
        num_envs: int,
        *,
        episode_steps: int | None = None,
        randomise: bool = True,
        seed: int = 0,
    ) -> None:
        self.engine = ClusterEpisodes(scenario, num_envs, episode_steps=episode_steps, randomise=randomise)
        obs_space, act_space = _spaces(self.engine)
        super().__init__(num_envs, obs_space, act_space)
        self._base_seed = seed
        self._actions: np.ndarray | None = None
        self._ep_reward = np.zeros(num_envs)
        self._ep_len = np.zeros(num_envs, dtype=np.int64)
        self.seed(seed)

    def seed(self, seed: int | None = None) -> Sequence[None | int]:
        base = self._base_seed if seed is None else seed
        self._base_seed = base
        for i in range(self.num_envs):
            self.engine.seed(i, base + i)
        return [base + i for i in range(self.num_envs)]

    def reset(self) -> np.ndarray:
        for i in range(self.num_envs):
            self.engine.reset(i)
        self._ep_reward[:] = 0.0
        self._ep_len[:] = 0
        return self.engine.observe()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, dtype=np.int64)

    def step_wait(self):
        assert self._actions is not None
        result, terms, truncated = self.engine.step_raw(self._actions)
        rewards = terms.reward.astype(np.float32)
        self._ep_reward += rewards
        self._ep_len += 1
        obs = self.engine.observe()
        infos: list[dict[str, Any]] = [step_info(result, terms, i) for i in range(self.num_envs)]
        for i in np.flatnonzero(truncated):
            infos[i]["terminal_observation"] = obs[i].copy()
            infos[i]["TimeLimit.truncated"] = True
            infos[i]["episode"] = {"r": float(self._ep_reward[i]), "l": int(self._ep_len[i]), "t": 0.0}
            self.engine.reset(i)
            self._ep_reward[i] = 0.0
            self._ep_len[i] = 0
        if truncated.any():
            obs = self.engine.observe_fresh(obs, truncated)
        return obs, rewards, truncated.copy(), infos
