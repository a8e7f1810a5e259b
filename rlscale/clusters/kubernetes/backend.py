"""``KubernetesCluster``: the ``Cluster`` protocol over workloads' ``scale`` subresources and Prometheus.

Each interval ``read_metrics`` reads, per service, the workload's scale
subresource (``spec.replicas`` = desired, ``status.selector``,
``metadata.resourceVersion``), lists its pods by that selector (ready =
Running with condition Ready=True and not being deleted; starting = any other
live pod) and asks Prometheus for the service's PromQL (the local backend's
client). Any failed API read makes the whole sample ``None``: without a
trustworthy replica count the guard rails fall back and hold
(``errors.classify`` says why, and the audit log records it).

``apply`` patches ``spec.replicas`` of the scale subresource, only for
services whose count changes and only after a good read in the same
interval, with that read's ``resourceVersion`` as a precondition: if someone
else scaled the workload since, the server answers 409 and we hold instead of
overwriting them. A failed patch never stops the others; ``apply`` then
raises one ``KubernetesWriteError`` naming each failure, which the control
loop records as the decision's ``apply_error``.

Nodes and pools are estimated from replicas, as in the local backend
(replicas x CPU request / node vCPU per the scenario's first pool of each
service): reading nodes needs cluster-wide permissions the backend asks for
only when ``rebalance: consolidate`` is enabled (``rebalance.py``).
``hot_spot`` is 0 (per-pod service times are not measured here).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from rlscale.clusters.base import MetricsSample, virtual_nodes
from rlscale.clusters.kubernetes.client import ScaleCalls, api_client, scale_calls
from rlscale.clusters.kubernetes.errors import ApiProblem, classify
from rlscale.clusters.kubernetes.rebalance import Consolidator
from rlscale.clusters.kubernetes.settings import KubernetesSettings, Target
from rlscale.clusters.local import prometheus as prom
from rlscale.config import ConfigError, Scenario
from rlscale.spaces import REBALANCE_CONSOLIDATE, REBALANCE_DRAIN, Action, Metrics

log = logging.getLogger("rlscale.clusters.kubernetes")

SECONDS_PER_WEEK = 7 * 86_400.0
EPOCH_WEEKDAY_OFFSET_S = 3 * 86_400.0
"""1970-01-01 was a Thursday: add three days to count from Monday 00:00 UTC."""


class KubernetesWriteError(RuntimeError):
    """One or more scale patches failed this interval (each named, with its reason and what was done)."""


class CallFailed(Exception):
    def __init__(self, call: str, problem: ApiProblem) -> None:
        super().__init__(f"{call}: {problem}")
        self.call = call
        self.problem = problem


@dataclass(frozen=True)
class ScaleView:
    """What one read of a scale subresource said."""

    desired: int
    replicas: int
    selector: str
    resource_version: str


@dataclass(frozen=True)
class PodCounts:
    ready: int
    starting: int
    names: frozenset[tuple[str, str]]


@dataclass
class Counters:
    reads_ok: int = 0
    reads_failed: int = 0
    patches_ok: int = 0
    patches_failed: dict[str, int] = field(default_factory=dict)
    prometheus_errors: int = 0


def week_seconds(unix_s: float) -> float:
    """Seconds since Monday 00:00 UTC: the time-of-week features the policies were trained with."""
    return (unix_s + EPOCH_WEEKDAY_OFFSET_S) % SECONDS_PER_WEEK


def pod_is_ready(pod: Any) -> bool:
    status = pod.status
    if pod.metadata.deletion_timestamp is not None or status is None or status.phase != "Running":
        return False
    return any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])


def pod_is_live(pod: Any) -> bool:
    phase = pod.status.phase if pod.status is not None else None
    return pod.metadata.deletion_timestamp is None and phase not in ("Succeeded", "Failed")


class KubernetesCluster:
    """The ``Cluster`` protocol over a real (or test) API server; use ``open_kubernetes_cluster``."""

    def __init__(self, scenario: Scenario, settings: KubernetesSettings, client: Any, *, dry_run: bool = False) -> None:
        from kubernetes import client as k8s

        self.scenario = scenario
        self.settings = settings
        self.targets: list[Target] = settings.ordered(scenario)
        self._names = [t.service for t in self.targets]
        self._lo = np.array([t.min_replicas for t in self.targets], dtype=np.int64)
        self._hi = np.array([t.max_replicas for t in self.targets], dtype=np.int64)
        self._pool_of = [scenario.pool_index(s.pools[0]) for s in scenario.services]
        self.client = client
        self.apps = k8s.AppsV1Api(client)
        self.core = k8s.CoreV1Api(client)
        self.autoscaling = k8s.AutoscalingV2Api(client)
        self._calls: list[ScaleCalls] = [scale_calls(self.apps, t.kind) for t in self.targets]
        self.prom = prom.PrometheusClient(settings.prometheus.url, settings.prometheus.timeout_s)
        self.timeout = (min(2.0, settings.request_timeout_s), settings.request_timeout_s)
        self.speedup = float(settings.speedup)
        self.dry_run = dry_run
        self._t0 = time.monotonic()
        self._start_s = week_seconds(time.time())
        self._views: dict[str, ScaleView] = {}
        self._pods: dict[str, PodCounts] = {}
        self._read_ok = False
        self._note: dict[str, Any] = {}
        self._closed = False
        self.counters = Counters()
        self.consolidator: Consolidator | None = None
        if settings.consolidate_enabled and not dry_run:
            self.consolidator = Consolidator(self.core, settings.consolidate, self.timeout, self.now)

    # ------------------------------------------------------------------ the Cluster protocol

    def services(self) -> list[str]:
        return list(self._names)

    def now(self) -> float:
        return self._start_s + (time.monotonic() - self._t0) * self.speedup

    def read_metrics(self) -> MetricsSample | None:
        if self._closed:
            return None
        observed = self.now()
        try:
            views = [self._read_scale(i) for i in range(len(self.targets))]
            pods = [self._count_pods(t, v) for t, v in zip(self.targets, views)]
        except CallFailed as failed:
            self._read_ok = False
            self.counters.reads_failed += 1
            self._note["read"] = {"call": failed.call, **failed.problem.to_dict(), "guard": failed.problem.read_reason}
            log.warning("kubernetes read failed (%s); this interval's decision holds", failed)
            return None
        self._read_ok = True
        self.counters.reads_ok += 1
        self._views = {t.service: v for t, v in zip(self.targets, views)}
        self._pods = {t.service: p for t, p in zip(self.targets, pods)}
        values = {name: [self._query(t, name) for t in self.targets] for name in ("arrivals_rps", "utilisation", "latency_p95_s", "backlog", "dropped")}
        metrics = self._metrics(views, pods, values, observed)
        return MetricsSample(metrics, observed_at=observed, source="kubernetes+prometheus")

    def apply(self, action: Action) -> None:
        replicas = np.asarray(action.replicas, dtype=np.int64).reshape(-1)
        if replicas.shape[0] != len(self.targets):
            raise ValueError(f"action has {replicas.shape[0]} services, the cluster config names {len(self.targets)}")
        if self.dry_run:
            return
        wanted = np.clip(replicas, self._lo, self._hi)
        patches: list[dict[str, Any]] = []
        failures: list[str] = []
        for i, target in enumerate(self.targets):
            view = self._views.get(target.service)
            want = int(wanted[i])
            if not self._read_ok or view is None:
                if view is None or view.desired != want:
                    patches.append({"service": target.service, "to": want, "status": "held", "why": "no successful read this interval"})
                continue
            if view.desired == want:
                continue
            entry: dict[str, Any] = {"service": target.service, "from": view.desired, "to": want}
            try:
                scale = self._patch_with_reread(i, want, view, entry)
            except CallFailed as failed:
                p = failed.problem
                self.counters.patches_failed[p.reason] = self.counters.patches_failed.get(p.reason, 0) + 1
                patches.append({**entry, "status": "failed", **p.to_dict(), "effect": p.write_effect})
                failures.append(f"{target.ref} {view.desired}->{want}: {p} ({p.write_effect})")
                self._views.pop(target.service, None)
                continue
            self.counters.patches_ok += 1
            self._views[target.service] = self._view(scale, target)
            patches.append({**entry, "status": "ok", "resource_version": scale.metadata.resource_version})
        if patches:
            self._note["patches"] = patches
        self._rebalance(int(np.asarray(action.rebalance).reshape(-1)[0]) if np.size(action.rebalance) else 0)
        if failures:
            raise KubernetesWriteError("; ".join(failures))

    def audit_note(self) -> dict[str, Any]:
        """What the backend did and saw this interval (read errors, patches, evictions), for the decision's audit line."""
        note, self._note = self._note, {}
        return {"kubernetes": note} if note else {}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a connection pool must not fail a shutdown
            pass

    # ------------------------------------------------------------------ start-up checks

    def check_targets(self, source: str) -> None:
        """Every workload exists and is readable; ConfigError (one line) otherwise."""
        for i, target in enumerate(self.targets):
            try:
                self._read_scale(i)
            except CallFailed as failed:
                raise ConfigError(f"{source}: {target.ref} (service {target.service!r}): {failed.problem}") from None

    def competing_hpas(self) -> list[str]:
        """HPAs (KEDA's included) that target one of our workloads: they would fight the controller."""
        ours = {(t.namespace, t.kind, t.name): t.service for t in self.targets}
        found: list[str] = []
        for ns in self.settings.namespaces():
            try:
                hpas = self._call(f"list horizontalpodautoscalers -n {ns}", self.autoscaling.list_namespaced_horizontal_pod_autoscaler, ns)
            except CallFailed as failed:
                raise ConfigError(
                    f"cannot check for HorizontalPodAutoscalers in namespace {ns!r} ({failed.problem}); "
                    "grant list on horizontalpodautoscalers or pass --take-over"
                ) from None
            for hpa in hpas.items or []:
                ref = hpa.spec.scale_target_ref
                service = ours.get((ns, ref.kind, ref.name))
                if service is not None:
                    found.append(f"HorizontalPodAutoscaler {ns}/{hpa.metadata.name} scales {ref.kind} {ref.name} (service {service!r})")
        return found

    # ------------------------------------------------------------------ calls

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, _request_timeout=self.timeout, **kwargs)
        except Exception as err:  # noqa: BLE001 - classified; the caller decides what a failure means
            raise CallFailed(what, classify(err)) from None

    def _read_scale(self, i: int) -> ScaleView:
        target, calls = self.targets[i], self._calls[i]
        scale = self._call(f"get {calls.resource}/scale {target.namespace}/{target.name}", calls.read, target.name, target.namespace)
        return self._view(scale, target)

    def _view(self, scale: Any, target: Target) -> ScaleView:
        spec_replicas = scale.spec.replicas if scale.spec is not None else None
        status = scale.status
        selector = status.selector if status is not None else None
        if spec_replicas is None or not selector or scale.metadata is None or not scale.metadata.resource_version:
            raise CallFailed(f"scale of {target.ref}", ApiProblem("bad_response", None, "scale without spec.replicas, status.selector or resourceVersion", "the workload is not ready to be scaled"))
        return ScaleView(int(spec_replicas), int(status.replicas or 0), str(selector), str(scale.metadata.resource_version))

    def _patch_scale(self, i: int, replicas: int, resource_version: str) -> Any:
        target, calls = self.targets[i], self._calls[i]
        body = {"metadata": {"resourceVersion": resource_version}, "spec": {"replicas": int(replicas)}}
        return self._call(f"patch {calls.resource}/scale {target.namespace}/{target.name}", calls.patch, target.name,
                          target.namespace, body, field_manager=self.settings.field_manager)

    def _patch_with_reread(self, i: int, want: int, view: ScaleView, entry: dict[str, Any]) -> Any:
        """Patch with the read's resourceVersion; on 409 re-read once and retry only if ``spec.replicas`` is unchanged.

        Every status update (a pod becoming ready) bumps the object's
        resourceVersion, so a conflict usually means "the status moved", not
        "someone else scaled". Re-reading tells the two apart: if
        ``spec.replicas`` is still what this decision was based on, the
        decision stands and is retried with the fresh version (client-go's
        RetryOnConflict); if it changed, someone else scaled and we hold.
        """
        try:
            return self._patch_scale(i, want, view.resource_version)
        except CallFailed as failed:
            if failed.problem.reason != "conflict":
                raise
            fresh = self._read_scale(i)
            if fresh.desired != view.desired:
                raise CallFailed(failed.call, replace(failed.problem, message=f"{failed.problem.message} "
                                 f"(spec.replicas is now {fresh.desired}: someone else scaled it)")) from None
            entry["retried_after"] = failed.problem.to_dict()
            return self._patch_scale(i, want, fresh.resource_version)

    def _count_pods(self, target: Target, view: ScaleView) -> PodCounts:
        pods = self._call(f"list pods -n {target.namespace} -l {view.selector}", self.core.list_namespaced_pod,
                          target.namespace, label_selector=view.selector)
        ready = starting = 0
        names = set()
        for pod in pods.items or []:
            if not pod_is_live(pod):
                continue
            names.add((target.namespace, pod.metadata.name))
            if pod_is_ready(pod):
                ready += 1
            else:
                starting += 1
        return PodCounts(ready, starting, frozenset(names))

    def _query(self, target: Target, metric: str) -> float:
        promql = getattr(target.queries, metric)
        if promql is None:
            return math.nan if metric == "latency_p95_s" else 0.0
        try:
            value = self.prom.scalar(promql, default=math.nan)
        except prom.PrometheusError as err:
            self.counters.prometheus_errors += 1
            self._note.setdefault("prometheus", []).append({"service": target.service, "metric": metric, "error": str(err)[:200]})
            return math.nan
        if math.isnan(value) and metric in ("backlog", "dropped"):
            return 0.0
        return value

    def _rebalance(self, verb: int) -> None:
        if self.consolidator is None:
            if verb in (REBALANCE_CONSOLIDATE, REBALANCE_DRAIN):
                self._note["rebalance"] = {"verb": "consolidate", "status": "off", "why": "rebalance: consolidate is not enabled in the cluster config"}
            return
        managed = frozenset().union(*(p.names for p in self._pods.values())) if self._pods else frozenset()
        note: dict[str, Any] = {}
        if verb in (REBALANCE_CONSOLIDATE, REBALANCE_DRAIN) and self._read_ok:
            note.update(self.consolidator.start(managed))
        if self.consolidator.in_progress:
            note.update(self.consolidator.step(managed))
        if note:
            self._note["rebalance"] = note

    # ------------------------------------------------------------------ metrics

    def _metrics(self, views: list[ScaleView], pods: list[PodCounts], values: dict[str, list[float]], observed: float) -> Metrics:
        S = len(self._names)
        virtual = virtual_nodes(self.scenario, self._pool_of, [p.ready for p in pods], [p.starting for p in pods])
        rebalancing = 1.0 if self.consolidator is not None and self.consolidator.in_progress else 0.0

        def row(name: str) -> np.ndarray:
            return np.array([values[name]], dtype=np.float64).reshape(1, S)

        return Metrics(
            time_s=np.array([observed]),
            arrivals_rps=row("arrivals_rps"),
            ready=np.array([[p.ready for p in pods]], dtype=np.float64),
            desired=np.array([[v.desired for v in views]], dtype=np.float64),
            utilisation=row("utilisation"),
            latency_p95_s=row("latency_p95_s"),
            backlog=row("backlog"),
            dropped=row("dropped"),
            nodes_ready=virtual.ready[None],
            nodes_provisioning=virtual.provisioning[None],
            packing=virtual.packing[None],
            cost_rate_usd_h=np.array([virtual.cost_rate_usd_h]),
            hot_spot=np.zeros(1),
            rebalancing=np.array([rebalancing]),
        )


def open_kubernetes_cluster(
    scenario: Scenario, settings: KubernetesSettings, *, dry_run: bool = False, take_over: bool = False, client: Any | None = None
) -> tuple[KubernetesCluster, list[str]]:
    """Connect, check every workload is readable, and refuse to fight an HPA; returns the cluster and the HPAs taken over.

    An HPA (or KEDA's, ``keda-hpa-*``) that scales one of the workloads makes
    this a ConfigError unless ``take_over`` (the caller records the HPAs it
    overrides; rlscale never deletes them) or ``dry_run`` (no writes, so no
    fight: the shadow mode beside the acting autoscaler).
    """
    source = settings._source
    cluster = KubernetesCluster(scenario, settings, client if client is not None else api_client(settings.kubeconfig, settings.context, source), dry_run=dry_run)
    try:
        cluster.check_targets(source)
        hpas = cluster.competing_hpas()
        if hpas and not (take_over or dry_run):
            raise ConfigError(f"{hpas[0]}{f' (and {len(hpas) - 1} more)' if len(hpas) > 1 else ''}: the two would fight; "
                              "delete it, run with --dry-run, or pass --take-over")
    except BaseException:
        cluster.close()
        raise
    return cluster, hpas
