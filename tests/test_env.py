"""The Gymnasium env, the vector env and the SB3 adapter: seeding, batching, API conformance, reward terms."""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rlscale  # noqa: F401  (registers rlscale/Cluster-v0)
from rlscale.config import ENVS_DIR, load_scenario
from rlscale.env import ClusterEnv, ClusterVectorEnv
from rlscale.episode import ClusterEpisodes
from rlscale.learn.sb3_env import SB3ClusterVecEnv
from rlscale.spaces import ActionDecoder, ActionSpec

SCENARIOS = sorted(p.stem for p in ENVS_DIR.glob("*.yaml"))
EPISODE = 40
REWARD_TERMS = ("cost_usd", "slo_violation", "dropped_fraction", "replicas_changed")


def random_actions(space: gym.spaces.MultiDiscrete, steps: int, seed: int, n: int | None = None) -> np.ndarray:
    """Uniform raw actions, rebalance verbs included: [steps, len(nvec)] or [steps, n, len(nvec)]."""
    rng = np.random.default_rng(seed)
    shape = (steps, len(space.nvec)) if n is None else (steps, n, len(space.nvec))
    return rng.integers(0, np.broadcast_to(space.nvec, shape))


def rollout(env: gym.Env, seed: int, actions: np.ndarray) -> list[tuple[Any, ...]]:
    """(obs, reward, terminated, truncated, info) per step, resetting (unseeded) after each episode end."""
    obs, info = env.reset(seed=seed)
    trajectory: list[tuple[Any, ...]] = [(obs, info)]
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        trajectory.append((obs, reward, terminated, truncated, info))
        if terminated or truncated:
            obs, info = env.reset()
            trajectory.append((obs, info))
    return trajectory


def assert_identical(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert len(x) == len(y)
        assert x[0].dtype == y[0].dtype and x[0].tobytes() == y[0].tobytes()
        assert x[1:] == y[1:]


# --------------------------------------------------------------------------- seeding


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), randomise=st.booleans())
def test_the_same_seed_gives_the_same_trajectory_bit_for_bit(seed: int, randomise: bool) -> None:
    kwargs = dict(episode_steps=EPISODE, randomise=randomise)
    first, second = gym.make("rlscale/Cluster-v0", **kwargs), gym.make("rlscale/Cluster-v0", **kwargs)
    actions = random_actions(first.action_space, 2 * EPISODE + 10, seed)
    assert_identical(rollout(first, seed, actions), rollout(second, seed, actions))


def test_different_seeds_give_different_trajectories() -> None:
    env = gym.make("rlscale/Cluster-v0", episode_steps=EPISODE)
    actions = random_actions(env.action_space, EPISODE, 0)
    a, b = rollout(env, 1, actions), rollout(env, 2, actions)
    assert not np.array_equal(np.stack([t[0] for t in a]), np.stack([t[0] for t in b]))
    assert [t[1] for t in a[1:]] != [t[1] for t in b[1:]]


def test_reset_with_a_seed_replays_the_episode_whatever_came_before() -> None:
    env = gym.make("rlscale/Cluster-v0", episode_steps=EPISODE, randomise=True)
    actions = random_actions(env.action_space, EPISODE, 5)
    fresh = rollout(env, 9, actions)
    rollout(env, 3, actions)
    assert_identical(fresh, rollout(env, 9, actions))


# --------------------------------------------------------------------------- batched = single


@pytest.mark.parametrize("randomise", [False, True])
def test_the_vector_env_matches_single_envs_seeded_seed_plus_i(randomise: bool) -> None:
    n, seed, steps = 4, 11, 2 * EPISODE + 5
    vec = ClusterVectorEnv(num_envs=n, episode_steps=EPISODE, randomise=randomise)
    singles = [ClusterEnv(episode_steps=EPISODE, randomise=randomise) for _ in range(n)]
    actions = random_actions(vec.single_action_space, steps, seed, n)
    obs, _ = vec.reset(seed=seed)
    single_obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(singles)]
    np.testing.assert_array_equal(obs, np.stack(single_obs))
    needs_reset = [False] * n
    resets = 0
    for action in actions:
        obs, rewards, terminated, truncated, infos = vec.step(action)
        assert not terminated.any()
        for i, env in enumerate(singles):
            if needs_reset[i]:  # next-step autoreset: this step only starts the new episode
                o, _ = env.reset()
                assert rewards[i] == 0.0 and not truncated[i] and not infos["_cost_usd"][i]
                needs_reset[i] = False
                resets += 1
            else:
                o, r, _, tr, info = env.step(action[i])
                assert rewards[i] == r and truncated[i] == tr
                for key in REWARD_TERMS:
                    assert infos[key][i] == info[key]
                needs_reset[i] = tr
            assert o.tobytes() == obs[i].tobytes()
    assert resets == 2 * n


