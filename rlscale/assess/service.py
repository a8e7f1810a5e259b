"""``service.yaml``: how to read one service's history from Prometheus, and what Prometheus cannot say.

The queries are PromQL templates: ``{window}`` becomes the history's step as a
PromQL duration (``rate(x[{window}])`` -> ``rate(x[60000ms])``), so a rate covers exactly one interval and intervals
do not overlap. Query names are the ``Metrics`` field names used everywhere
else (DESIGN.md section 8), so a reading means the same thing in a history,
in the simulator and in the controller. What Prometheus does not hold (the
SLO, the replica limits, the node type and its price) is stated here.

Required queries: ``arrivals_rps``, ``ready``, ``latency_p95_s``.
Optional: ``utilisation`` (busy fraction per replica, 0..1; with it the
per-replica capacity is fitted from utilisation, without it from latency
alone), ``desired``, ``backlog``, ``dropped``, ``cold_start_s`` (one
series per replica whose value is the seconds from its creation to ready,
e.g. ``kube_pod_status_ready_time - on(pod) kube_pod_created`` on
Kubernetes: the cold-start estimate), ``nodes`` (node count: the
provisioning-delay estimate).

Usage, for ``rlscale plan`` (optional; one series **per replica**, not a sum):
``cpu_cores`` (cores used, e.g. ``sum by (pod) (rate(container_cpu_usage_seconds_total{container="api"}[{window}]))``
from cAdvisor) and ``memory_bytes`` (working set, e.g. ``sum by (pod)
(container_memory_working_set_bytes{container="api"})``); ``rlscale.assess.usage``
reads them, and a missing one is a note in the fit report, not a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, model_validator

from rlscale.config import ConfigError, RewardSpec, SloSpec, Strict, parse_model, read_yaml

REQUIRED = ("arrivals_rps", "ready", "latency_p95_s")
OPTIONAL = ("utilisation", "desired", "backlog", "dropped", "cold_start_s", "nodes", "cpu_cores", "memory_bytes")


class Queries(Strict):
    """PromQL templates; ``{window}`` is replaced by the step as a duration (``5000ms``)."""

    arrivals_rps: str = Field(min_length=1, max_length=4096, description="requests/s arriving at the service")
    ready: str = Field(min_length=1, max_length=4096, description="replicas that can take traffic")
    latency_p95_s: str = Field(min_length=1, max_length=4096, description="p95 request latency, seconds, as clients see it")
    utilisation: str | None = Field(default=None, max_length=4096, description="busy fraction per ready replica, 0..1")
    desired: str | None = None
    backlog: str | None = None
    dropped: str | None = Field(default=None, max_length=4096, description="requests failed or dropped in the interval")
    cold_start_s: str | None = Field(default=None, max_length=4096, description="per replica: seconds from its creation to ready")
    nodes: str | None = None
    cpu_cores: str | None = Field(default=None, description="per replica (one series each): CPU cores used")
    memory_bytes: str | None = Field(default=None, description="per replica (one series each): memory working set, bytes")


class ReplicaShape(Strict):
    concurrency: float = Field(default=1.0, gt=0, le=10_000, description="requests one replica serves at a time (informative)")
    cpu: float = Field(default=1.0, gt=0, le=1024, description="CPU request per replica")
    memory_gib: float = Field(default=0.5, gt=0, le=65536)


class Limits(Strict):
    min_replicas: int = Field(default=1, ge=0, le=512)
    max_replicas: int = Field(gt=0, le=512)
    queue_limit: float = Field(default=10_000.0, gt=0, le=1e12, description="requests held in the queue before drops")
    max_step: int = Field(default=3, ge=1, le=50, description="the scenario's actions.max_step")

    @model_validator(mode="after")
    def _order(self) -> "Limits":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        return self


class PoolShape(Strict):
    name: str = Field(default="default", min_length=1, max_length=128)
    replicas_per_node: int = Field(default=1, ge=1, le=256)
    price_per_hour: float = Field(ge=0, le=10_000, description="USD per node-hour")
    provision_delay_s: float | None = Field(default=None, ge=0, le=86_400, description="None: estimated from the history (0 without a nodes query)")
    idle_release_s: float = Field(default=0.0, ge=0, le=7 * 86_400)


class HistoryRules(Strict):
    """How much history is enough, and what happens to holes in it."""

    step_s: float = Field(default=60.0, gt=0, le=3600, description="interval of the history = the scenario's step_s")
    scrape_s: float = Field(default=15.0, gt=0, le=3600, description="Prometheus' scrape interval (cold-start timing)")
    min_intervals: int = Field(default=24, ge=4, le=10**6, description="fewer intervals with traffic: refused")
    max_fill_s: float = Field(default=120.0, ge=0, le=86_400, description="gaps up to this long are filled by interpolation; longer: refused")
    holdout: float = Field(default=0.25, ge=0, lt=0.9, description="last fraction of the history kept out of training")
    timeout_s: float = Field(default=10.0, gt=0, le=600, description="per Prometheus request")


class ServiceConfig(Strict):
    """One service's ``service.yaml`` (see ``envs/services/local-api.yaml``)."""

    service: str = Field(min_length=1, max_length=128)
    queries: Queries
    slo: SloSpec
    limits: Limits
    replica: ReplicaShape = ReplicaShape()
    pool: PoolShape
    history: HistoryRules = HistoryRules()
    reward: RewardSpec | None = Field(default=None, description="default: cost_scale = the history's mean cost per step")

    @model_validator(mode="after")
    def _slo(self) -> "ServiceConfig":
        if self.slo.p95_latency_s is None:
            raise ValueError("slo.p95_latency_s: required (assess fits online services)")
        return self

    @property
    def slo_s(self) -> float:
        assert self.slo.p95_latency_s is not None
        return self.slo.p95_latency_s


def load_service(path: str | os.PathLike[str]) -> ServiceConfig:
    """Read and validate ``service.yaml``; a mistake is one ``ConfigError`` line naming the file and field."""
    p = Path(path)
    data = read_yaml(p, "service config")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping with service, queries, slo, limits, pool")
    config: ServiceConfig = parse_model(ServiceConfig, data, str(p))
    return config


def render(template: str, step_s: float) -> str:
    """A template with ``{window}`` set to one step in milliseconds (``5000ms``); PromQL's own braces are left alone."""
    return template.replace("{window}", f"{max(1, int(round(step_s * 1000)))}ms")
