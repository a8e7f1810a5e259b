"""A usage history from the simulator: what each service's replicas really used while a policy ran the scenario.

The simulator's replica serves ``servers = min(cpu, cpu_used)`` requests in
parallel, each taking ``work_s`` CPU-seconds at speed 1 (``rlscale/config.py``,
``rlscale/sim/kernel.py``), and reports each interval its busy fraction ``u``
(served work over capacity, the same for every ready replica behind the load
balancer). Its real usage is therefore

* **CPU**: ``u * servers`` cores per replica (= arrivals per replica x
  ``work_s`` / node speed, up to saturation): a replica declared with
  ``cpu: 2`` but ``cpu_used: 1`` never uses more than one core;
* **memory**: the simulator holds no memory model, so a stated one:
  ``memory_used_gib * (MEMORY_FLOOR + (1 - MEMORY_FLOOR) * u)``, a resident
  set that is mostly code, heap and caches and grows with the requests in
  flight, peaking at ``memory_used_gib`` (default: the request) when busy.

One row per service and interval stands for all its ready replicas
(``weight`` = the ready count). Episodes of several seeds follow each other
in time, the first ending at ``end_unix``. GPU services are skipped: their
servers are GPUs, not cores.
"""

from __future__ import annotations

import numpy as np

from rlscale.assess.usage import Usage
from rlscale.config import Scenario, load_scenario
from rlscale.episode import ClusterEpisodes
from rlscale.policies import make_policy
from rlscale.sim import kernel as K

MEMORY_FLOOR = 0.8


def simulated_usage(scenario: Scenario | str, policy: str = "hpa", seeds: tuple[int, ...] = (0,), steps: int | None = None,
                    end_unix: float = 0.0) -> list[Usage]:
    """Run ``policy`` on one episode per seed and return every CPU service's per-replica usage (module docstring)."""
    sc = load_scenario(scenario)
    engine = ClusterEpisodes(sc, len(seeds), episode_steps=steps, randomise=False)
    for i, seed in enumerate(seeds):
        engine.seed(i, seed)
        engine.reset(i)
    pol = make_policy(policy, sc)
    pol.reset(len(seeds))
    T, S = engine.episode_steps, len(sc.services)
    util = np.zeros((T, len(seeds), S))
    ready = np.zeros((T, len(seeds), S))
    for t in range(T):
        result, _, _ = engine.step_action(pol.act(engine.metrics()))
        util[t] = result.per_service[:, :, K.O_UTIL]
        ready[t] = result.ready
    # seed i's episode is the i-th block of T intervals, the last block ending at end_unix
    times = end_unix - sc.step_s * (T * len(seeds) - 1 - np.arange(T * len(seeds)))
    out = []
    for j, svc in enumerate(sc.services):
        if svc.replica.gpus > 0:
            continue
        u = np.clip(util[:, :, j].T.reshape(-1), 0.0, 1.0)
        r = ready[:, :, j].T.reshape(-1)
        keep = r > 0
        cores = u * svc.servers_per_replica
        peak_mem = svc.replica.memory_used_gib if svc.replica.memory_used_gib is not None else svc.replica.memory_gib
        memory = peak_mem * (MEMORY_FLOOR + (1.0 - MEMORY_FLOOR) * u)
        out.append(Usage(svc.name, sc.step_s, times[keep], ["all"] * int(keep.sum()), cores[keep], memory[keep], r[keep],
                         notes=[f"simulated: {policy} on seeds {list(seeds)}, {T} intervals each"]))
    return out
