"""Prometheus metrics of the controller, in their own registry (one per controller, so tests can run several).

Names follow Prometheus conventions and DESIGN.md section 8: counters end in
``_total``, durations are in seconds, and the labels are the same words the
audit log uses (``source``: loop | api; ``reason``: a fallback reason;
``guard``: a guard rail name).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)

from rlscale.controller.guards import FALLBACK_REASONS, GUARD_NAMES

disable_created_metrics()  # the *_created series double the exposition and no dashboard here uses them

REJECT_STATUSES = (400, 401, 408, 413, 431, 503)
LATENCY_BUCKETS = (25e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 100e-3, 1.0)


class Telemetry:
    """Counters and gauges the control loop and the HTTP API update after each decision."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, services: tuple[str, ...], policy_name: str, policy_version: str, dry_run: bool) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[str, tuple[Any, Any]] = {}
        r = self.registry
        self.decisions = Counter("rlscale_decisions", "Decisions made, by source (loop or api).", ["source"], registry=r)
        self.fallbacks = Counter(
            "rlscale_fallbacks", "Decisions that fell back to the HPA rule, by source and reason.", ["source", "reason"], registry=r
        )
        self.adjustments = Counter(
            "rlscale_guard_adjustments", "Values changed by a guard rail, by source and guard.", ["source", "guard"], registry=r
        )
        self.actions = Counter("rlscale_actions_applied", "Actions applied to the cluster by the control loop.", registry=r)
        self.replicas = Gauge("rlscale_replicas", "Replicas the control loop last decided, per service.", ["service"], registry=r)
        self.latency = Histogram(
            "rlscale_decision_latency_seconds",
            "Time from metrics to final action (observation, policy, guard rails).",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.audit_write_errors = Counter(
            "rlscale_audit_write_errors", "Audit log lines the disk refused (kept in memory and retried; see /healthz).", registry=r
        )
        self.http_rejected = Counter(
            "rlscale_http_rejected",
            "HTTP requests refused before the app: 401 bad token, 413 body too large, 431 headers too large, 503 too many connections.",
            ["status"],
            registry=r,
        )
        for status in REJECT_STATUSES:
            self.http_rejected.labels(str(status))
        self.history_days = Gauge(
            "rlscale_history_days",
            "Days of its own demand history the policy reads, per service (under 1: served history-free).",
            ["service"], registry=r,
        )
        self.dry_run = Gauge("rlscale_dry_run", "1 when the controller decides and logs but never acts.", registry=r)
        self.dry_run.set(1 if dry_run else 0)
        Info("rlscale_policy", "The policy being served.", registry=r).info({"name": policy_name, "version": policy_version})
        for source in ("loop", "api"):
            self.decisions.labels(source)
            self.latency.labels(source)
            for reason in FALLBACK_REASONS:
                self.fallbacks.labels(source, reason)
            for guard in GUARD_NAMES:
                self.adjustments.labels(source, guard)
        for service in services:
            self.replicas.labels(service)

    def record(self, source: str, latency_s: float, fallback_reason: str | None, guards: list[str]) -> None:
        children = self._children.get(source)
        if children is None:  # a label lookup costs more than the increment: keep each source's children
            children = self._children[source] = (self.decisions.labels(source), self.latency.labels(source))
        children[0].inc()
        children[1].observe(latency_s)
        if fallback_reason is not None:
            self.fallbacks.labels(source, fallback_reason).inc()
        for guard in guards:
            self.adjustments.labels(source, guard).inc()

    def set_replicas(self, services: tuple[str, ...], replicas: list[int]) -> None:
        for name, value in zip(services, replicas):
            self.replicas.labels(name).set(value)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
