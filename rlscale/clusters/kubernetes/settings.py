"""The Kubernetes backend's YAML: which workload each scenario service is, how to read its metrics, and its bounds.

A user's cluster is described in a small file next to the scenario the policy
was trained on, because the two say different things: the scenario says what
the policy knows (services, pools, prices), this file says where those
services live (namespace, the resource with a ``scale`` subresource), how
Prometheus measures them (PromQL per metric) and the hard bounds the
controller may never leave (``min_replicas``/``max_replicas``, which replace
the scenario's for the guard rails). Every mistake is one ``ConfigError``
line naming the file and the field.

Example::

    prometheus: {url: "http://prometheus.monitoring:9090", timeout_s: 2}
    services:
      - service: api               # a service of the scenario
        namespace: shop
        kind: Deployment           # or StatefulSet, ReplicaSet
        name: api                  # the workload's name
        min_replicas: 2
        max_replicas: 40
        queries:
          arrivals_rps: sum(rate(http_requests_total{app="api"}[1m]))
          utilisation: sum(rate(container_cpu_usage_seconds_total{pod=~"api-.*"}[1m])) / sum(kube_pod_container_resource_requests{pod=~"api-.*",resource="cpu"})
          latency_p95_s: histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{app="api"}[1m])))
    rebalance: none                # or consolidate: cordon + Eviction API (off unless set)
    lease: {name: rlscale, namespace: rlscale}   # the one-controller Lease (client-go's timings by default)
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, model_validator

from rlscale.config import ConfigError, Scenario, Strict, parse_model, read_yaml

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class Queries(Strict):
    """PromQL per metric; each must return one number (a scalar or a one-element vector, summed otherwise).

    ``arrivals_rps`` and ``utilisation`` (busy CPU over requested CPU, 1.0 =
    the replicas' requests fully used) are required: the HPA fallback needs
    utilisation and the policy needs both. A metric without a query, or whose
    query returns nothing, is NaN for latency (the HPA rule then decides) and
    0 for backlog and drops.
    """

    arrivals_rps: str = Field(min_length=1, max_length=4096)
    utilisation: str = Field(min_length=1, max_length=4096)
    latency_p95_s: str | None = Field(default=None, min_length=1, max_length=4096)
    backlog: str | None = Field(default=None, min_length=1, max_length=4096)
    dropped: str | None = Field(default=None, min_length=1, max_length=4096)


class Target(Strict):
    """One scenario service and the Kubernetes workload that runs it."""

    service: str = Field(min_length=1, max_length=128, description="a service name of the scenario")
    namespace: str = Field(default="default", max_length=63)
    kind: Literal["Deployment", "StatefulSet", "ReplicaSet"] = "Deployment"
    name: str = Field(min_length=1, max_length=253)
    min_replicas: int = Field(ge=0, le=10_000)
    max_replicas: int = Field(gt=0, le=10_000)
    queries: Queries

    @model_validator(mode="after")
    def _check(self) -> "Target":
        if not DNS_LABEL.match(self.namespace):
            raise ValueError(f"namespace {self.namespace!r} is not a valid Kubernetes namespace name")
        if not DNS_SUBDOMAIN.match(self.name):
            raise ValueError(f"name {self.name!r} is not a valid Kubernetes object name")
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        return self

    @property
    def ref(self) -> str:
        """``Deployment shop/api``: how logs and the audit name this workload."""
        return f"{self.kind} {self.namespace}/{self.name}"


class PrometheusSpec(Strict):
    url: str = Field(pattern=r"^https?://", max_length=4096, description="base URL of the Prometheus HTTP API")
    timeout_s: float = Field(default=2.0, gt=0, le=60)


class ConsolidateSpec(Strict):
    """Knobs of ``rebalance: consolidate`` (cordon the least-utilised node, evict its replicas through the Eviction API)."""

    evictions_per_interval: int = Field(default=2, ge=1, le=100, description="Eviction API calls per decision interval")
    give_up_after_s: float = Field(
        default=1800.0, gt=0, le=7 * 86_400, description="uncordon and stop when disruption budgets keep the node from emptying this long"
    )


class LeaseSpec(Strict):
    """The ``coordination.k8s.io/v1`` Lease a controller holds while it acts (``rlscale.clusters.kubernetes.lease``).

    The three timings are client-go leader election's, with its defaults and
    its rule (duration > renew deadline > 1.2 x retry period): a leader that
    has not renewed for ``renew_deadline_s`` stops acting, and a standby takes
    over once it has seen the Lease unchanged for ``duration_s``; the gap
    between the two is what keeps two controllers from acting at once.
    """

    name: str = Field(default="rlscale", min_length=1, max_length=253)
    namespace: str | None = Field(default=None, max_length=63, description="default: $POD_NAMESPACE, the pod's own, else default")
    identity: str | None = Field(default=None, min_length=1, max_length=253, description="default: $POD_NAME or the host name, plus a random suffix")
    duration_s: int = Field(default=15, ge=1, le=3600, description="leaseDurationSeconds: how long a standby waits on an unrenewed Lease")
    renew_deadline_s: float = Field(default=10.0, gt=0, le=3600, description="a leader that cannot renew this long stops acting")
    retry_period_s: float = Field(default=2.0, gt=0, le=600, description="how often the leader renews and a standby tries")

    @model_validator(mode="after")
    def _check(self) -> "LeaseSpec":
        if not DNS_SUBDOMAIN.match(self.name):
            raise ValueError(f"name {self.name!r} is not a valid Kubernetes object name")
        if self.namespace is not None and not DNS_LABEL.match(self.namespace):
            raise ValueError(f"namespace {self.namespace!r} is not a valid Kubernetes namespace name")
        if not self.duration_s > self.renew_deadline_s:
            raise ValueError(f"duration_s ({self.duration_s}) must exceed renew_deadline_s ({self.renew_deadline_s:g})")
        if not self.renew_deadline_s > 1.2 * self.retry_period_s:
            raise ValueError(f"renew_deadline_s ({self.renew_deadline_s:g}) must exceed 1.2 x retry_period_s ({self.retry_period_s:g})")
        return self


class KubernetesSettings(Strict):
    """The whole file (see the module docstring for an example)."""

    services: list[Target] = Field(min_length=1, max_length=1000)
    prometheus: PrometheusSpec
    kubeconfig: str | None = Field(default=None, max_length=4096, description="kubeconfig file; default: $KUBECONFIG, ~/.kube/config, in-cluster")
    context: str | None = None
    request_timeout_s: float = Field(default=5.0, gt=0, le=120, description="per API request (connect + read)")
    rebalance: Literal["none", "consolidate"] = "none"
    consolidate: ConsolidateSpec = ConsolidateSpec()
    speedup: float = Field(
        default=1.0, gt=0, le=1e6,
        description="cluster seconds per wall second; 1 on a real cluster (a replayed, compressed trace in tests and demos)",
    )
    field_manager: str = Field(default="rlscale", min_length=1, max_length=128)
    lease: LeaseSpec = LeaseSpec()

    @model_validator(mode="after")
    def _unique(self) -> "KubernetesSettings":
        names = [t.service for t in self.services]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"services {dupes} are listed more than once")
        refs = [(t.kind, t.namespace, t.name) for t in self.services]
        if len(set(refs)) != len(refs):
            raise ValueError("two services name the same workload")
        return self

    @property
    def consolidate_enabled(self) -> bool:
        return self.rebalance == "consolidate"

    def namespaces(self) -> list[str]:
        return sorted({t.namespace for t in self.services})

    def ordered(self, scenario: Scenario) -> list[Target]:
        """The targets in the scenario's service order; ConfigError when the two files disagree."""
        by_name = {t.service: t for t in self.services}
        wanted = [s.name for s in scenario.services]
        missing = [n for n in wanted if n not in by_name]
        extra = [n for n in by_name if n not in wanted]
        if missing or extra:
            parts = ([f"no entry for scenario services {missing}"] if missing else []) + (
                [f"services {extra} are not in scenario {scenario.name!r}"] if extra else []
            )
            raise ConfigError(f"{self._source}: services: {'; '.join(parts)}")
        return [by_name[n] for n in wanted]

    def bounded(self, scenario: Scenario) -> Scenario:
        """The scenario with this file's min/max replicas: the bounds the guard rails and the HPA fallback enforce."""
        targets = {t.service: t for t in self.ordered(scenario)}
        services = [
            s.model_copy(update={"min_replicas": targets[s.name].min_replicas, "max_replicas": targets[s.name].max_replicas})
            for s in scenario.services
        ]
        return scenario.model_copy(update={"services": services})

    _source: str = PrivateAttr(default="cluster config")


def load_settings(path: str | os.PathLike[str] | None) -> KubernetesSettings:
    """Read ``--cluster-config``; ConfigError (one line naming the file and field) on any mistake."""
    if path is None:
        raise ConfigError("--cluster kubernetes needs --cluster-config FILE (the services' workloads and PromQL; docs/KUBERNETES.md)")
    file = Path(path)
    data = read_yaml(file, "cluster config")
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a mapping with services:, prometheus: and optional kubeconfig:, rebalance:")
    settings: KubernetesSettings = parse_model(KubernetesSettings, data, str(file))
    if settings.kubeconfig is not None and not Path(settings.kubeconfig).expanduser().is_absolute():
        settings = settings.model_copy(update={"kubeconfig": str(file.parent / settings.kubeconfig)})  # relative to this file
    settings._source = str(file)
    return settings
