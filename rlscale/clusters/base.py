"""The one protocol every cluster backend implements for the controller."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from rlscale.config import Scenario
from rlscale.spaces import Action, Metrics

# Why a decision falls back to the HPA rule, named below the backends so that they can report it: the Prometheus label values and the audit log's fallback.reason.
METRICS_MISSING = "metrics_missing"
METRICS_STALE = "metrics_stale"
METRICS_INVALID = "metrics_invalid"
METRICS_DEGRADED = "metrics_degraded"
MODEL_MISMATCH = "model_mismatch"
POLICY_ERROR = "policy_error"
FALLBACK_REASONS = (METRICS_MISSING, METRICS_STALE, METRICS_INVALID, METRICS_DEGRADED, MODEL_MISMATCH, POLICY_ERROR)


@dataclass
class MetricsSample:
    """Metrics of one cluster (batched, N = 1) and when they were observed.

    ``observed_at`` is in the backend's clock (seconds); the controller compares
    it with ``Cluster.now()`` to decide whether the sample is stale.

    ``source`` names where the numbers came from (``"prometheus"``, or
    ``"haproxy-stats"`` when the local backend falls back to its load
    balancer's counters). ``degraded`` is True when the sample came from such a
    fallback: some fields may be NaN (the local fallback has no p95 latency)
    and the controller should use the HPA rule on ``utilisation``. ``extra``
    carries backend-specific raw numbers for the audit log.
    """

    metrics: Metrics
    observed_at: float
    source: str = "backend"
    degraded: bool = False
    extra: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Cluster(Protocol):
    """What the controller needs of a cluster: its services, its metrics, and a way to act."""

    def services(self) -> list[str]:
        """Service names, in the order of the arrays in Metrics and Action."""
        ...

    def now(self) -> float:
        """The backend's clock, in seconds (simulated time for the simulated backend)."""
        ...

    def read_metrics(self) -> MetricsSample | None:
        """The latest interval's metrics, or None when they cannot be read."""
        ...

    def apply(self, action: Action) -> None:
        """Set desired replicas per service and run the rebalance verb."""
        ...

    def close(self) -> None:
        """Stop everything this backend started."""
        ...


@dataclass(frozen=True)
class VirtualNodes:
    """Nodes, packing and cost rate of a real cluster seen as the scenario's pools: ``[P]`` arrays per pool."""

    ready: np.ndarray
    provisioning: np.ndarray
    packing: np.ndarray
    cost_rate_usd_h: float


def virtual_nodes(scenario: Scenario, pool_of: list[int], up: list[float], starting: list[float]) -> VirtualNodes:
    """A real cluster's replicas packed into the scenario's node shapes, the one derivation every backend uses.

    Neither the local cluster (a worker is a process) nor a Kubernetes
    namespace (its nodes are shared) has nodes of the scenario's pools, so the
    controller sees the fewest whole nodes that would hold the replicas that
    are up (``up``) and those still starting (``starting``), per service.
    """
    P = len(scenario.pools)
    vcpu = np.array([pool.vcpu for pool in scenario.pools])
    price = np.array([pool.price_per_hour for pool in scenario.pools])
    used = np.zeros(P)
    provisioning = np.zeros(P)
    for i, svc in enumerate(scenario.services):
        p = pool_of[i]
        used[p] += up[i] * svc.replica.cpu
        provisioning[p] += math.ceil(starting[i] * svc.replica.cpu / vcpu[p] - 1e-9)
    nodes = np.ceil(used / vcpu - 1e-9)
    packing = np.where(nodes > 0, used / np.maximum(nodes * vcpu, 1e-9), 0.0)
    return VirtualNodes(nodes, provisioning, packing, float(((nodes + provisioning) * price).sum()))
