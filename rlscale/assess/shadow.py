"""``rlscale shadow``: a policy deciding beside the autoscaler that acts, reading Prometheus, never acting.

The decision path is the controller's own (``ControlLoop`` in dry-run,
``Decider``: policy, HPA fallback, guard rails, JSONL audit log), over a
read-only backend, ``PrometheusCluster``, that builds ``Metrics`` from the
``service.yaml`` queries evaluated at the moment of each decision. Every
audit line carries, next to the policy's decision, what the cluster actually
ran (``actual``: ready and desired replicas, arrivals) so
``rlscale shadow-report`` can put the two side by side.

What Prometheus does not say is derived, and said so in ``docs/ASSESS.md``:
``desired`` is ``ready`` without a desired query; ``utilisation`` without a
query is arrivals over the ready replicas' fitted capacity (the scenario's
``replica_rps``); nodes are ready replicas over ``replicas_per_node``; cost
rate is nodes times the node price; hot spots and rebalancing are 0. Time
(the policy's time-of-day features) counts from the first timestamp of the
scenario's trace when that is a unix time (a fitted scenario), as training
did; otherwise from the start of the shadow run, as the local backend does.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from rlscale.assess.history import HistoryClient
from rlscale.assess.service import ServiceConfig, load_service, render
from rlscale.clusters.base import MetricsSample
from rlscale.clusters.local.prometheus import PrometheusError
from rlscale.config import ConfigError, Scenario, load_scenario, parse_model
from rlscale.controller import AuditLog, ControlLoop, Decider, GuardConfig
from rlscale.controller.decision import Decision
from rlscale.spaces import Action, Metrics

WEEK_S = 7 * 86_400.0


def trace_epoch(scenario: Scenario) -> float | None:
    """The unix time a fitted scenario's trace starts at (its first timestamp), or None (a synthetic or relative trace).

    In training, time of day and week are measured from the start of the
    trace, so serving beside the real cluster must measure them from the
    same instant: ``time_s = now - epoch``.
    """
    trace = scenario.services[0].workload.trace
    if trace is None:
        return None
    try:
        with open(trace) as fh:
            fh.readline()
            first = float(fh.readline().split(",")[0])
    except (OSError, ValueError, IndexError):
        return None
    return first if first > 1e9 else None


class PrometheusCluster:
    """The ``Cluster`` protocol, read-only, over a service's Prometheus queries (one service, one pool)."""

    def __init__(self, url: str, config: ServiceConfig, scenario: Scenario, step_s: float) -> None:
        if len(scenario.services) != 1 or scenario.services[0].name != config.service:
            names = [s.name for s in scenario.services]
            raise ConfigError(f"scenario {scenario.name!r} has services {names}; service.yaml describes {config.service!r}")
        self.client = HistoryClient(url, timeout_s=min(config.history.timeout_s, max(1.0, step_s / 2)))
        self.config = config
        self.scenario = scenario
        self.step_s = step_s
        self._t0 = time.monotonic()
        svc = scenario.services[0]
        self._capacity = svc.replica_rps * scenario.pools[scenario.pool_index(svc.pools[0])].speed
        self.last: MetricsSample | None = None
        self.errors = 0
        self.epoch = trace_epoch(scenario)

    def services(self) -> list[str]:
        return [self.config.service]

    def now(self) -> float:
        return time.monotonic() - self._t0

    def _value(self, name: str, at: float) -> float:
        template = getattr(self.config.queries, name)
        if template is None:
            return math.nan
        result = self.client.query(render(template, self.step_s), at=at)
        if len(result) > 1:
            raise PrometheusError(f"queries.{name} returned {len(result)} series; expected one")
        return result[0][1] if result else math.nan

    def read_metrics(self) -> MetricsSample | None:
        """This interval's metrics; None (the controller falls back and says why) when a required reading is missing."""
        at = time.time()
        try:
            v = {name: self._value(name, at) for name in ("arrivals_rps", "ready", "latency_p95_s", "utilisation",
                                                         "desired", "backlog", "dropped", "nodes")}
        except PrometheusError as err:
            self.errors += 1
            print(f"shadow: prometheus: {err}", file=sys.stderr)
            return None
        if not (math.isfinite(v["arrivals_rps"]) and math.isfinite(v["ready"])):
            return None
        ready = max(0.0, v["ready"])
        desired = v["desired"] if math.isfinite(v["desired"]) else float(round(ready))
        util = v["utilisation"]
        if not math.isfinite(util):
            util = min(1.0, v["arrivals_rps"] / (ready * self._capacity)) if ready > 0 else 1.0
        p95 = v["latency_p95_s"]
        if not math.isfinite(p95) and v["arrivals_rps"] <= 0:
            p95 = 0.0
        pool = self.scenario.pools[0]
        per_node = self.config.pool.replicas_per_node
        nodes = v["nodes"] if math.isfinite(v["nodes"]) else math.ceil(ready / per_node - 1e-9)
        cpu = ready * self.scenario.services[0].replica.cpu
        packing = cpu / (nodes * pool.vcpu) if nodes > 0 else 0.0
        metrics = Metrics(
            time_s=np.array([(at - self.epoch) % WEEK_S if self.epoch is not None else self.now()]),
            arrivals_rps=np.array([[v["arrivals_rps"]]]),
            ready=np.array([[float(round(ready))]]),
            desired=np.array([[desired]]),
            utilisation=np.array([[util]]),
            latency_p95_s=np.array([[p95]]),
            backlog=np.array([[v["backlog"] if math.isfinite(v["backlog"]) else 0.0]]),
            dropped=np.array([[v["dropped"] if math.isfinite(v["dropped"]) else 0.0]]),
            nodes_ready=np.array([[float(nodes)]]),
            nodes_provisioning=np.zeros((1, 1)),
            packing=np.array([[min(1.0, packing)]]),
            cost_rate_usd_h=np.array([float(nodes) * pool.price_per_hour]),
            hot_spot=np.zeros(1),
            rebalancing=np.zeros(1),
        )
        self.last = MetricsSample(metrics, observed_at=self.now(), source="prometheus",
                                  extra={"ready_mean": ready})
        return self.last

    def apply(self, action: Action) -> None:
        raise RuntimeError("shadow mode is read-only: the autoscaler that runs the cluster acts, not rlscale")

    def close(self) -> None:
        pass


