"""A minimal wall-clock control loop over any ``Cluster``, for tests and benchmarks of real backends.

The controller (``rlscale.controller``) is the production loop, with guard
rails, an audit log and an HTTP API; this is the bare minimum to run a
policy against a real cluster for a bounded time and record what happened:
every ``interval_s``: read metrics -> policy -> apply. A missing sample means
hold; a degraded sample (a backend's fallback metrics, e.g. no latency) is
decided by the HPA rule on utilisation, as DESIGN.md section 9 asks.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from rlscale.clusters.base import Cluster, MetricsSample
from rlscale.config import Scenario
from rlscale.policies import HPAPolicy, Policy, ScalingPolicy, ScalingRules, TargetTrackingPolicy, make_policy

REFERENCE_STEP_S = 60.0


def scaled_policy(spec: str, scenario: Scenario, reference_step_s: float = REFERENCE_STEP_S) -> Policy:
    """``make_policy``, with the baselines' time constants rescaled to the scenario's ``step_s``.

    HPA and target tracking count their windows and cooldowns in seconds
    tuned for 60 s intervals (a 300 s scale-down window = 5 decisions). A
    local cluster decides every few real seconds; keeping the same number of
    *decisions* per window keeps the baselines' behaviour, which is the fair
    comparison with a policy trained on the same interval.
    """
    f = scenario.step_s / reference_step_s
    name = spec.strip()
    if name == "hpa":
        rules = lambda r: ScalingRules(tuple(ScalingPolicy(p.kind, p.value, p.period_s * f) for p in r.policies), r.select)  # noqa: E731
        from rlscale.policies.hpa import DEFAULT_SCALE_DOWN, DEFAULT_SCALE_UP

        return HPAPolicy(scenario, downscale_window_s=300.0 * f, sync_period_s=15.0 * f,
                         scale_up=rules(DEFAULT_SCALE_UP), scale_down=rules(DEFAULT_SCALE_DOWN))
    if name == "target_tracking":
        return TargetTrackingPolicy(scenario, scale_out_cooldown_s=60.0 * f, scale_in_cooldown_s=300.0 * f)
    return make_policy(spec, scenario)


@dataclass
class DriveLog:
    """One row per interval: when, what was observed, what was decided."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def column(self, key: str) -> np.ndarray:
        return np.array([r[key] for r in self.rows], dtype=np.float64)


def drive(
    cluster: Cluster,
    policy: Policy,
    duration_s: float,
    interval_s: float,
    scenario: Scenario | None = None,
    on_step: Callable[[int, MetricsSample | None], None] | None = None,
) -> DriveLog:
    """Run the loop for ``duration_s`` wall seconds; returns the per-interval log. Never raises on a bad sample."""
    policy.reset(1)
    fallback = scaled_policy("hpa", scenario) if scenario is not None and policy.name != "hpa" else policy
    if fallback is not policy:
        fallback.reset(1)
    log = DriveLog()
    start = time.monotonic()
    deadline = start
    step = 0
    while time.monotonic() - start < duration_s:
        sample = cluster.read_metrics()
        row: dict[str, Any] = {"t": time.monotonic() - start, "source": None, "acted_by": "none"}
        if sample is not None:
            m = sample.metrics
            use = fallback if sample.degraded else policy
            action = use.act(m)
            if use is policy and fallback is not policy:
                fallback.act(m)  # keep the fallback's history warm
            cluster.apply(action)
            row.update(
                source=sample.source,
                acted_by="fallback:hpa" if use is not policy else policy.name,
                arrivals_rps=float(m.arrivals_rps[0, 0]),
                ready=float(m.ready[0, 0]),
                desired=float(action.replicas[0, 0]),
                utilisation=_f(m.utilisation[0, 0]),
                latency_p95_s=_f(m.latency_p95_s[0, 0]),
                backlog=float(m.backlog[0, 0]),
                dropped=float(m.dropped[0, 0]),
                cost_rate_usd_h=float(m.cost_rate_usd_h[0]),
            )
        log.rows.append(row)
        if on_step is not None:
            on_step(step, sample)
        step += 1
        deadline += interval_s
        time.sleep(max(0.0, deadline - time.monotonic()))
    return log


def _f(x: Any) -> float:
    v = float(x)
    return v if math.isfinite(v) else math.nan
