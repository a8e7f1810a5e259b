"""The Kubernetes backend against our own API server (tests/k8s_apiserver.py) through the official client.

Faults (the API server down for 3 intervals, a 409 on every other patch, 403
on patch, a 2 s server) run the real control loop in-process; the end-to-end
test runs ``rlscale serve --cluster kubernetes`` as a process through a
compressed day on two Deployments.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from k8s_apiserver import FakeApiServer, FakeCluster, FakePrometheus  # noqa: E402

from rlscale.clusters.kubernetes.backend import open_kubernetes_cluster  # noqa: E402
from rlscale.clusters.kubernetes.settings import load_settings  # noqa: E402
from rlscale.config import ConfigError, load_scenario  # noqa: E402
from rlscale.controller.audit import AuditLog  # noqa: E402
from rlscale.controller.decision import Decider  # noqa: E402
from rlscale.controller.guards import GuardConfig  # noqa: E402
from rlscale.controller.loop import ControlLoop  # noqa: E402
from rlscale.spaces import Action  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BOUNDS = {"api": (2, 8), "batch": (1, 4)}
NS = "shop"
REPLICA_RPS = {"api": 20.0, "batch": 0.5}


class Fake:
    """API server + Prometheus whose numbers follow the fake cluster (utilisation = load over ready capacity)."""

    def __init__(self, tmp: Path, speedup: float = 1.0, load: dict[str, float] | None = None) -> None:
        self.cluster = FakeCluster(startup_delay_s=0.05)
        for i in range(4):
            self.cluster.add_node(f"node-{i}", "4", {"rlscale.io/pool": "on-demand"})
        self.cluster.add_deployment(NS, "api", 3, cpu="500m")
        self.cluster.add_deployment(NS, "batch", 2, cpu="1")
        self.cluster.start()
        self.server = FakeApiServer(self.cluster).start()
        self.kubeconfig = tmp / "kubeconfig"
        self.server.kubeconfig(self.kubeconfig)
        self.t0, self.speedup = time.time(), speedup
        self.load = load
        queries: dict[str, Any] = {}
        for svc in ("api", "batch"):
            queries[f'sum(rate(requests_total{{app="{svc}"}}[1m]))'] = lambda s=svc: self.arrivals(s)
            queries[f'rlscale:utilisation{{app="{svc}"}}'] = lambda s=svc: self.utilisation(s)
            queries[f'rlscale:p95{{app="{svc}"}}'] = lambda s=svc: 0.05 / max(0.05, 1 - min(self.utilisation(s), 0.95))
        self.prometheus = FakePrometheus(queries)
        assert self.cluster.wait_settled()

    def arrivals(self, svc: str) -> float:
        if self.load is not None:
            return self.load[svc]
        hours = ((time.time() - self.t0) * self.speedup / 3600.0) % 24
        daily = 0.5 - 0.5 * math.cos(2 * math.pi * (hours - 2) / 24)  # low at 02:00, peak at 14:00
        return {"api": 20 + 120 * daily, "batch": 0.4 + 1.2 * daily}[svc]

    def utilisation(self, svc: str) -> float:
        with self.cluster.lock:
            ready = self.cluster.deployments[(NS, svc)].ready_replicas
        return min(self.arrivals(svc) / (max(ready, 1) * REPLICA_RPS[svc]), 2.0)

    def config(self, tmp: Path, **extra: Any) -> Path:
        services = [
            {"service": svc, "namespace": NS, "kind": "Deployment", "name": svc, "min_replicas": lo, "max_replicas": hi,
             "queries": {"arrivals_rps": f'sum(rate(requests_total{{app="{svc}"}}[1m]))', "utilisation": f'rlscale:utilisation{{app="{svc}"}}',
                         "latency_p95_s": f'rlscale:p95{{app="{svc}"}}'}}
            for svc, (lo, hi) in BOUNDS.items()
        ]
        doc = {"kubeconfig": str(self.kubeconfig), "prometheus": {"url": self.prometheus.url, "timeout_s": 1.0},
               "request_timeout_s": 0.5, "speedup": self.speedup, "services": services, **extra}
        path = tmp / "cluster.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def close(self) -> None:
        self.prometheus.stop()
        try:
            self.server.stop()
        except OSError:
            pass
        self.cluster.stop()


@pytest.fixture
def fake(tmp_path: Path):  # type: ignore[no-untyped-def]
    f = Fake(tmp_path)
    yield f
    f.close()


class Scripted:
    """A policy that asks for a fixed cycle of replicas (some beyond the bounds) and, when told, a consolidation."""

    def __init__(self, cycle: list[tuple[int, int]], rebalance_at: set[int] | None = None, verb: int = 1) -> None:
        self.cycle, self.rebalance_at, self.n, self.verb = cycle, rebalance_at or set(), 0, verb

    def reset(self, n: int = 1) -> None:
        pass

    def act(self, metrics: Any) -> Action:
        replicas = self.cycle[self.n % len(self.cycle)]
        verb = self.verb if self.n in self.rebalance_at else 0
        self.n += 1
        return Action(np.array([replicas], dtype=np.int64), np.array([verb], dtype=np.int64))


def run_loop(cluster: Any, scenario: Any, policy: Any, audit: Path, interval: float, steps: int, during=None) -> ControlLoop:  # type: ignore[no-untyped-def]
    config = GuardConfig.from_scenario(scenario, interval, max_step_change=10)
    loop = ControlLoop(cluster, Decider(scenario, policy, config), AuditLog(audit), interval_s=interval, steps=steps)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    if during is not None:
        during(loop)
    thread.join(timeout=120)
    assert not thread.is_alive(), "the control loop did not finish"
    loop.audit.close()
    return loop


def decisions(audit: Path) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, audit.read_text().splitlines()) if r.get("kind") == "decision"]


def wait_for(loop: ControlLoop, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while loop.decisions < n and time.monotonic() < deadline:
        time.sleep(0.01)


def within_bounds(fake: Fake) -> None:
    for entry in fake.cluster.patch_log:
        if entry["code"] == 200:
            lo, hi = BOUNDS[entry["name"]]
            assert lo <= entry["to"] <= hi, entry


def open_cluster(fake: Fake, tmp_path: Path, **extra: Any):  # type: ignore[no-untyped-def]
    settings = load_settings(fake.config(tmp_path, **extra))
    scenario = settings.bounded(load_scenario("mixed-pools"))
    cluster, hpas = open_kubernetes_cluster(scenario, settings)
    return cluster, scenario, hpas


CYCLE = [(5, 3), (3, 1), (50, 9), (0, 0), (6, 2)]  # (api, batch): the 3rd and 4th are outside the bounds


def test_reads_desired_from_the_scale_subresource_and_ready_from_pods(fake: Fake, tmp_path: Path) -> None:
    cluster, _, hpas = open_cluster(fake, tmp_path)
    sample = cluster.read_metrics()
    assert hpas == [] and sample is not None
    assert sample.metrics.desired.tolist() == [[3, 2]] and sample.metrics.ready.tolist() == [[3, 2]]
    assert sample.metrics.arrivals_rps[0, 0] == pytest.approx(fake.arrivals("api"), rel=0.05)
    assert sample.metrics.latency_p95_s[0, 0] > 0
    cluster.apply(Action(np.array([[6, 1]]), np.array([0])))
    with fake.cluster.lock:
        assert [fake.cluster.deployments[(NS, s)].replicas for s in ("api", "batch")] == [6, 1]
    assert cluster.audit_note()["kubernetes"]["patches"][0]["status"] == "ok"
    cluster.close()


def test_refuses_to_fight_an_hpa_unless_told_to_take_over(fake: Fake, tmp_path: Path) -> None:
    fake.cluster.add_hpa(NS, "api", "api")
    with pytest.raises(ConfigError, match=r"HorizontalPodAutoscaler shop/api scales Deployment api .* would fight"):
        open_cluster(fake, tmp_path)
    settings = load_settings(fake.config(tmp_path))
    cluster, hpas = open_kubernetes_cluster(settings.bounded(load_scenario("mixed-pools")), settings, take_over=True)
    assert len(hpas) == 1
    cluster.close()


def test_a_missing_deployment_is_one_line_naming_it(fake: Fake, tmp_path: Path) -> None:
    with fake.cluster.lock:
        del fake.cluster.deployments[(NS, "batch")]
    with pytest.raises(ConfigError, match=r'Deployment shop/batch \(service .batch.\): not_found 404: deployments.apps "batch" not found'):
        open_cluster(fake, tmp_path)


def test_api_server_down_for_three_intervals_holds_then_resumes(fake: Fake, tmp_path: Path) -> None:
    cluster, scenario, _ = open_cluster(fake, tmp_path)
    interval = 0.2

    def outage(loop: ControlLoop) -> None:
        wait_for(loop, 4)
        fake.server.down()
        time.sleep(3 * interval)
        fake.server.up()

    loop = run_loop(cluster, scenario, Scripted(CYCLE), tmp_path / "audit.jsonl", interval, 14, outage)
    lines = decisions(tmp_path / "audit.jsonl")
    down = [d for d in lines if d.get("kubernetes", {}).get("read", {}).get("reason") == "unreachable"]
    assert len(down) >= 2 and all(d["fallback"]["reason"] == "metrics_missing" for d in down)
    held = lines[lines.index(down[0]) - 1]["final_action"]["replicas"]
    assert all(d["final_action"]["replicas"] == held for d in down)  # the HPA fallback holds what was last set
    after = lines[lines.index(down[-1]) + 1:]
    assert any(p["status"] == "ok" for d in after for p in d.get("kubernetes", {}).get("patches", []))
    assert loop.decisions == 14
    within_bounds(fake)
    cluster.close()


def test_conflict_on_every_other_patch_is_retried_after_a_reread(fake: Fake, tmp_path: Path) -> None:
    cluster, scenario, _ = open_cluster(fake, tmp_path)
    fake.cluster.conflict_every_other_patch = True
    run_loop(cluster, scenario, Scripted(CYCLE), tmp_path / "audit.jsonl", 0.15, 10)
    lines = decisions(tmp_path / "audit.jsonl")
    patches = [p for d in lines for p in d.get("kubernetes", {}).get("patches", [])]
    assert sum("retried_after" in p for p in patches) >= 2
    assert all(p["retried_after"]["reason"] == "conflict" for p in patches if "retried_after" in p)
    codes = [e["code"] for e in fake.cluster.patch_log]
    assert codes.count(409) >= 2 and codes.count(200) == sum(p["status"] == "ok" for p in patches)
    within_bounds(fake)
    last = lines[-1]["final_action"]["replicas"]
    with fake.cluster.lock:
        assert [fake.cluster.deployments[(NS, s)].replicas for s in ("api", "batch")] == last
    cluster.close()


def test_forbidden_patch_is_held_and_named_then_resumes_when_granted(fake: Fake, tmp_path: Path) -> None:
    cluster, scenario, _ = open_cluster(fake, tmp_path)
    read_only = {NS: [{"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["get"]},
                      {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]}
    fake.cluster.rbac = read_only

    def grant(loop: ControlLoop) -> None:
        wait_for(loop, 5)
        fake.cluster.rbac = None

    run_loop(cluster, scenario, Scripted(CYCLE), tmp_path / "audit.jsonl", 0.15, 10, grant)
    lines = decisions(tmp_path / "audit.jsonl")
    refused = [d for d in lines if "forbidden 403" in d.get("apply_error", "")]
    assert len(refused) >= 3 and not any(d["applied"] for d in refused)
    assert 'cannot patch resource "deployments/scale" in API group "apps"' in refused[0]["kubernetes"]["patches"][0]["message"]
    assert any(d["applied"] for d in lines[lines.index(refused[-1]) + 1:])
    within_bounds(fake)
    cluster.close()


def test_a_2s_api_server_times_out_holds_and_resumes(fake: Fake, tmp_path: Path) -> None:
    cluster, scenario, _ = open_cluster(fake, tmp_path)

    def slow(loop: ControlLoop) -> None:
        wait_for(loop, 3)
        fake.cluster.slow_s = 2.0
        wait_for(loop, 6, timeout=20)
        fake.cluster.slow_s = 0.0

    loop = run_loop(cluster, scenario, Scripted(CYCLE), tmp_path / "audit.jsonl", 0.2, 10, slow)
    lines = decisions(tmp_path / "audit.jsonl")
    timed_out = [d for d in lines if d.get("kubernetes", {}).get("read", {}).get("reason") == "timeout"]
    assert len(timed_out) >= 2 and all(d["fallback"]["reason"] == "metrics_missing" for d in timed_out)
    assert any(d["applied"] for d in lines[lines.index(timed_out[-1]) + 1:])
    assert loop.decisions == 10
    within_bounds(fake)
    cluster.close()


@pytest.mark.parametrize("verb", [1, 3], ids=["consolidate", "drain"])
def test_consolidate_cordons_and_evicts_waiting_on_a_disruption_budget(tmp_path: Path, verb: int) -> None:
    fake = Fake(tmp_path, load={"api": 40.0, "batch": 0.5})
    try:
        fake.cluster.add_budget(NS, "batch", {"app": "batch"}, min_available=2)
        cluster, scenario, _ = open_cluster(fake, tmp_path, rebalance="consolidate")
        with fake.cluster.lock:
            nodes_before = {p.node for p in fake.cluster.pods.values() if p.namespace == NS}

        def lift(loop: ControlLoop) -> None:
            deadline = time.monotonic() + 10
            while not any(e["code"] == 429 for e in fake.cluster.evictions) and time.monotonic() < deadline:
                time.sleep(0.02)
            with fake.cluster.lock:
                fake.cluster.budgets.clear()

        run_loop(cluster, scenario, Scripted([(3, 2)], rebalance_at={1}, verb=verb), tmp_path / "audit.jsonl", 0.2, 12, lift)
        notes = [d["kubernetes"]["rebalance"] for d in decisions(tmp_path / "audit.jsonl") if "rebalance" in d.get("kubernetes", {})]
        assert notes[0]["status"] in ("cordoned", "evicting", "waiting")
        node = notes[0]["node"]
        assert any(n.get("status") == "waiting" and n["blocked"]["reason"] == "too_many_requests" for n in notes)
        assert notes[-1]["status"] == "done"
        with fake.cluster.lock:
            assert fake.cluster.nodes[node].unschedulable
            assert not [p for p in fake.cluster.pods.values() if p.node == node and p.namespace == NS]
            assert all(e["code"] in (201, 429) for e in fake.cluster.evictions)
        assert node in nodes_before
        cluster.close()
    finally:
        fake.close()


@pytest.mark.slow
def test_serve_drives_two_deployments_through_a_compressed_day(tmp_path: Path) -> None:
    """``rlscale serve --cluster kubernetes``: 96 decisions 15 min apart (a day), 0.1 s each; audit == API server record."""
    fake = Fake(tmp_path, speedup=9000.0)
    try:
        config = fake.config(tmp_path)
        audit, summary = tmp_path / "audit.jsonl", tmp_path / "summary.json"
        cmd = [sys.executable, "-m", "rlscale.cli", "serve", "--cluster", "kubernetes", "--cluster-config", str(config),
               "--scenario", "mixed-pools", "--model", "models/mixed-pools", "--interval", "900", "--steps", "96",
               "--port", "0", "--audit-log", str(audit), "--summary", str(summary)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines = decisions(audit)
        assert len(lines) == 96
        assert all(d["acted_by"] == "policy" for d in lines[2:]), {d["acted_by"] for d in lines}
        ok = [(p["service"], p["to"]) for d in lines for p in d.get("kubernetes", {}).get("patches", []) if p["status"] == "ok"]
        recorded = [(e["name"], e["to"]) for e in fake.cluster.patch_log if e["code"] == 200]
        assert ok == recorded and len(ok) >= 5
        within_bounds(fake)
        final = lines[-1]["final_action"]["replicas"]
        with fake.cluster.lock:
            assert [fake.cluster.deployments[(NS, s)].replicas for s in ("api", "batch")] == final
        result = json.loads(summary.read_text())
        assert result["decisions"] == 96 and result["cluster"] == "kubernetes"
        assert result["kubernetes"]["counters"]["patches_ok"] == len(recorded)
    finally:
        fake.close()


def test_serving_to_kubernetes_and_keda_imports_no_torch() -> None:
    code = ("import sys; import rlscale.clusters.kubernetes.backend, rlscale.controller.keda, rlscale.controller.serve; "
            "print([m for m in sys.modules if m.split('.')[0] in ('torch', 'stable_baselines3')])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-500:]


def test_a_missing_cluster_config_is_one_line_from_the_cli(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "rlscale.cli", "serve", "--policy", "hpa", "--cluster", "kubernetes", "--port", "0",
                           "--audit-log", str(tmp_path / "a.jsonl")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --cluster kubernetes needs --cluster-config FILE " \
        "(the services' workloads and PromQL; docs/KUBERNETES.md)", proc.stderr[-800:]


def test_other_mistakes_are_one_config_error_naming_the_field(tmp_path: Path) -> None:
    from rlscale.controller.keda import DecisionBoard, KedaServer
    from rlscale.controller.serve import ServeOptions, serve

    bad = tmp_path / "bad.yaml"
    bad.write_text("services: [{service: api, name: api, min_replicas: 1, max_replicas: 3, queries: {arrivals_rps: a, utilisation: u}}]\n"
                   "prometheus: {url: 'http://127.0.0.1:9'}\nrebalance: sometimes\n")
    with pytest.raises(ConfigError, match=f"^{bad}: rebalance: Input should be 'none' or 'consolidate'$"):
        serve(ServeOptions(policy="hpa", cluster="kubernetes", cluster_config=str(bad), audit_log=str(tmp_path / "a.jsonl")))
    with pytest.raises(ConfigError, match="^--keda-grpc serves the control loop's decisions"):
        serve(ServeOptions(policy="hpa", cluster="none", keda_grpc="127.0.0.1:0", audit_log=str(tmp_path / "a.jsonl")))
    with pytest.raises(ConfigError, match="^--keda-grpc 0.0.0.0:9090: a non-loopback address needs --keda-tls"):
        KedaServer(DecisionBoard(("api",)), "0.0.0.0:9090", max_age_s=10)
    with pytest.raises(ConfigError, match="^--keda-grpc 9090: expected HOST:PORT"):
        KedaServer(DecisionBoard(("api",)), "9090", max_age_s=10)


def test_each_api_error_maps_to_one_reason_from_real_answers(fake: Fake, tmp_path: Path) -> None:
    """404, 403, 409, 422, 429 and 401 as the API server sends them, through the official client, to ``errors.classify``."""
    from kubernetes.client import V1Eviction, V1ObjectMeta

    from rlscale.clusters.kubernetes.backend import CallFailed
    from rlscale.clusters.kubernetes.errors import classify

    cluster, _, _ = open_cluster(fake, tmp_path)
    rv = cluster._read_scale(0).resource_version

    def reason(fn: Any, *args: Any, **kwargs: Any) -> Any:
        with pytest.raises(CallFailed) as err:
            cluster._call("test", fn, *args, **kwargs)
        return err.value.problem

    assert reason(cluster.apps.read_namespaced_deployment_scale, "nope", NS).reason == "not_found"
    stale = reason(cluster.apps.patch_namespaced_deployment_scale, "api", NS, {"metadata": {"resourceVersion": "1"}, "spec": {"replicas": 4}})
    assert (stale.reason, stale.status, stale.write_effect) == ("conflict", 409, "held; re-read next interval")
    invalid = reason(cluster.apps.patch_namespaced_deployment_scale, "api", NS, {"metadata": {"resourceVersion": rv}, "spec": {"replicas": -1}})
    assert (invalid.reason, invalid.status) == ("invalid", 422) and "spec.replicas" in invalid.message
    fake.cluster.add_budget(NS, "api", {"app": "api"}, min_available=3)
    with fake.cluster.lock:
        pod = next(p.name for p in fake.cluster.pods.values() if p.namespace == NS and p.labels["app"] == "api")
    body = V1Eviction(metadata=V1ObjectMeta(name=pod, namespace=NS))
    budget = reason(cluster.core.create_namespaced_pod_eviction, pod, NS, body)
    assert (budget.reason, budget.status, budget.write_effect) == ("too_many_requests", 429, "wait")
    fake.cluster.rbac = {}
    denied = reason(cluster.core.list_namespaced_pod, NS)
    assert (denied.reason, denied.status) == ("forbidden", 403) and 'cannot list resource "pods"' in denied.message
    fake.cluster.rbac = None
    fake.cluster.token = "rotated"  # the kubeconfig's token is no longer accepted
    assert reason(cluster.core.list_namespaced_pod, NS).reason == "unauthorized"
    assert classify(ValueError("odd")).reason == "bad_response"
    cluster.close()