class ShadowDecider(Decider):
    """The controller's ``Decider``, plus what the cluster actually ran, recorded beside each decision."""

    warm_history: np.ndarray | None = None

    def decide(self, metrics: Metrics | None, age_s: float | None, now: float, state: Any, **kwargs: Any) -> Decision:
        if self.warm_history is not None and metrics is not None:
            kwargs.setdefault("history_rps", self.warm_history)
            self.warm_history = None
        decision = super().decide(metrics, age_s, now, state, **kwargs)
        if metrics is not None:
            decision.extra["actual"] = {
                "ready": np.asarray(metrics.ready).reshape(-1).tolist(),
                "desired": np.asarray(metrics.desired).reshape(-1).tolist(),
                "arrivals_rps": np.asarray(metrics.arrivals_rps).reshape(-1).tolist(),
            }
        return decision


def scenario_for(model: str, scenario: str | None) -> tuple[Scenario, str]:
    """The scenario the policy was trained on: ``--scenario``, else the model card's ``scenario_config``."""
    if scenario is not None:
        sc = load_scenario(scenario)
        return sc, str(Path(scenario).resolve()) if Path(scenario).exists() else scenario
    from rlscale.policies.network import load_exported

    card = load_exported(model).card
    data = card.get("scenario_config")
    if not isinstance(data, dict):
        raise ConfigError(f"{model}/card.json: no scenario_config; pass --scenario envs/NAME.yaml")
    sc = parse_model(Scenario, data, f"{model}/card.json scenario_config")
    return sc, f"{model}/card.json"


