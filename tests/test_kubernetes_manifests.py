"""deploy/kubernetes/*.yaml: valid against the Kubernetes schemas, and RBAC that grants exactly the calls the backend makes."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_kubernetes import NS, Fake, Scripted, open_cluster, run_loop  # noqa: E402

from rlscale.clusters.kubernetes.client import api_client  # noqa: E402
from rlscale.clusters.kubernetes.lease import KubernetesLease  # noqa: E402
from rlscale.clusters.kubernetes.settings import LeaseSpec  # noqa: E402
from kubernetes.client import CoordinationV1Api  # noqa: E402

kv = pytest.importorskip("kubernetes_validate")

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"


def documents() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, doc) for p in sorted(DEPLOY.glob("*.yaml")) for doc in yaml.safe_load_all(p.read_text()) if doc]


def test_every_manifest_validates_against_the_kubernetes_schemas() -> None:
    version = kv.latest_version()
    kinds = set()
    for name, doc in documents():
        kinds.add(doc["kind"])
        if doc["kind"] == "ScaledObject":  # a KEDA CRD: its HPA behaviour is Kubernetes' own type, validated as such
            behavior = doc["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
            hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "keda-hpa-api"},
                   "spec": {"scaleTargetRef": doc["spec"]["scaleTargetRef"], "minReplicas": doc["spec"]["minReplicaCount"],
                            "maxReplicas": doc["spec"]["maxReplicaCount"], "behavior": behavior}}
            kv.validate(hpa, version, strict=True)
            for rules in behavior.values():
                assert rules["stabilizationWindowSeconds"] == 0 and rules["tolerance"] == 0
            trigger = doc["spec"]["triggers"][0]
            assert trigger["type"] == "external" and trigger["metadata"]["service"] and trigger["metadata"]["scalerAddress"]
            assert doc["spec"]["fallback"]["replicas"] >= doc["spec"]["minReplicaCount"]
            continue
        kv.validate(doc, version, strict=True)
    assert {"Deployment", "ServiceAccount", "Role", "ClusterRole", "Service", "ScaledObject"} <= kinds


def test_the_controller_runs_non_root_on_a_read_only_root_filesystem_with_requests() -> None:
    (dep,) = [d for _, d in documents() if d["kind"] == "Deployment"]
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["serviceAccountName"] == "rlscale"
    (c,) = pod["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] and not c["securityContext"]["allowPrivilegeEscalation"]
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]


def grants(files: tuple[str, ...]) -> tuple[dict[str, list[dict[str, Any]]], set[tuple[str, str, str]]]:
    """Rules by scope as our API server enforces them (a Role in its namespace, a ClusterRole everywhere), and the flat set."""
    rbac: dict[str, list[dict[str, Any]]] = {}
    flat: set[tuple[str, str, str]] = set()
    for name, doc in documents():
        if name not in files or doc["kind"] not in ("Role", "ClusterRole"):
            continue
        scope = doc["metadata"]["namespace"] if doc["kind"] == "Role" else "*"
        rbac.setdefault(scope, []).extend(doc["rules"])
        flat |= {(g, r, v) for rule in doc["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return rbac, flat


def used(fake: Fake) -> set[tuple[str, str, str]]:
    with fake.cluster.lock:
        assert not [r for r in fake.cluster.requests if r.code == 403], "a call the Role does not grant"
        return {(r.group, r.resource, r.verb) for r in fake.cluster.requests}


def held_lease(fake: Fake) -> KubernetesLease:
    """The controller's Lease in its own namespace, as ``serve`` holds it: created, then renewed every 0.1 s."""
    lease = KubernetesLease(CoordinationV1Api(api_client(str(fake.kubeconfig), None, "test")),
                            LeaseSpec(namespace="rlscale", duration_s=2, renew_deadline_s=1.5, retry_period_s=0.1), identity="rlscale-0")
    assert lease.try_acquire()
    return lease


def test_the_role_grants_exactly_the_verbs_the_backend_calls(tmp_path: Path) -> None:
    rbac, granted = grants(("rbac.yaml",))
    fake = Fake(tmp_path)
    try:
        fake.cluster.rbac = rbac
        cluster, scenario, _ = open_cluster(fake, tmp_path)
        lease = held_lease(fake)
        run_loop(cluster, scenario, Scripted([(5, 3), (3, 1)], rebalance_at={2}), tmp_path / "audit.jsonl", 0.1, 4)
        assert lease.held()  # renewed (get + update) all along
        lease.release()
        cluster.close()
        assert used(fake) == granted
    finally:
        fake.close()


def test_consolidate_needs_exactly_the_consolidate_role_on_top(tmp_path: Path) -> None:
    rbac, granted = grants(("rbac.yaml", "rbac-consolidate.yaml"))
    fake = Fake(tmp_path, load={"api": 30.0, "batch": 0.5})
    try:
        fake.cluster.rbac = rbac
        fake.cluster.add_budget(NS, "batch", {"app": "batch"}, min_available=2)  # one 429 on the way
        cluster, scenario, _ = open_cluster(fake, tmp_path, rebalance="consolidate")
        lease = held_lease(fake)

        def lift(loop: Any) -> None:
            deadline = time.monotonic() + 10
            while not any(e["code"] == 429 for e in fake.cluster.evictions) and time.monotonic() < deadline:
                time.sleep(0.02)
            with fake.cluster.lock:
                fake.cluster.budgets.clear()

        run_loop(cluster, scenario, Scripted([(3, 2), (3, 2), (4, 2)], rebalance_at={1}), tmp_path / "audit.jsonl", 0.15, 10, lift)
        assert cluster.consolidator is not None and cluster.consolidator.finished
        assert lease.held()
        lease.release()
        cluster.close()
        assert used(fake) == granted
    finally:
        fake.close()
