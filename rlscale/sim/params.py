"""Static arrays that describe one scenario's cluster to the numba kernel."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlscale.config import Scenario

# pool_f columns
P_VCPU, P_MEM, P_GPU, P_PRICE, P_DELAY, P_SPEED, P_SPOT, P_IDLE, P_MIN = range(9)
# svc_f columns
S_CPU, S_MEM, S_GPU, S_SERVERS, S_WORK, S_COLD, S_MIN, S_MAX, S_QLIMIT, S_SLO, S_BATCH, S_WAIT, S_USED = range(13)
# S_USED: cores a fully busy replica burns (its request unless it declares replica.cpu_used): contention and useful CPU


@dataclass(frozen=True)
class SimParams:
    pool_f: np.ndarray  # [P, 9] float64
    pool_range: np.ndarray  # [P, 2] int64: node slots [start, end) of each pool
    node_pool: np.ndarray  # [M] int64
    svc_f: np.ndarray  # [S, 13] float64
    pref: np.ndarray  # [S, P] int64: pool indices in preference order, -1 padded
    fits: np.ndarray  # [S, P] bool: a replica fits on an empty node of the pool
    misc: np.ndarray  # [6] float64: step_s, substeps, drift_sigma, drift_reversion, contention, 0

    @property
    def n_pools(self) -> int:
        return int(self.pool_f.shape[0])

    @property
    def n_services(self) -> int:
        return int(self.svc_f.shape[0])

    @property
    def n_nodes(self) -> int:
        return int(self.node_pool.shape[0])


def build_params(scenario: Scenario) -> SimParams:
    pools, services = scenario.pools, scenario.services
    pool_f = np.array(
        [
            [p.vcpu, p.memory_gib, p.gpus, p.price_per_hour, p.provision_delay_s, p.speed,
             p.spot_interruptions_per_hour, p.idle_release_s, p.min_nodes]
            for p in pools
        ],
        dtype=np.float64,
    )
    sizes = [p.max_nodes for p in pools]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    pool_range = np.stack([starts, starts + np.asarray(sizes)], axis=1).astype(np.int64)
    node_pool = np.repeat(np.arange(len(pools)), sizes).astype(np.int64)
    svc_f = np.array(
        [
            [s.replica.cpu, s.replica.memory_gib, s.replica.gpus, s.servers_per_replica, s.work_s,
             s.cold_start_s, s.min_replicas, s.max_replicas, s.queue_limit, s.slo_target_s,
             1.0 if s.kind == "batch" else 0.0, s.wait_scale, _cores_used(s.replica.cpu, s.replica.cpu_used)]
            for s in services
        ],
        dtype=np.float64,
    )
    names = [p.name for p in pools]
    pref = -np.ones((len(services), len(pools)), dtype=np.int64)
    fits = np.zeros((len(services), len(pools)), dtype=np.bool_)
    for i, s in enumerate(services):
        for r, name in enumerate(s.pools):
            pref[i, r] = names.index(name)
        for j, p in enumerate(pools):
            fits[i, j] = (
                s.replica.cpu <= p.vcpu and s.replica.memory_gib <= p.memory_gib and s.replica.gpus <= p.gpus
            )
    imb = scenario.imbalance
    misc = np.array(
        [scenario.step_s, scenario.substeps, imb.drift_sigma, imb.drift_reversion, imb.contention, 0.0],
        dtype=np.float64,
    )
    return SimParams(pool_f, pool_range, node_pool, svc_f, pref, fits, misc)


def _cores_used(cpu: float, cpu_used: float | None) -> float:
    return cpu if cpu_used is None else cpu_used
