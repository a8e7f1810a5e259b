"""Anchors: well-known workloads measured in the same run as ours, so a benchmark is a ratio that holds on any machine.

Absolute rates on a shared or different machine move by 2-4x with the CPU and
the neighbours; the ratio of our rate to an anchor's, measured side by side
(interleaved where cheap), moves far less. Each anchor does the same kind of
work with code everyone knows:

- ``cartpole_rate``: ``gym.make("CartPole-v1").step`` (the Gymnasium reference env, same wrappers as ours);
- ``sb3_cartpole_training``: SB3 PPO on CartPole with our training's n_envs, n_steps, batch, epochs,
  network and VecNormalize (what a learner costs when the env costs almost nothing);
- ``sb3_predictor``: SB3 ``predict`` on the same weights as an exported policy (what serving it
  with SB3 and torch would cost);
- ``BARE_SERVER``: a FastAPI endpoint returning a constant, under the same uvicorn (the framework's floor).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def cartpole_rate(seconds: float) -> float:
    """Steps/s of ``gym.make("CartPole-v1")`` with uniform random actions, resets included."""
    import gymnasium as gym

    env = gym.make("CartPole-v1")
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, 2, 4096)
    for i in range(100):
        _, _, terminated, truncated, _ = env.step(int(actions[i]))
        if terminated or truncated:
            env.reset()
    done, t0 = 0, time.perf_counter()
    while True:
        for _ in range(1000):
            _, _, terminated, truncated, _ = env.step(int(actions[done % 4096]))
            done += 1
            if terminated or truncated:
                env.reset()
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return done / elapsed


def sb3_cartpole_model(cfg: Any) -> Any:
    """SB3 PPO on CartPole-v1 with the training config's n_envs, n_steps, batch, epochs, network and normalisation."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    n = cfg.normalize
    env = VecNormalize(make_vec_env("CartPole-v1", n_envs=cfg.n_envs, seed=cfg.seed), norm_obs=n.norm_obs,
                       norm_reward=n.norm_reward, clip_obs=n.clip_obs, gamma=n.gamma or cfg.gamma)
    activation = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[cfg.policy_kwargs.activation_fn]
    return PPO("MlpPolicy", env, n_steps=cfg.n_steps, batch_size=cfg.batch_size, n_epochs=cfg.n_epochs,
               gamma=cfg.gamma, gae_lambda=cfg.gae_lambda, ent_coef=cfg.ent_coef, learning_rate=3e-4,
               policy_kwargs={"net_arch": list(cfg.policy_kwargs.net_arch), "activation_fn": activation},
               seed=cfg.seed, device="cpu", verbose=0)


def learn_rate(model: Any, steps: int) -> tuple[float, float]:
    """Env steps per wall second and per CPU second of this process of ``model.learn(steps)`` (rollouts and PPO updates)."""
    t0, c0 = time.perf_counter(), time.process_time()
    model.learn(steps, reset_num_timesteps=False)
    return steps / (time.perf_counter() - t0), steps / max(time.process_time() - c0, 1e-9)


def sb3_predictor(weights: Any, nvec: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``obs -> action`` through SB3: VecNormalize's arithmetic on the raw observation, then ``PPO.predict``.

    The SB3 policy gets the exported policy's weights, so both sides compute the same network.
    """
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    size = weights.obs_mean.size

    class Shape(gym.Env):  # only its spaces are used
        observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)
        action_space = gym.spaces.MultiDiscrete(nvec)

        def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
            return np.zeros(size, np.float32), {}

        def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
            return np.zeros(size, np.float32), 0.0, False, False, {}

    activation = torch.nn.Tanh if weights.activation == "tanh" else torch.nn.ReLU
    hidden = [w.shape[0] for w, _ in weights.layers]
    model = PPO("MlpPolicy", DummyVecEnv([Shape]), n_steps=64, batch_size=64, device="cpu",
                policy_kwargs={"net_arch": hidden, "activation_fn": activation})
    linear = [m for m in model.policy.mlp_extractor.policy_net if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for m, (w, b) in zip(linear, weights.layers):
            m.weight.copy_(torch.as_tensor(w))
            m.bias.copy_(torch.as_tensor(b))
        model.policy.action_net.weight.copy_(torch.as_tensor(weights.action_w))
        model.policy.action_net.bias.copy_(torch.as_tensor(weights.action_b))
    mean, std, clip = weights.obs_mean, np.sqrt(weights.obs_var + weights.obs_eps), weights.obs_clip

    def predict(obs: np.ndarray) -> np.ndarray:
        z = np.clip((obs - mean) / std, -clip, clip).astype(np.float32)
        return model.predict(z, deterministic=True)[0]

    return predict


# A FastAPI app with one POST route that returns a constant, served like `rlscale serve` serves its API
# (uvicorn with httptools and uvloop, no access log); prints its URL on the first line like `serve` does.
BARE_SERVER = r'''
import socket, sys, uvicorn
from fastapi import FastAPI
from starlette.responses import Response

app = FastAPI()
BODY = b'{"policy":"constant","replicas":[14],"rebalance":"none"}'

@app.post("/v1/decide")
async def decide() -> Response:
    return Response(BODY, media_type="application/json")

sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen(2048)
print(f"bare endpoint listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")).run(sockets=[sock])
'''
