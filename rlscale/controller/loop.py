"""The control loop: every interval, read metrics -> decide (policy, guard rails) -> act -> audit.

Clocks and I/O live here; the decision itself (``Decider``) and the guard
rails are pure. A stop request (SIGTERM/SIGINT sets ``stop``) is honoured
between decisions, so the decision in progress is always finished, applied
and logged.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from rlscale.clusters.base import Cluster
from rlscale.controller.audit import AuditLog
from rlscale.controller.decision import Decider, Decision
from rlscale.controller.guards import GuardState, record_applied
from rlscale.controller.telemetry import Telemetry
from rlscale.spaces import Action


class ControlLoop:
    """Drives one cluster with one decider; ``run`` returns when ``steps`` are done, the cluster is done, or on stop.

    ``speedup`` paces the loop: an interval of ``interval_s`` cluster seconds
    takes ``interval_s / speedup`` wall seconds (the simulated backend runs
    faster than real time; real clusters use 1). Deadlines are absolute, so
    a slow decision shortens the next wait instead of drifting the schedule.
    """

    def __init__(
        self,
        cluster: Cluster,
        decider: Decider,
        audit: AuditLog | None = None,
        telemetry: Telemetry | None = None,
        *,
        interval_s: float,
        speedup: float = 1.0,
        steps: int | None = None,
        dry_run: bool = False,
        stop: threading.Event | None = None,
        may_act: Callable[[], bool] | None = None,
    ) -> None:
        services = tuple(cluster.services())
        if services != decider.services:
            raise ValueError(f"cluster services {list(services)} differ from the decider's {list(decider.services)}")
        self.cluster = cluster
        self.decider = decider
        self.audit = audit
        self.telemetry = telemetry
        self.interval_s = float(interval_s)
        self.speedup = float(speedup)
        self.steps = steps
        self.dry_run = dry_run
        self.stop = stop or threading.Event()
        self.state = GuardState()
        self.decisions = 0
        self.fallbacks: Counter[str] = Counter()
        self.adjustments: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.may_act = may_act
        """Asked before every action (the controller's lease, ``lease.py``); False ends the loop without acting."""
        self.lease_lost = False
        self.listeners: list[Callable[[Decision], None]] = []
        """Called with each decision after it is logged (the KEDA face reads decisions this way)."""

    def step(self) -> Decision:
        """One decision: read, decide, act (unless dry-run), log."""
        try:
            sample = self.cluster.read_metrics()
        except Exception as err:  # a backend that cannot be read is "metrics missing", not a crash
            sample = None
            self.errors[f"read_metrics: {type(err).__name__}"] += 1
        now = self.cluster.now()
        metrics = None if sample is None else sample.metrics
        age = None if sample is None else now - float(sample.observed_at)
        degraded = sample is not None and bool(sample.degraded)
        decision = self.decider.decide(metrics, age, now, self.state, source="loop", degraded=degraded)
        decision.metrics_source = None if sample is None else sample.source
        error = None
        if decision.replicas is not None and not self.dry_run and self.may_act is not None and not self.may_act():
            self.lease_lost = True  # another controller may be deciding now: neither act nor hold, just stop
            decision.extra["not_applied"] = "lease_lost"
        elif decision.replicas is not None and not self.dry_run:
            action = Action(replicas=decision.replicas[None].copy(), rebalance=np.array([decision.rebalance], dtype=np.int64))
            try:
                self.cluster.apply(action)
                decision.applied = True
                assert decision.current is not None
                self.state = record_applied(self.state, now, decision.current, decision.replicas)
            except Exception as err:
                error = f"{type(err).__name__}: {str(err)[:200]}"
                self.errors[f"apply: {type(err).__name__}"] += 1
        else:
            hold = getattr(self.cluster, "hold", None)
            if hold is not None:
                hold()
        self.decisions += 1
        if decision.fallback_reason is not None:
            self.fallbacks[decision.fallback_reason] += 1
        for a in decision.adjustments:
            self.adjustments[a.guard] += 1
        if error is not None:
            decision.extra["apply_error"] = error
        note = getattr(self.cluster, "audit_note", None)
        if note is not None:  # what the backend saw and did this interval (API errors, patches, evictions)
            decision.extra.update(note())
        if self.audit is not None:
            self.audit.write(decision.audit())
        if self.telemetry is not None:
            self.telemetry.record("loop", decision.latency_s, decision.fallback_reason, [a.guard for a in decision.adjustments])
            if decision.applied:
                self.telemetry.actions.inc()
            if decision.replicas is not None:
                self.telemetry.set_replicas(decision.services, decision.replicas.tolist())
        for listener in self.listeners:
            listener(decision)
        return decision

    @property
    def completed(self) -> bool:
        """All requested intervals are done (or the backend's episode ended)."""
        return (self.steps is not None and self.decisions >= self.steps) or bool(getattr(self.cluster, "done", False))

    def run(self) -> None:
        period = self.interval_s / self.speedup
        deadline = time.monotonic()
        while not self.stop.is_set() and not self.lease_lost:
            if self.completed:
                break
            self.step()
            deadline += period
            delay = deadline - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)
            else:
                deadline = time.monotonic()

    def summary(self) -> dict[str, Any]:
        return {
            "decisions": self.decisions,
            "fallbacks": dict(self.fallbacks),
            "guard_adjustments": dict(self.adjustments),
            "errors": dict(self.errors),
            "completed": self.completed,
        }