def shadow(prometheus: str, config_path: str | Path, model: str, *, duration_s: float | None = None,
           scenario: str | None = None, audit_log: str | Path = "shadow-audit.jsonl", quiet: bool = False,
           stop: threading.Event | None = None) -> dict[str, Any]:
    """Run the policy in dry-run beside the acting autoscaler until ``duration_s`` or SIGINT/SIGTERM; returns the summary."""
    from rlscale.controller.serve import load_policy

    if not prometheus.startswith(("http://", "https://")):
        raise ConfigError(f"--prometheus {prometheus}: expected an http(s):// URL, e.g. http://127.0.0.1:9090")
    if duration_s is not None and not duration_s > 0:
        raise ConfigError(f"--duration {duration_s}: expected seconds > 0")
    config = load_service(config_path)
    sc, scenario_source = scenario_for(model, scenario)
    step = sc.step_s
    cluster = PrometheusCluster(prometheus, config, sc, step)
    if not cluster.client.ready():
        raise ConfigError(f"--prometheus {prometheus}: not reachable (GET /-/ready failed)")
    loaded = load_policy(model, None, sc)
    guards = GuardConfig.from_scenario(sc, step)
    decider = ShadowDecider(sc, loaded.make(), guards)
    if decider.mismatch:
        print(f"warning: {loaded.name}: {decider.mismatch}; every decision falls back to the HPA rule", file=sys.stderr)
    decider.warm_history = _recent_arrivals(cluster, step)
    audit = AuditLog(audit_log)
    stop = stop or threading.Event()
    steps = None if duration_s is None else max(1, math.ceil(duration_s / step))
    loop = ControlLoop(cluster, decider, audit, interval_s=step, steps=steps, dry_run=True, stop=stop)
    audit.write({"kind": "event", "event": "start", "mode": "shadow", "policy": loaded.name, "version": loaded.version,
                 "model": str(model), "prometheus": prometheus, "service_config": str(config_path),
                 "scenario": sc.name, "scenario_source": scenario_source, "scenario_config": sc.model_dump(mode="json"),
                 "step_s": step, "dry_run": True, "guards": guards.to_dict()})
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    original_step = loop.step

    def step_and_report() -> Decision:
        d = original_step()
        if not quiet:
            actual = d.extra.get("actual", {})
            policy = "-" if d.replicas is None else int(d.replicas[0])
            print(f"shadow {loop.decisions}{'/' + str(steps) if steps else ''}: policy {policy} replicas, "
                  f"actual {actual.get('ready', ['?'])[0]:g} ready at {actual.get('arrivals_rps', [math.nan])[0]:.1f} req/s"
                  + (f" (fallback: {d.fallback_reason})" if d.fallback_reason else ""), flush=True)
        return d

    loop.step = step_and_report  # type: ignore[method-assign]
    try:
        loop.run()
    finally:
        summary = {**loop.summary(), "prometheus_errors": cluster.errors, "audit_log": str(audit_log)}
        audit.write({"kind": "event", "event": "stop", "summary": summary})
        audit.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return summary


def _recent_arrivals(cluster: PrometheusCluster, step: float) -> np.ndarray | None:
    """The last 15 intervals' arrival rates (oldest first), so the policy's load history starts full, not empty."""
    now = time.time()
    try:
        rows = cluster.client.query_range(render(cluster.config.queries.arrivals_rps, step), now - 16 * step, now - step, step)
    except PrometheusError:
        return None
    if len(rows) != 1:
        return None
    values = rows[0][2]
    values = values[np.isfinite(values)]
    return values.reshape(-1, 1) if values.size else None


__all__ = ["PrometheusCluster", "ShadowDecider", "shadow"]
