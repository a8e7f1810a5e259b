"""Simulator throughput: single-env steps/s through Gymnasium, batched cluster-steps/s of the kernel and the engine.

Three measurements, each after a warm-up so numba compile time is excluded:

(a) ``env.step`` of ``gym.make("rlscale/Cluster-v0")`` with uniform random
    actions, resets at episode ends included;
(b) ``Simulator.step`` on N clusters at once (a cluster-step is one cluster
    advanced one interval), with each of the two compiled kernels (serial and
    ``parallel=True``), to choose ``kernel.PARALLEL_FROM``;
(c) the full engine behind the vector envs: ``ClusterEpisodes.step_raw`` +
    ``observe`` (+ resets of finished episodes), the same two ways.

Usage: ``python benchmarks/sim_throughput.py [--scenario NAME] [--seconds S] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

N_VALUES = (1, 64, 1024)
KERNELS = {"serial": 10**12, "parallel": 0}  # value of kernel.PARALLEL_FROM that forces each kernel


def machine() -> dict[str, Any]:
    import numba

    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "platform": platform.platform(),
    }


def rate(step: Callable[[int], int], seconds: float) -> float:
    """Units per second of ``step(i)`` (which returns the units it did), timed over at least ``seconds``."""
    done, i = 0, 0
    t0 = time.perf_counter()
    while True:
        done += step(i)
        i += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return done / elapsed


def single_env(scenario: str, seconds: float) -> float:
    import gymnasium as gym

    import rlscale  # noqa: F401  (registers the env)

    env = gym.make("rlscale/Cluster-v0", scenario=scenario)
    rng = np.random.default_rng(0)
    actions = [a for a in rng.integers(0, env.action_space.nvec, (4096, len(env.action_space.nvec)))]
    env.reset(seed=0)

    def step(i: int) -> int:
        _, _, terminated, truncated, _ = env.step(actions[i % len(actions)])
        if terminated or truncated:
            env.reset()
        return 1

    rate(step, 0.5)  # warm-up
    return rate(step, seconds)


def sized_actions(engine: Any, steps: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrivals [T, N, S] from the engine's episodes, and a plausible policy's actions for them.

    Replicas sized for 60% utilisation of the load plus noise of +-2, a rebalance
    now and then: the churn a learning policy produces, not a frozen cluster.
    """
    arrivals = np.ascontiguousarray(engine.arrivals[:, :steps].transpose(1, 0, 2))
    rps = np.array([s.replica_rps for s in engine.scenario.services])
    desired = np.ceil(arrivals / (rps * 0.6)).astype(np.int64) + rng.integers(-2, 3, arrivals.shape)
    verbs = rng.choice(3, size=arrivals.shape[:2], p=[0.98, 0.01, 0.01]).astype(np.int64)
    return arrivals, desired, verbs


def simulator_steps(scenario: str, n: int, seconds: float, kernel: str) -> float:
    from rlscale.episode import ClusterEpisodes
    from rlscale.sim import kernel as K
    from rlscale.spaces import Action

    engine = ClusterEpisodes(scenario, n, randomise=True)
    for i in range(n):
        engine.seed(i, i)
        engine.reset(i)
    steps = engine.episode_steps
    arrivals, desired, verbs = sized_actions(engine, steps, np.random.default_rng(1))
    actions = [Action(desired[t], verbs[t]) for t in range(steps)]
    sim = engine.sim
    saved = K.PARALLEL_FROM
    K.PARALLEL_FROM = KERNELS[kernel]
    try:
        def step(i: int) -> int:
            t = i % steps
            sim.step(actions[t], arrivals[t])
            return n

        rate(step, 0.3)
        return rate(step, seconds)
    finally:
        K.PARALLEL_FROM = saved


def engine_steps(scenario: str, n: int, seconds: float, kernel: str) -> float:
    from rlscale.episode import ClusterEpisodes
    from rlscale.sim import kernel as K

    engine = ClusterEpisodes(scenario, n, randomise=True)
    for i in range(n):
        engine.seed(i, i)
        engine.reset(i)
    engine.observe()
    rng = np.random.default_rng(2)
    nvec = engine.action_spec.nvec
    raw = rng.integers(0, nvec, (256, n, len(nvec)))
    raw[:, :, -1] = rng.choice(3, size=(256, n), p=[0.98, 0.01, 0.01])
    saved = K.PARALLEL_FROM
    K.PARALLEL_FROM = KERNELS[kernel]
    try:
        def step(i: int) -> int:
            _, _, truncated = engine.step_raw(raw[i % len(raw)])
            obs = engine.observe()
            if truncated.any():
                for j in np.flatnonzero(truncated):
                    engine.reset(j)
                engine.observe_fresh(obs, truncated)
            return n

        rate(step, 0.3)
        return rate(step, seconds)
    finally:
        K.PARALLEL_FROM = saved


def run(scenario: str, seconds: float) -> dict[str, Any]:
    from rlscale.sim import kernel as K

    results: dict[str, Any] = {"scenario": scenario, "seconds_per_cell": seconds, "machine": machine()}
    results["single_env_steps_per_s"] = single_env(scenario, seconds)
    for name, fn in (("simulator", simulator_steps), ("engine", engine_steps)):
        results[name] = {
            str(n): {kernel: fn(scenario, n, seconds, kernel) for kernel in KERNELS} for n in N_VALUES
        }
    results["parallel_from"] = K.PARALLEL_FROM
    results["default_kernel"] = {str(n): "parallel" if n >= K.PARALLEL_FROM else "serial" for n in N_VALUES}
    return results


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores (numba threads {m['numba_threads']}); "
        f"Python {m['python']}, numpy {m['numpy']}, numba {m['numba']}. Scenario `{r['scenario']}`.",
        "",
        "| measurement | N | serial | parallel | default (PARALLEL_FROM = {}) |".format(r["parallel_from"]),
        "|---|---:|---:|---:|---:|",
        f"| (a) single env `env.step` (Gymnasium API), steps/s | 1 | | | {r['single_env_steps_per_s']:,.0f} |",
    ]
    for key, label in (("simulator", "(b) `Simulator.step`, cluster-steps/s"), ("engine", "(c) engine `step_raw` + `observe`, cluster-steps/s")):
        for n in N_VALUES:
            cell = r[key][str(n)]
            default = cell[r["default_kernel"][str(n)]]
            lines.append(f"| {label} | {n} | {cell['serial']:,.0f} | {cell['parallel']:,.0f} | {default:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="web-diurnal", help="scenario name in envs/ or a YAML path")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per measurement")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    args = parser.parse_args(argv)
    results = run(args.scenario, args.seconds)
    print(json.dumps(results, indent=2) if args.json else markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