@pytest.mark.parametrize("randomise", [False, True])
def test_the_sb3_vec_env_matches_single_envs_seeded_seed_plus_i(randomise: bool) -> None:
    n, seed, steps = 4, 23, 2 * EPISODE + 5
    vec = SB3ClusterVecEnv("web-diurnal", n, episode_steps=EPISODE, randomise=randomise, seed=seed)
    singles = [ClusterEnv(episode_steps=EPISODE, randomise=randomise) for _ in range(n)]
    actions = random_actions(vec.action_space, steps, seed, n)
    obs = vec.reset()
    np.testing.assert_array_equal(obs, np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(singles)]))
    episodes = 0
    for action in actions:
        obs, rewards, dones, infos = vec.step(action)
        for i, env in enumerate(singles):
            o, r, _, tr, info = env.step(action[i])
            assert rewards[i] == np.float32(r) and dones[i] == tr
            assert {k: infos[i][k] for k in info} == info
            if tr:  # same-step autoreset: the final observation travels in info
                assert infos[i]["terminal_observation"].tobytes() == o.tobytes()
                assert infos[i]["TimeLimit.truncated"] and infos[i]["episode"]["l"] == EPISODE
                o, _ = env.reset()
                episodes += 1
            assert o.tobytes() == obs[i].tobytes()
    assert episodes == 2 * n


# --------------------------------------------------------------------------- API conformance


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_gymnasium_env_checker_passes(scenario: str) -> None:
    from gymnasium.utils.env_checker import check_env

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(ClusterEnv(scenario=scenario, episode_steps=EPISODE), skip_render_check=True)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_stable_baselines3_env_checker_passes(scenario: str) -> None:
    from stable_baselines3.common.env_checker import check_env

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(ClusterEnv(scenario=scenario, episode_steps=EPISODE), warn=True)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_observations_stay_inside_the_declared_box(scenario: str) -> None:
    env = ClusterEnv(scenario=scenario, episode_steps=EPISODE, randomise=True)
    for obs in (t[0] for t in rollout(env, 0, random_actions(env.action_space, EPISODE + 5, 0))):
        assert env.observation_space.contains(obs)


def test_an_action_outside_the_space_is_rejected() -> None:
    env = ClusterEnv(episode_steps=EPISODE)
    env.reset(seed=0)
    too_big = env.action_space.nvec.copy()
    with pytest.raises(ValueError, match="not in"):
        env.step(too_big)
    with pytest.raises(ValueError, match="not in"):
        env.step(np.zeros(len(too_big) + 1, dtype=np.int64))


# --------------------------------------------------------------------------- reward


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_info_carries_every_reward_term_and_they_recombine_into_the_reward(scenario: str) -> None:
    env = ClusterEnv(scenario=scenario, episode_steps=EPISODE, randomise=True)
    w = load_scenario(scenario).reward
    seen_nonzero = set()
    for step in rollout(env, 4, random_actions(env.action_space, EPISODE - 1, 4))[1:]:
        _, reward, _, _, info = step
        for key in REWARD_TERMS:
            assert np.isfinite(info[key]) and info[key] >= 0
            if info[key] > 0:
                seen_nonzero.add(key)
        recombined = -(
            info["cost_usd"] / w.cost_scale + w.w_slo * info["slo_violation"]
            + w.w_drop * info["dropped_fraction"] + w.w_churn * info["replicas_changed"]
        )
        assert reward == pytest.approx(recombined, rel=1e-12, abs=1e-12) and info["reward"] == reward
    assert {"cost_usd", "replicas_changed"} <= seen_nonzero


def test_reward_terms_stay_valid_after_the_next_step() -> None:
    """Evaluation keeps a step's RewardTerms while stepping on: they must not be views the next step overwrites."""
    engine = ClusterEpisodes("web-diurnal", 2, episode_steps=EPISODE)
    for i in range(2):
        engine.seed(i, i)
        engine.reset(i)
    actions = random_actions(gym.spaces.MultiDiscrete(engine.action_spec.nvec), 3, 0, n=2)
    _, first, _ = engine.step_raw(actions[0])
    kept = {name: getattr(first, name).copy() for name in (*REWARD_TERMS, "reward")}
    for action in actions[1:]:
        engine.step_raw(action)
    for name, values in kept.items():
        assert getattr(first, name).tobytes() == values.tobytes()


