"""AWS-style target tracking: scale out fast to the proportional estimate, scale in slowly.

Modelled on Application Auto Scaling target tracking policies, per service:

* estimate ``ceil(ready * utilisation / target)``. The metric covers ready
  replicas only (AWS likewise keeps warming-up capacity out of the metric but
  counts it as capacity), so capacity still starting is not added twice.
* scale out when the estimate exceeds the current capacity (``metrics.desired``),
  straight to the estimate, unless a scale-out happened less than
  ``scale_out_cooldown_s`` ago. A scale-in cooldown never blocks a scale-out.
* scale in when the estimate is below the capacity and there was no scaling
  activity of any kind for ``scale_in_cooldown_s``; remove at most
  ``scale_in_fraction`` of the capacity per step (at least one replica).
* missing metrics (NaN utilisation or nothing ready): hold, as AWS does with
  insufficient data.

Cooldowns count decisions times ``step_s``, so they do not depend on how a
backend reports wall-clock time.
"""

from __future__ import annotations

import numpy as np

from rlscale.config import ConfigError, Scenario
from rlscale.policies.base import ClusterAutoscaler, ceil_count, check_batch, replica_bounds, step_down_limit
from rlscale.spaces import Action, Metrics


class TargetTrackingPolicy:
    """Keep utilisation near ``target_utilisation`` (0.6) with AWS cooldowns (60 s out, 300 s in)."""

    name = "target_tracking"

    def __init__(
        self,
        scenario: Scenario,
        target_utilisation: float = 0.6,
        scale_out_cooldown_s: float = 60.0,
        scale_in_cooldown_s: float = 300.0,
        scale_in_fraction: float = 0.1,
    ) -> None:
        if target_utilisation <= 0 or not 0 < scale_in_fraction <= 1:
            raise ConfigError("target_tracking: target_utilisation must be > 0 and scale_in_fraction in (0, 1]")
        self.scenario = scenario
        self.nodes = ClusterAutoscaler(scenario)
        self.target = target_utilisation
        self.out_cooldown_s, self.in_cooldown_s = scale_out_cooldown_s, scale_in_cooldown_s
        self.scale_in_fraction = scale_in_fraction
        self.lo, self.hi = replica_bounds(scenario)
        self.reset(1)

    def reset(self, n: int = 1) -> None:
        self.nodes.reset(n)
        s = len(self.scenario.services)
        self.n = n
        self._since_out = np.full((n, s), np.inf)
        self._since_any = np.full((n, s), np.inf)

    def act(self, metrics: Metrics) -> Action:
        check_batch(self.n, metrics, self.name)
        self._since_out += self.scenario.step_s
        self._since_any += self.scenario.step_s
        raw = np.rint(metrics.desired).astype(np.int64)
        current = np.clip(raw, self.lo, self.hi)
        ready = np.rint(metrics.ready).astype(np.int64)
        util = np.asarray(metrics.utilisation, dtype=np.float64)
        valid = ~np.isnan(util) & (ready > 0)
        estimate = ceil_count(ready * np.maximum(np.where(valid, util, 0.0), 0.0) / self.target)

        out = valid & (estimate > current) & (self._since_out >= self.out_cooldown_s)
        scale_in = valid & (estimate < current) & (self._since_any >= self.in_cooldown_s)
        floor = current - step_down_limit(current, self.scale_in_fraction)
        new = np.where(out, estimate, current)
        new = np.where(scale_in, np.maximum(estimate, floor), new)
        new = np.clip(new, self.lo, self.hi)

        self._since_out[new > raw] = 0.0
        self._since_any[new != raw] = 0.0
        return Action(replicas=new, rebalance=self.nodes.rebalance(metrics))
