"""Simulator throughput: single-env steps/s through Gymnasium, batched cluster-steps/s of the kernel and the engine.

Every rate is also given as a ratio to an anchor measured in the same pass:
``gym.make("CartPole-v1")`` steps/s (``anchors.cartpole_rate``), timed right
before and right after the single-env cell (their mean is the pass's anchor).
Target: single env >= 0.30 x CartPole's steps/s (issue 26; it was 0.25).

Three measurements, each after a warm-up so numba compile time is excluded,
and each timed over whole episodes (a simulated day: night and afternoon peak):

(a) ``env.step`` of ``gym.make("rlscale/Cluster-v0")`` with uniform random
    actions, resets at episode ends included;
(b) ``Simulator.step`` on N clusters at once (a cluster-step is one cluster
    advanced one interval) under a policy that sizes replicas for the load,
    with each of the two compiled kernels (serial and ``parallel=True``), to
    choose ``kernel.PARALLEL_FROM``;
(c) the full engine behind the vector envs: ``ClusterEpisodes.step_raw`` +
    ``observe`` (+ resets of finished episodes) under the same policy, the
    same two ways.

Usage: ``python benchmarks/perf/sim_throughput.py [--scenario NAME] [--seconds S] [--runs R] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the project root: benchmarks.* and rlscale

from benchmarks.perf.anchors import cartpole_rate  # noqa: E402
from benchmarks.perf.machine import cpu_model  # noqa: E402

N_VALUES = (1, 64, 1024)
SINGLE_TARGET = 0.30  # (a) / CartPole
KERNELS = {"serial": 10**12, "parallel": 0}  # value of kernel.PARALLEL_FROM that forces each kernel


def machine() -> dict[str, Any]:
    import numba

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "platform": platform.platform(),
    }


def rate(step: Callable[[int], int], seconds: float, cycle: int) -> dict[str, float]:
    """Units per wall-clock second of ``step(i)`` (which returns the units it did), and per CPU second.

    Timed over whole cycles of ``cycle`` calls (an episode: a day of load),
    at least ``seconds`` long, after a short warm-up: a window shorter than a
    day would measure only the quiet night or only the busy afternoon. The
    rate per CPU second (all threads of this process) shows what a shared
    machine's other jobs took away from the wall-clock rate.
    """
    for i in range(10):
        step(i)
    done, i = 0, 10
    t0, c0 = time.perf_counter(), time.process_time()
    while True:
        done += step(i)
        i += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and (i - 10) % cycle == 0:
            return {"wall": done / elapsed, "cpu": done / max(time.process_time() - c0, 1e-9)}


def single_env(scenario: str, seconds: float) -> dict[str, float]:
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

    return rate(step, seconds, env.unwrapped.engine.episode_steps)


UTILISATION = 0.6
NOISE = 1
REBALANCE_P = 0.01


def sized(arrivals: np.ndarray, replica_rps: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """The benchmark's policy: replicas for 60% utilisation of the load, jittered by +-1.

    A plausible policy's churn (scale-ups, cold starts, new nodes, releases),
    neither a frozen cluster nor a random walk to max replicas.
    """
    return np.ceil(arrivals / (replica_rps * UTILISATION)).astype(np.int64) + noise


def policy_noise(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Jitter [T, N, S] and rebalance verbs [T, N] (consolidate or spread 1% of the time each)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(-NOISE, NOISE + 1, shape)
    verbs = rng.choice(3, size=shape[:2], p=[1 - 2 * REBALANCE_P, REBALANCE_P, REBALANCE_P]).astype(np.int64)
    return noise, verbs


def started_engine(scenario: str, n: int) -> Any:
    from rlscale.episode import ClusterEpisodes

    engine = ClusterEpisodes(scenario, n, randomise=True)
    for i in range(n):
        engine.seed(i, i)
        engine.reset(i)
    return engine


def simulator_steps(scenario: str, n: int, seconds: float, kernel: str) -> dict[str, float]:
    from rlscale.sim import kernel as K
    from rlscale.spaces import Action

    engine = started_engine(scenario, n)
    steps = engine.episode_steps
    arrivals = np.ascontiguousarray(engine.arrivals[:, :steps].transpose(1, 0, 2))  # [T, N, S]: a day of load
    noise, verbs = policy_noise(arrivals.shape, 1)
    replica_rps = np.array([svc.replica_rps for svc in engine.scenario.services])
    desired = sized(arrivals, replica_rps, noise)
    actions = [Action(desired[t], verbs[t]) for t in range(steps)]
    sim = engine.sim
    saved = K.PARALLEL_FROM
    K.PARALLEL_FROM = KERNELS[kernel]
    try:
        def step(i: int) -> int:
            t = i % steps
            sim.step(actions[t], arrivals[t])
            return n

        return rate(step, seconds, steps)
    finally:
        K.PARALLEL_FROM = saved


def engine_steps(scenario: str, n: int, seconds: float, kernel: str) -> dict[str, float]:
    """Includes the policy (sizing from the current load, encoded as raw MultiDiscrete actions) and resets."""
    from rlscale.sim import kernel as K
    from rlscale.spaces import Action

    engine = started_engine(scenario, n)
    engine.observe()
    noise, verbs = policy_noise((256, n, len(engine.scenario.services)), 2)
    replica_rps = np.array([svc.replica_rps for svc in engine.scenario.services])
    steps = engine.episode_steps
    saved = K.PARALLEL_FROM
    K.PARALLEL_FROM = KERNELS[kernel]
    try:
        def step(i: int) -> int:
            j = i % len(noise)
            target = Action(sized(engine.current_arrivals(), replica_rps, noise[j]), verbs[j])
            _, _, truncated = engine.step_raw(engine.decoder.encode(target, engine.sim.desired))
            obs = engine.observe()
            if truncated.any():
                for c in np.flatnonzero(truncated):
                    engine.reset(c)
                engine.observe_fresh(obs, truncated)
            return n

        return rate(step, seconds, steps)
    finally:
        K.PARALLEL_FROM = saved


def measure(scenario: str, seconds: float, single_only: bool = False) -> dict[str, Any]:
    """One pass over every cell: {cell name: {"wall": rate, "cpu": rate}}, and the CartPole anchor around the single env."""
    before = cartpole_rate(seconds)
    cells = {"single_env": single_env(scenario, seconds)}
    cells["cartpole"] = {"wall": (before + cartpole_rate(seconds)) / 2.0, "cpu": float("nan")}
    if single_only:
        return cells
    for name, fn in (("simulator", simulator_steps), ("engine", engine_steps)):
        for n in N_VALUES:
            for kernel in KERNELS:
                cells[f"{name}/{n}/{kernel}"] = fn(scenario, n, seconds, kernel)
    return cells


def run(scenario: str, seconds: float, runs: int, single_only: bool = False) -> dict[str, Any]:
    """``runs`` passes; per cell the best wall-clock rate, the spread, and the best rate per CPU second."""
    from rlscale.sim import kernel as K

    passes = []
    for _ in range(runs):
        load_before = os.getloadavg()[0]
        cells = measure(scenario, seconds, single_only)
        passes.append({"load_avg_1min": [load_before, os.getloadavg()[0]], "cells": cells})
    summary = {}
    for cell in passes[0]["cells"]:
        wall = [p["cells"][cell]["wall"] for p in passes]
        ratios = [p["cells"][cell]["wall"] / p["cells"]["cartpole"]["wall"] for p in passes]
        summary[cell] = {"best": max(wall), "min": min(wall), "best_per_cpu_s": max(p["cells"][cell]["cpu"] for p in passes),
                         "vs_cartpole": float(np.median(ratios)), "vs_cartpole_min": min(ratios),
                         "vs_cartpole_max": max(ratios)}
    return {
        "scenario": scenario,
        "seconds_per_cell": seconds,
        "runs": runs,
        "machine": machine(),
        "parallel_from": K.PARALLEL_FROM,
        "default_kernel": {str(n): "parallel" if n >= K.PARALLEL_FROM else "serial" for n in N_VALUES},
        "summary": summary,
        "passes": passes,
    }


def markdown(r: dict[str, Any]) -> str:
    m, s = r["machine"], r["summary"]

    def fmt(cell: str) -> str:
        c = s[cell]
        spread = f" ({c['min']:,.0f}-{c['best']:,.0f})" if r["runs"] > 1 else ""
        return f"{c['best']:,.0f}{spread}"

    loads = ", ".join(f"{a:.1f}->{b:.1f}" for a, b in (p["load_avg_1min"] for p in r["passes"]))
    def ratio(cell: str) -> str:
        c = s[cell]
        spread = f" ({c['vs_cartpole_min']:.2f}-{c['vs_cartpole_max']:.2f})" if r["runs"] > 1 else ""
        return f"{c['vs_cartpole']:.2f}{spread}"

    picked = {n: r["default_kernel"][str(n)] for n in N_VALUES}
    cart = s["cartpole"]
    target = "met" if s["single_env"]["vs_cartpole"] >= SINGLE_TARGET else "MISSED"
    lines = [
        "| measurement | N | ratio to CartPole-v1 steps/s (median of passes, range) | target |",
        "|---|---:|---:|---|",
        f"| (a) single env `env.step` (Gymnasium API), steps/s | 1 | {ratio('single_env')} | >= {SINGLE_TARGET:.2f} ({target}) |",
    ]
    for key, label in (("simulator", "(b) `Simulator.step`, cluster-steps/s"),
                       ("engine", "(c) engine `step_raw` + `observe`, cluster-steps/s")):
        for n in N_VALUES:
            lines.append(f"| {label}, {picked[n]} kernel | {n} | {ratio(f'{key}/{n}/{picked[n]}')} | |")
    lines += [
        "",
        f"Anchor: `gym.make(\"CartPole-v1\").step`, random actions, {cart['min']:,.0f}-{cart['best']:,.0f} steps/s "
        "over the passes on this machine.",
        "",
        "Secondary, absolute (this machine only):",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores (numba threads {m['numba_threads']}); "
        f"Python {m['python']}, numpy {m['numpy']}, numba {m['numba']}. Scenario `{r['scenario']}`; "
        f"{r['runs']} run(s) of at least {r['seconds_per_cell']:g} s per cell; "
        f"1-min load average before->after each run: {loads}.",
        "",
        f"Best wall-clock rate of {r['runs']} run(s), in brackets the worst-best range; "
        f"`PARALLEL_FROM = {r['parallel_from']}` picks the kernel.",
        "",
        "| measurement | N | serial kernel | parallel kernel | picked | serial, per CPU-second |",
        "|---|---:|---:|---:|---|---:|",
        f"| (a) single env `env.step` (Gymnasium API), steps/s | 1 | {fmt('single_env')} | | "
        f"{r['default_kernel']['1']} | {s['single_env']['best_per_cpu_s']:,.0f} |",
    ]
    for key, label in (("simulator", "(b) `Simulator.step`, cluster-steps/s"),
                       ("engine", "(c) engine `step_raw` + `observe`, cluster-steps/s")):
        for n in N_VALUES:
            lines.append(
                f"| {label} | {n} | {fmt(f'{key}/{n}/serial')} | {fmt(f'{key}/{n}/parallel')} "
                f"| {r['default_kernel'][str(n)]} | {s[f'{key}/{n}/serial']['best_per_cpu_s']:,.0f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="web-diurnal", help="scenario name in envs/ or a YAML path")
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum timed seconds per measurement")
    parser.add_argument("--runs", type=int, default=3, help="passes over every measurement; the best is reported")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    parser.add_argument("--single-only", action="store_true", help="only (a) and its CartPole anchor (JSON output)")
    args = parser.parse_args(argv)
    results = run(args.scenario, args.seconds, args.runs, args.single_only)
    if args.single_only:
        args.json = True
    print(json.dumps(results, indent=2) if args.json else markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
