"""The batched cluster simulator: state arrays for N clusters and a step that advances them all."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlscale.config import Scenario
from rlscale.sim import kernel as K
from rlscale.sim.params import SimParams, build_params
from rlscale.spaces import Action, Metrics


@dataclass
class StepResult:
    """Raw per-interval outputs of the kernel for N clusters (views, valid until the next step)."""

    per_service: np.ndarray  # [N, S, N_OUT_S]
    per_pool: np.ndarray  # [N, P, N_OUT_P]
    cluster: np.ndarray  # [N, N_OUT_C]

    @property
    def arrived(self) -> np.ndarray:
        return self.per_service[:, :, K.O_ARRIVED]

    @property
    def served(self) -> np.ndarray:
        return self.per_service[:, :, K.O_SERVED]

    @property
    def dropped(self) -> np.ndarray:
        return self.per_service[:, :, K.O_DROPPED]

    @property
    def backlog(self) -> np.ndarray:
        return self.per_service[:, :, K.O_BACKLOG]

    @property
    def latency_p95_s(self) -> np.ndarray:
        return self.per_service[:, :, K.O_P95]

    @property
    def ready(self) -> np.ndarray:
        return self.per_service[:, :, K.O_READY]

    @property
    def desired(self) -> np.ndarray:
        return self.per_service[:, :, K.O_DESIRED]

    @property
    def cost_usd(self) -> np.ndarray:
        return self.cluster[:, K.O_COST]

    @property
    def churn(self) -> np.ndarray:
        return self.cluster[:, K.O_CHURN]

    @property
    def rebalanced(self) -> np.ndarray:
        return self.cluster[:, K.O_REBALANCED]

    @property
    def nodes(self) -> np.ndarray:
        """Nodes that exist (ready or provisioning) per cluster: what you pay for."""
        return self.per_pool[:, :, K.O_NODES_READY].sum(axis=1) + self.per_pool[:, :, K.O_NODES_PROV].sum(axis=1)


class Simulator:
    """N independent clusters of one scenario, stepped together by one compiled call.

    Each cluster's randomness comes from its own 64-bit key, so cluster i
    follows the same trajectory whether it is stepped alone or in a batch.
    """

    def __init__(self, scenario: Scenario, n: int = 1) -> None:
        self.scenario = scenario
        self.params: SimParams = build_params(scenario)
        self.n = n
        S, P, M = self.params.n_services, self.params.n_pools, self.params.n_nodes
        self.step_s = scenario.step_s
        self.node_state = np.zeros((n, M), dtype=np.int8)
        self.node_f = np.zeros((n, M, 3))
        self.rep = np.zeros((n, S, M), dtype=np.int64)
        self.warming = np.zeros((n, S, M), dtype=np.int64)
        self.warm_left = np.zeros((n, S, M))
        self.svc_i = np.zeros((n, S, 2), dtype=np.int64)
        self.backlog = np.zeros((n, S))
        self.rebalance_left = np.zeros(n)
        self.key = np.zeros(n, dtype=np.uint64)
        self.t = np.zeros(n, dtype=np.int64)
        self.time_s = np.zeros(n)
        self.out_s = np.zeros((n, S, K.N_OUT_S))
        self.out_p = np.zeros((n, P, K.N_OUT_P))
        self.out_c = np.zeros((n, K.N_OUT_C))
        self._buf_i = np.zeros((n, 2, S, M), dtype=np.int64)  # kernel scratch, one slice per cluster
        self._buf_f = np.zeros((n, 1, M))
        self._buf_m = np.zeros((n, S, K.N_MEMO))
        self._last = StepResult(self.out_s, self.out_p, self.out_c)  # the same buffers every step: built once
        p = self.params
        self.kernel_state = (
            p.pool_f, p.pool_range, p.node_pool, p.svc_f, p.pref, p.fits, p.misc, self.node_state, self.node_f,
            self.rep, self.warming, self.warm_left, self.svc_i, self.backlog, self.rebalance_left, self.key, self.t,
            self.time_s,
        )
        """The kernel's arguments before the action, gathered once (the arrays above are never rebound)."""
        self.kernel_out = (self.out_s, self.out_p, self.out_c, self._buf_i, self._buf_f, self._buf_m)
        """The kernel's arguments after the load: its outputs and scratch."""

    @property
    def desired(self) -> np.ndarray:
        return self.svc_i[:, :, K.I_DESIRED]

    def reset(self, index: int, key: int, initial_replicas: np.ndarray, start_s: float = 0.0) -> None:
        """Start cluster ``index`` empty but for its warm initial replicas, at ``start_s`` seconds since Monday."""
        p = self.params
        self.key[index] = np.uint64(key)
        self.time_s[index] = start_s
        K.reset_cluster(
            index, np.asarray(initial_replicas, dtype=np.int64), p.pool_f, p.pool_range, p.node_pool, p.svc_f,
            p.pref, p.fits, self.node_state, self.node_f, self.rep, self.warming, self.warm_left, self.svc_i,
            self.backlog, self.rebalance_left, self.t,
        )
        self.out_s[index] = 0.0
        self.out_p[index] = 0.0
        self.out_c[index] = 0.0
        self._initial_gauges(index)

    def _initial_gauges(self, i: int) -> None:
        ready_nodes = self.node_state[i] == K.READY
        self.out_s[i, :, K.O_READY] = self.rep[i].sum(axis=1)
        self.out_s[i, :, K.O_DESIRED] = self.svc_i[i, :, K.I_DESIRED]
        pool = self.params.node_pool
        cpu = (self.rep[i] * self.params.svc_f[:, None, 0]).sum(axis=0)
        for p in range(self.params.n_pools):
            mask = ready_nodes & (pool == p)
            count = mask.sum()
            self.out_p[i, p, K.O_NODES_READY] = count
            self.out_p[i, p, K.O_PACKING] = cpu[mask].sum() / (count * self.params.pool_f[p, 0]) if count else 0.0
        self.out_c[i, K.O_COST_RATE] = (self.params.pool_f[pool, 3] * (self.node_state[i] != K.ABSENT)).sum()

    def step(self, action: Action, arrivals_rps: np.ndarray) -> StepResult:
        K.step_batch(*self.kernel_state, action.replicas, action.rebalance, arrivals_rps, *self.kernel_out)
        return self._last

    def last(self) -> StepResult:
        return self._last

    def metrics(self, arrivals_rps: np.ndarray) -> Metrics:
        """The latest interval as the metrics a real cluster would report.

        ``arrivals_rps`` is the rate observed in that interval (what Prometheus'
        ``rate()`` over the interval gives). The arrays are views into the
        simulator's buffers: valid until the next ``step``; copy to keep them.
        """
        s, p, c = self.out_s, self.out_p, self.out_c
        return Metrics(
            time_s=self.time_s,
            arrivals_rps=arrivals_rps,
            ready=s[:, :, K.O_READY],
            desired=s[:, :, K.O_DESIRED],
            utilisation=s[:, :, K.O_UTIL],
            latency_p95_s=s[:, :, K.O_P95],
            backlog=s[:, :, K.O_BACKLOG],
            dropped=s[:, :, K.O_DROPPED],
            nodes_ready=p[:, :, K.O_NODES_READY],
            nodes_provisioning=p[:, :, K.O_NODES_PROV],
            packing=p[:, :, K.O_PACKING],
            cost_rate_usd_h=c[:, K.O_COST_RATE],
            hot_spot=c[:, K.O_HOT_SPOT],
            rebalancing=c[:, K.O_REBALANCING],
        )
