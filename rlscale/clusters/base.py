"""The one protocol every cluster backend implements for the controller."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from rlscale.spaces import Action, Metrics


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