# --------------------------------------------------------------------------- shared pieces


@pytest.mark.parametrize("scenario", ["web-diurnal", "ml-platform"])
def test_the_engines_observation_is_the_builders_observation_of_its_metrics(scenario: str) -> None:
    """``observe`` reads the simulator's buffers directly; it must be ``ObservationBuilder.build(metrics())``, bit for bit."""
    engines = [ClusterEpisodes(scenario, 3, episode_steps=EPISODE, randomise=True) for _ in range(2)]
    for engine in engines:
        for i in range(3):
            engine.seed(i, 10 + i)
            engine.reset(i)
    packed, built = engines
    actions = random_actions(gym.spaces.MultiDiscrete(packed.action_spec.nvec), EPISODE + 5, 1, n=3)
    for t, action in enumerate(actions):
        a, b = packed.observe(), built.builder.build(built.metrics())
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), f"step {t}"
        for engine in engines:
            _, _, truncated = engine.step_raw(action)
            for i in np.flatnonzero(truncated):
                engine.reset(i)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_one_call_step_is_decode_and_step_action_bit_for_bit(scenario: str) -> None:
    """``step_raw`` fuses decode and ``step_action`` for int64 actions; int32 ones take the calls one by one.
    Every way gives the same observations, terms, flags and metrics."""
    n = 3
    engines = [ClusterEpisodes(scenario, n, episode_steps=EPISODE, randomise=True) for _ in range(3)]
    for engine in engines:
        for i in range(n):
            engine.seed(i, 20 + i)
            engine.reset(i)
    actions = random_actions(gym.spaces.MultiDiscrete(engines[0].action_spec.nvec), 2 * EPISODE + 5, 2, n=n)

    def by_calls(engine: ClusterEpisodes, raw: np.ndarray) -> tuple[Any, ...]:
        result, terms, truncated = engine.step_action(engine.decoder.decode(raw, engine.sim.desired))
        return engine.observe(), result, terms, truncated

    def raw_then_observe(engine: ClusterEpisodes, raw: np.ndarray) -> tuple[Any, ...]:
        result, terms, truncated = engine.step_raw(raw)
        return engine.observe(), result, terms, truncated

    ways = (by_calls, raw_then_observe, lambda engine, raw: raw_then_observe(engine, raw.astype(np.int32)))
    for t, action in enumerate(actions):
        outs = []
        for engine, way in zip(engines, ways):
            obs, result, terms, truncated = way(engine, action)
            m = engine.metrics()
            outs.append([np.array(a, copy=True) for a in (
                obs, result.per_service, result.per_pool, result.cluster, truncated,
                *(getattr(terms, k) for k in (*REWARD_TERMS, "reward")),
                *(getattr(m, k) for k in ("time_s", "arrivals_rps", "ready", "desired")),
            )])
            for i in np.flatnonzero(truncated):
                engine.reset(i)
        for other in outs[1:]:
            for a, b in zip(outs[0], other):
                assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), f"step {t}"


def test_stepping_past_the_end_of_an_episode_says_to_reset() -> None:
    env = ClusterEnv(episode_steps=3)
    env.reset(seed=0)
    hold = env.action_space.nvec // 2
    assert [env.step(hold)[3] for _ in range(3)] == [False, False, True]
    env.step(hold)  # the load of the interval after the last one exists: one step beyond the end is defined
    with pytest.raises(IndexError, match="past the end of its 3-step episode: reset it first"):
        env.step(hold)


def test_the_decoder_rejects_a_batch_with_one_action_outside_the_space() -> None:
    decoder = ActionDecoder(ActionSpec(n_services=2, max_step=1, min_replicas=(1, 1), max_replicas=(5, 5)))
    desired = np.full((2, 2), 3)
    ok = np.array([[0, 2, 0], [1, 1, 2]])
    action = decoder.decode(ok, desired)
    assert action.replicas.tolist() == [[2, 4], [3, 3]] and action.rebalance.tolist() == [0, 2]
    for bad in ([[0, 2, 0], [1, 3, 0]], [[0, 2, 3], [1, 1, 0]], [[-1, 2, 0], [1, 1, 0]], [[0, 2, 0], [1.5, 1, -0.5]]):
        with pytest.raises(ValueError, match="not in"):
            decoder.decode(np.array(bad), desired)
