"""Static provisioning: the "buy for the peak" baseline every autoscaler must beat on cost."""

from __future__ import annotations

import numpy as np

from rlscale.config import ConfigError, Scenario
from rlscale.policies.base import ClusterAutoscaler, ceil_count, clamp_replicas, service_rps
from rlscale.spaces import Action, Metrics

PEAK_TARGET_UTILISATION = 0.7


class StaticPolicy:
    """Fixed replicas per service, whatever the load.

    Default: enough replicas to run each service's ``workload.peak_rps`` at 70%
    utilisation, ``ceil(peak_rps / (replica_rps * 0.7))``, clamped to
    [min_replicas, max_replicas]. ``replica_rps`` includes the preferred pool's
    speed, as in the observation.
    """

    name = "static"

    def __init__(self, scenario: Scenario, replicas: list[int] | None = None) -> None:
        self.scenario = scenario
        self.nodes = ClusterAutoscaler(scenario)
        if replicas is None:
            peak = np.array([s.workload.peak_rps for s in scenario.services], dtype=np.float64)
            wanted = ceil_count(peak / (service_rps(scenario) * PEAK_TARGET_UTILISATION))
        else:
            if len(replicas) != len(scenario.services):
                raise ConfigError(
                    f"static policy: replicas has {len(replicas)} values, expected one per service ({len(scenario.services)})"
                )
            wanted = np.asarray(replicas, dtype=np.int64)
        self.replicas = clamp_replicas(wanted[None, :], scenario)[0]

    def reset(self, n: int = 1) -> None:
        """Replicas are fixed; only the node scale-down keeps history."""
        self.nodes.reset(n)

    def act(self, metrics: Metrics) -> Action:
        replicas = np.broadcast_to(self.replicas, (metrics.n, self.replicas.size)).copy()
        return Action(replicas=replicas, rebalance=self.nodes.rebalance(metrics))
