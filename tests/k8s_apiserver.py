"""A small Kubernetes API server of our own, on 127.0.0.1, for the Kubernetes backend's tests.

No API server can be installed on these machines, so this one speaks the
subset of the wire format the backend uses, as the Kubernetes API reference
and the apiserver's own code define it (not as the backend happens to send
it), so the official Python client parses every answer into its typed models:

* ``apps/v1`` Deployments and their ``scale`` subresource (``autoscaling/v1``
  ``Scale``: ``spec.replicas``, ``status.replicas``, ``status.selector``),
  GET and PATCH with the three patch types (``json-patch+json``,
  ``merge-patch+json``, ``strategic-merge-patch+json``; anything else 415). A
  ``metadata.resourceVersion`` in a patch is a precondition: stale -> 409
  ``Conflict`` "the object has been modified; please apply your changes to
  the latest version and try again". ``spec.replicas`` < 0 -> 422 ``Invalid``
  with a ``FieldValueInvalid`` cause. Every write, and every status change
  made by the controller loop, takes a new resourceVersion from one global
  counter (etcd's revision).
* ``v1`` Pods: namespaced list with ``labelSelector``, all-namespace list with
  ``fieldSelector`` (``spec.nodeName``, ``status.phase``, ``metadata.name``),
  and the ``eviction`` subresource (``policy/v1`` ``Eviction``): a pod covered
  by a PodDisruptionBudget whose ``disruptionsAllowed`` is 0 -> 429
  ``TooManyRequests`` "Cannot evict pod as it would violate the pod's
  disruption budget." with a ``DisruptionBudget`` cause; Pending or finished
  pods are deleted without a budget check; success -> 201 ``Status``
  ``Success``.
* ``v1`` Nodes: list, get, patch (``spec.unschedulable``: cordon).
* ``autoscaling/v2`` HorizontalPodAutoscalers: list per namespace.
* ``coordination.k8s.io/v1`` Leases (leader election): get, create (an
  existing name -> 409 ``AlreadyExists``), replace (a stale
  ``metadata.resourceVersion`` -> 409 ``Conflict``; none -> an
  unconditional update, as the Lease strategy allows; a missing Lease ->
  404, no create on update), delete. ``spec.acquireTime``/``renewTime`` are
  MicroTime, parsed as the apiserver does with the layout
  ``2006-01-02T15:04:05.000000Z07:00`` (exactly six fractional digits, else
  400 ``BadRequest``) and stored in UTC; ``leaseDurationSeconds`` <= 0 or
  ``leaseTransitions`` < 0 -> 422 ``Invalid``; a name or namespace in the
  body that differs from the URL's -> 400.
* Authentication: a bearer token (401 ``Unauthorized`` otherwise). RBAC: when
  rules are given (Role rules per namespace, ClusterRole rules as ``"*"``),
  anything not granted is 403 ``Forbidden`` with the apiserver's message
  (``User "system:serviceaccount:..." cannot patch resource
  "deployments/scale" in API group "apps" in the namespace "shop"``).

A controller loop (a thread, every ``tick_s``) does what the Deployment and
ReplicaSet controllers, the scheduler and the kubelet would: it creates pods
until a Deployment has ``spec.replicas`` of them (first-fit onto schedulable
nodes by CPU request; Pending when none fits), deletes surplus pods (not-ready
first, then newest), marks a scheduled pod Running and Ready
``startup_delay_s`` after it was created, and keeps ``status.replicas`` and
``status.readyReplicas`` current. Faults for tests: ``down()``/``up()`` close
and reopen the listening socket on the same port, ``slow_s`` delays every
answer, ``conflict_every_other_patch`` lets "another writer" touch the object
before every second scale patch (so its precondition fails as a real one
would), and RBAC rules can be narrowed at any time.

``FakePrometheus`` answers ``/api/v1/query`` for the exact PromQL strings a
test registers, with the instant-vector JSON of the Prometheus HTTP API.
"""

from __future__ import annotations

import copy
import json
import math
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN = "test-token-0123456789"
USER = "system:serviceaccount:rlscale:rlscale"


def rfc3339(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000.0 if quantity.endswith("m") else float(quantity)


class ApiError(Exception):
    """An error answer: the HTTP code and the ``Status`` object the apiserver would send."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
                       "reason": reason, "code": code}
        if details:
            self.status["details"] = details
        self.retry_after = retry_after


def not_found(group: str, resource: str, name: str) -> ApiError:
    qualified = f"{resource}.{group}" if group else resource
    return ApiError(404, "NotFound", f'{qualified} "{name}" not found', {"name": name, "group": group, "kind": resource})


# --------------------------------------------------------------------------- selectors (the apiserver's label and field selector grammar)


def parse_label_selector(text: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """``a=b,c!=d,e in (x,y),f notin (z),g,!h`` -> requirements (key, op, values)."""
    reqs: list[tuple[str, str, tuple[str, ...]]] = []
    for part in re.findall(r"[^,(]+(?:\([^)]*\))?", text or ""):
        part = part.strip()
        if not part:
            continue
        m = re.match(r"^([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)$", part)
        if m:
            reqs.append((m.group(1), m.group(2), tuple(v.strip() for v in m.group(3).split(",") if v.strip())))
        elif "!=" in part:
            k, v = part.split("!=", 1)
            reqs.append((k.strip(), "!=", (v.strip(),)))
        elif "==" in part or "=" in part:
            k, v = part.split("==", 1) if "==" in part else part.split("=", 1)
            reqs.append((k.strip(), "=", (v.strip(),)))
        elif part.startswith("!"):
            reqs.append((part[1:].strip(), "!exists", ()))
        else:
            reqs.append((part, "exists", ()))
    return reqs


def matches(labels: dict[str, str], reqs: list[tuple[str, str, tuple[str, ...]]]) -> bool:
    for key, op, values in reqs:
        have = labels.get(key)
        ok = {
            "=": have == values[0] if values else False,
            "!=": have != values[0] if values else True,
            "in": have in values,
            "notin": have not in values,
            "exists": have is not None,
            "!exists": have is None,
        }[op]
        if not ok:
            return False
    return True


def selector_string(match_labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))


# --------------------------------------------------------------------------- patches (RFC 7386 merge, RFC 6902 JSON patch)


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in str(op.get("path", "")).split("/")[1:]]
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent.setdefault(p, {})
        last = parts[-1] if parts else ""
        kind = op.get("op")
        if kind in ("add", "replace"):
            parent[last] = op.get("value")
        elif kind == "remove":
            parent.pop(last, None)
        elif kind == "test":
            if parent.get(last) != op.get("value"):
                raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: test failed for {op.get('path')}")
        else:
            raise ApiError(400, "BadRequest", f"unexpected patch operation {kind!r}")
    return doc


# --------------------------------------------------------------------------- state


@dataclass
class Deployment:
    namespace: str
    name: str
    replicas: int
    labels: dict[str, str]
    cpu: str = "500m"
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    rv: int = 0
    generation: int = 1
    created: float = field(default_factory=time.time)
    status_replicas: int = 0
    ready_replicas: int = 0
    hash: str = field(default_factory=lambda: uuid.uuid4().hex[:10])


@dataclass
class Pod:
    namespace: str
    name: str
    labels: dict[str, str]
    cpu: str
    owner_kind: str
    owner_name: str
    created: float
    node: str | None = None
    phase: str = "Pending"
    ready: bool = False
    ready_at: float | None = None
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    rv: int = 0


@dataclass
class Node:
    name: str
    cpu: str
    labels: dict[str, str]
    unschedulable: bool = False
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    rv: int = 0


@dataclass
class Budget:
    namespace: str
    name: str
    match_labels: dict[str, str]
    min_available: int


@dataclass
class Hpa:
    namespace: str
    name: str
    target_kind: str
    target_name: str


@dataclass(frozen=True)
class Request:
    method: str
    verb: str
    group: str
    resource: str
    namespace: str | None
    name: str | None
    code: int


class FakeCluster:
    """The objects and the controller loop behind ``FakeApiServer``."""

    def __init__(self, startup_delay_s: float = 0.1, tick_s: float = 0.02) -> None:
        self.lock = threading.RLock()
        self.revision = 1
        self.deployments: dict[tuple[str, str], Deployment] = {}
        self.pods: dict[tuple[str, str], Pod] = {}
        self.nodes: dict[str, Node] = {}
        self.budgets: list[Budget] = []
        self.hpas: list[Hpa] = []
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.lease_log: list[dict[str, Any]] = []
        self.startup_delay_s = startup_delay_s
        self.tick_s = tick_s
        self.patch_log: list[dict[str, Any]] = []
        self.evictions: list[dict[str, Any]] = []
        self.requests: list[Request] = []
        self.rbac: dict[str, list[dict[str, Any]]] | None = None
        self.slow_s = 0.0
        self.token = TOKEN
        self.conflict_every_other_patch = False
        self._scale_patches = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-kube-controllers", daemon=True)

    def next_rv(self) -> int:
        self.revision += 1
        return self.revision

    # -- setup

    def add_node(self, name: str, cpu: str = "4", labels: dict[str, str] | None = None, daemonset_pod: bool = True) -> None:
        with self.lock:
            self.nodes[name] = Node(name, cpu, {"kubernetes.io/hostname": name, **(labels or {})}, rv=self.next_rv())
            if daemonset_pod:
                pod = Pod("kube-system", f"node-exporter-{name}", {"app": "node-exporter"}, "10m", "DaemonSet", "node-exporter",
                          time.time(), node=name, phase="Running", ready=True, rv=self.next_rv())
                self.pods[(pod.namespace, pod.name)] = pod

    def add_deployment(self, namespace: str, name: str, replicas: int, cpu: str = "500m") -> Deployment:
        with self.lock:
            dep = Deployment(namespace, name, replicas, {"app": name}, cpu, rv=self.next_rv())
            self.deployments[(namespace, name)] = dep
            return dep

    def add_budget(self, namespace: str, name: str, match_labels: dict[str, str], min_available: int) -> None:
        with self.lock:
            self.budgets.append(Budget(namespace, name, match_labels, min_available))

    def add_hpa(self, namespace: str, name: str, target_name: str, target_kind: str = "Deployment") -> None:
        with self.lock:
            self.hpas.append(Hpa(namespace, name, target_kind, target_name))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def wait_settled(self, timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if all(d.ready_replicas == d.replicas == d.status_replicas for d in self.deployments.values()):
                    return True
            time.sleep(self.tick_s)
        return False

    # -- the controllers, the scheduler and the kubelet

    def _run(self) -> None:
        while not self._stop.is_set():
            with self.lock:
                self.reconcile(time.time())
            self._stop.wait(self.tick_s)

    def reconcile(self, now: float) -> None:
        for dep in self.deployments.values():
            owned = [p for p in self.pods.values() if p.owner_kind == "ReplicaSet" and p.owner_name == f"{dep.name}-{dep.hash}" and p.namespace == dep.namespace]
            for _ in range(dep.replicas - len(owned)):
                pod = Pod(dep.namespace, f"{dep.name}-{dep.hash}-{uuid.uuid4().hex[:5]}", dict(dep.labels), dep.cpu, "ReplicaSet",
                          f"{dep.name}-{dep.hash}", now, rv=self.next_rv())
                self.pods[(pod.namespace, pod.name)] = pod
                owned.append(pod)
            if len(owned) > dep.replicas:
                ranked = sorted(owned, key=lambda p: (p.ready, -p.created))
                for pod in ranked[: len(owned) - dep.replicas]:
                    del self.pods[(pod.namespace, pod.name)]
                owned = [p for p in owned if (p.namespace, p.name) in self.pods]
            for pod in owned:
                if pod.node is None:
                    pod.node = self._schedule(pod)
                    if pod.node is not None:
                        pod.rv = self.next_rv()
                if pod.node is not None and not pod.ready and now - pod.created >= self.startup_delay_s:
                    pod.phase, pod.ready, pod.ready_at, pod.rv = "Running", True, now, self.next_rv()
            ready = sum(p.ready for p in owned)
            if (len(owned), ready) != (dep.status_replicas, dep.ready_replicas):
                dep.status_replicas, dep.ready_replicas, dep.rv = len(owned), ready, self.next_rv()

    def _schedule(self, pod: Pod) -> str | None:
        need = cpu_cores(pod.cpu)
        for node in sorted(self.nodes.values(), key=lambda n: n.name):
            if node.unschedulable:
                continue
            used = sum(cpu_cores(p.cpu) for p in self.pods.values() if p.node == node.name)
            if used + need <= cpu_cores(node.cpu) + 1e-9:
                return node.name
        return None

    # -- views in the API's JSON

    def scale_json(self, dep: Deployment) -> dict[str, Any]:
        return {
            "kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {"name": dep.name, "namespace": dep.namespace, "uid": dep.uid, "resourceVersion": str(dep.rv),
                         "creationTimestamp": rfc3339(dep.created)},
            "spec": {"replicas": dep.replicas},
            "status": {"replicas": dep.status_replicas, "selector": selector_string(dep.labels)},
        }

    def deployment_json(self, dep: Deployment) -> dict[str, Any]:
        return {
            "kind": "Deployment", "apiVersion": "apps/v1",
            "metadata": {"name": dep.name, "namespace": dep.namespace, "uid": dep.uid, "resourceVersion": str(dep.rv),
                         "generation": dep.generation, "creationTimestamp": rfc3339(dep.created), "labels": dict(dep.labels)},
            "spec": {
                "replicas": dep.replicas,
                "selector": {"matchLabels": dict(dep.labels)},
                "template": {"metadata": {"labels": dict(dep.labels)},
                             "spec": {"containers": [{"name": "app", "image": "registry.example/app:1",
                                                      "resources": {"requests": {"cpu": dep.cpu}}}]}},
            },
            "status": {"observedGeneration": dep.generation, "replicas": dep.status_replicas, "updatedReplicas": dep.status_replicas,
                       "readyReplicas": dep.ready_replicas, "availableReplicas": dep.ready_replicas},
        }

    def pod_json(self, pod: Pod) -> dict[str, Any]:
        owner_api = "apps/v1"
        meta: dict[str, Any] = {
            "name": pod.name, "namespace": pod.namespace, "uid": pod.uid, "resourceVersion": str(pod.rv),
            "creationTimestamp": rfc3339(pod.created), "labels": dict(pod.labels),
            "ownerReferences": [{"apiVersion": owner_api, "kind": pod.owner_kind, "name": pod.owner_name,
                                 "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, pod.owner_name)), "controller": True, "blockOwnerDeletion": True}],
        }
        spec: dict[str, Any] = {"containers": [{"name": "app", "image": "registry.example/app:1",
                                                 "resources": {"requests": {"cpu": pod.cpu}}}]}
        if pod.node is not None:
            spec["nodeName"] = pod.node
        conditions = [{"type": "PodScheduled", "status": "True" if pod.node else "False", "lastTransitionTime": rfc3339(pod.created)}]
        if pod.node:
            conditions.append({"type": "Ready", "status": "True" if pod.ready else "False",
                               "lastTransitionTime": rfc3339(pod.ready_at or pod.created)})
        status: dict[str, Any] = {"phase": pod.phase, "conditions": conditions}
        if pod.node:
            status["startTime"] = rfc3339(pod.created)
        return {"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": spec, "status": status}

    def node_json(self, node: Node) -> dict[str, Any]:
        resources = {"cpu": node.cpu, "memory": "16Gi", "pods": "110"}
        return {
            "kind": "Node", "apiVersion": "v1",
            "metadata": {"name": node.name, "uid": node.uid, "resourceVersion": str(node.rv), "labels": dict(node.labels),
                         "creationTimestamp": rfc3339(time.time() - 3600)},
            "spec": {"unschedulable": True} if node.unschedulable else {},
            "status": {"capacity": resources, "allocatable": resources,
                       "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]},
        }

    def hpa_json(self, hpa: Hpa) -> dict[str, Any]:
        return {
            "kind": "HorizontalPodAutoscaler", "apiVersion": "autoscaling/v2",
            "metadata": {"name": hpa.name, "namespace": hpa.namespace, "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, hpa.name)),
                         "resourceVersion": str(self.revision)},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": hpa.target_kind, "name": hpa.target_name},
                     "minReplicas": 1, "maxReplicas": 10,
                     "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]},
            "status": {"currentReplicas": 1, "desiredReplicas": 1},
        }

    def lst(self, kind: str, api_version: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        for item in items:
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": str(self.revision)}, "items": items}

    # -- RBAC

    def allowed(self, verb: str, group: str, resource: str, namespace: str | None) -> bool:
        if self.rbac is None:
            return True
        scopes = ["*"] + ([namespace] if namespace else [])
        for scope in scopes:
            for rule in self.rbac.get(scope, []):
                if (group in rule.get("apiGroups", []) or "*" in rule.get("apiGroups", [])) and \
                        (resource in rule.get("resources", []) or "*" in rule.get("resources", [])) and \
                        (verb in rule.get("verbs", []) or "*" in rule.get("verbs", [])):
                    return True
        return False


# --------------------------------------------------------------------------- HTTP

ROUTES: list[tuple[str, re.Pattern[str]]] = [
    ("pods", re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods$")),
    ("pod_eviction", re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/eviction$")),
    ("pod", re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)$")),
    ("all_pods", re.compile(r"^/api/v1/pods$")),
    ("nodes", re.compile(r"^/api/v1/nodes$")),
    ("node", re.compile(r"^/api/v1/nodes/(?P<name>[^/]+)$")),
    ("scale", re.compile(r"^/apis/apps/v1/namespaces/(?P<ns>[^/]+)/(?P<res>deployments|statefulsets|replicasets)/(?P<name>[^/]+)/scale$")),
    ("deployment", re.compile(r"^/apis/apps/v1/namespaces/(?P<ns>[^/]+)/deployments/(?P<name>[^/]+)$")),
    ("hpas", re.compile(r"^/apis/autoscaling/v2/namespaces/(?P<ns>[^/]+)/horizontalpodautoscalers$")),
    ("leases", re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/(?P<ns>[^/]+)/leases$")),
    ("lease", re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/(?P<ns>[^/]+)/leases/(?P<name>[^/]+)$")),
]
RBAC_RESOURCE = {
    "pods": ("", "pods"), "pod_eviction": ("", "pods/eviction"), "pod": ("", "pods"), "all_pods": ("", "pods"),
    "nodes": ("", "nodes"), "node": ("", "nodes"), "deployment": ("apps", "deployments"),
    "hpas": ("autoscaling", "horizontalpodautoscalers"),
    "leases": ("coordination.k8s.io", "leases"), "lease": ("coordination.k8s.io", "leases"),
}
VERBS = {"GET": "get", "PATCH": "patch", "POST": "create", "PUT": "update", "DELETE": "delete"}
PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json", "application/strategic-merge-patch+json")


class Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # as Go's net/http does; else each answer waits for a delayed ACK

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.lock:
            self.server.connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        cluster = self.server.cluster
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if cluster.slow_s > 0:
            time.sleep(cluster.slow_s)
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        route, m = next(((r, p.match(url.path)) for r, p in ROUTES if p.match(url.path)), (None, None))
        params = m.groupdict() if m else {}
        collection = route in ("pods", "all_pods", "nodes", "hpas")
        verb = "list" if method == "GET" and collection else VERBS.get(method, method.lower())
        if route == "scale":
            group, resource = "apps", f"{params['res']}/scale"
        else:
            group, resource = RBAC_RESOURCE.get(route or "", ("", "unknown"))
        code = 500
        try:
            if self.headers.get("Authorization") != f"Bearer {cluster.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            if route is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            with cluster.lock:
                if not cluster.allowed(verb, group, resource, params.get("ns")):
                    raise forbidden(verb, group, resource, params.get("ns"), params.get("name"))
                code, body = self._route(cluster, route, method, params, query, raw)
            self._send(code, body)
        except ApiError as err:
            code = err.code
            self._send(err.code, err.status, err.retry_after)
        finally:
            with cluster.lock:
                cluster.requests.append(Request(method, verb, group, resource, params.get("ns"), params.get("name"), code))

    def _send(self, code: int, body: dict[str, Any], retry_after: int | None = None) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if retry_after:
                self.send_header("Retry-After", str(retry_after))
            self.send_header("Audit-Id", str(uuid.uuid4()))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _route(self, c: FakeCluster, route: str, method: str, p: dict[str, str], q: dict[str, str], raw: bytes) -> tuple[int, dict[str, Any]]:
        if route == "scale":
            if p["res"] != "deployments":
                raise not_found("apps", p["res"], p["name"])
            dep = c.deployments.get((p["ns"], p["name"]))
            if dep is None:
                raise not_found("apps", "deployments", p["name"])
            if method == "GET":
                return 200, c.scale_json(dep)
            if method == "PATCH":
                return 200, self._patch_scale(c, dep, raw)
        elif route == "deployment" and method == "GET":
            dep = c.deployments.get((p["ns"], p["name"]))
            if dep is None:
                raise not_found("apps", "deployments", p["name"])
            return 200, c.deployment_json(dep)
        elif route in ("pods", "all_pods") and method == "GET":
            labels = parse_label_selector(q.get("labelSelector", ""))
            fields = [tuple(f.split("!=", 1)) + ("!=",) if "!=" in f else tuple(f.split("=", 1)) + ("=",)
                      for f in (q.get("fieldSelector") or "").split(",") if f]
            items = [c.pod_json(pod) for pod in sorted(c.pods.values(), key=lambda x: (x.namespace, x.name))
                     if (route == "all_pods" or pod.namespace == p["ns"]) and matches(pod.labels, labels) and _fields_match(pod, fields)]
            return 200, c.lst("PodList", "v1", items)
        elif route == "pod" and method == "GET":
            pod = c.pods.get((p["ns"], p["name"]))
            if pod is None:
                raise not_found("", "pods", p["name"])
            return 200, c.pod_json(pod)
        elif route == "pod_eviction" and method == "POST":
            return self._evict(c, p, raw)
        elif route == "nodes" and method == "GET":
            return 200, c.lst("NodeList", "v1", [c.node_json(n) for n in sorted(c.nodes.values(), key=lambda n: n.name)])
        elif route == "node":
            node = c.nodes.get(p["name"])
            if node is None:
                raise not_found("", "nodes", p["name"])
            if method == "GET":
                return 200, c.node_json(node)
            if method == "PATCH":
                doc = self._apply_patch(c.node_json(node), raw)
                node.unschedulable = bool((doc.get("spec") or {}).get("unschedulable", False))
                node.rv = c.next_rv()
                return 200, c.node_json(node)
        elif route == "hpas" and method == "GET":
            return 200, c.lst("HorizontalPodAutoscalerList", "autoscaling/v2", [c.hpa_json(h) for h in c.hpas if h.namespace == p["ns"]])
        elif route == "leases" and method == "POST":
            return 201, self._write_lease(c, p["ns"], None, raw)
        elif route == "lease":
            key = (p["ns"], p["name"])
            if method == "GET":
                if key not in c.leases:
                    raise not_found("coordination.k8s.io", "leases", p["name"])
                return 200, copy.deepcopy(c.leases[key])
            if method == "PUT":
                return 200, self._write_lease(c, p["ns"], p["name"], raw)
            if method == "DELETE":
                if c.leases.pop(key, None) is None:
                    raise not_found("coordination.k8s.io", "leases", p["name"])
                return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                             "details": {"name": p["name"], "group": "coordination.k8s.io", "kind": "leases"}}
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on resources of kind {route!r}")

    def _apply_patch(self, doc: dict[str, Any], raw: bytes) -> dict[str, Any]:
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype not in PATCH_TYPES:
            raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - accepted media types include: {', '.join(PATCH_TYPES)}")
        try:
            patch = json.loads(raw or b"null")
        except ValueError:
            raise ApiError(400, "BadRequest", "error decoding patch: invalid JSON") from None
        if ctype == "application/json-patch+json":
            if not isinstance(patch, list):
                raise ApiError(400, "BadRequest", "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
            return json_patch(doc, patch)
        if not isinstance(patch, dict):
            raise ApiError(400, "BadRequest", "error decoding patch: expected an object")
        return merge_patch(doc, patch)

    def _patch_scale(self, c: FakeCluster, dep: Deployment, raw: bytes) -> dict[str, Any]:
        c._scale_patches += 1
        if c.conflict_every_other_patch and c._scale_patches % 2 == 0:
            dep.rv = c.next_rv()  # another writer (kubectl annotate, a GitOps sync) touched the Deployment first
        before = dep.replicas
        doc = self._apply_patch(c.scale_json(dep), raw)
        rv = (doc.get("metadata") or {}).get("resourceVersion")
        entry = {"t": time.time(), "namespace": dep.namespace, "name": dep.name, "from": before}
        if rv is not None and str(rv) != str(dep.rv):
            c.patch_log.append({**entry, "to": (doc.get("spec") or {}).get("replicas"), "code": 409})
            raise ApiError(409, "Conflict",
                           f'Operation cannot be fulfilled on deployments.apps "{dep.name}": the object has been modified; '
                           "please apply your changes to the latest version and try again",
                           {"name": dep.name, "group": "apps", "kind": "deployments"})
        replicas = (doc.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            c.patch_log.append({**entry, "to": replicas, "code": 422})
            raise ApiError(422, "Invalid", f'Scale.autoscaling "{dep.name}" is invalid: spec.replicas: Invalid value: {json.dumps(replicas)}: '
                           "must be greater than or equal to 0",
                           {"name": dep.name, "group": "autoscaling", "kind": "Scale",
                            "causes": [{"reason": "FieldValueInvalid", "message": f"Invalid value: {json.dumps(replicas)}: must be greater than or equal to 0",
                                        "field": "spec.replicas"}]})
        if replicas != dep.replicas:
            dep.replicas, dep.generation = replicas, dep.generation + 1
        dep.rv = c.next_rv()
        c.patch_log.append({**entry, "to": replicas, "code": 200, "resourceVersion": str(dep.rv)})
        return c.scale_json(dep)

    def _evict(self, c: FakeCluster, p: dict[str, str], raw: bytes) -> tuple[int, dict[str, Any]]:
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise ApiError(400, "BadRequest", "error decoding eviction") from None
        if (body.get("metadata") or {}).get("name") != p["name"]:
            raise ApiError(400, "BadRequest", "name in URL does not match name in Eviction object")
        pod = c.pods.get((p["ns"], p["name"]))
        if pod is None:
            raise not_found("", "pods", p["name"])
        if pod.phase in ("Pending", "Succeeded", "Failed"):
            del c.pods[(pod.namespace, pod.name)]
            c.evictions.append({"pod": f"{pod.namespace}/{pod.name}", "node": pod.node, "code": 201})
            return 201, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}
        budgets = [b for b in c.budgets if b.namespace == pod.namespace and b.match_labels and matches(pod.labels, parse_label_selector(selector_string(b.match_labels)))]
        if len(budgets) > 1:
            raise ApiError(500, "InternalError", "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.")
        if budgets:
            b = budgets[0]
            healthy = sum(1 for q in c.pods.values() if q.namespace == b.namespace and q.ready and matches(q.labels, parse_label_selector(selector_string(b.match_labels))))
            if healthy - b.min_available <= 0:
                c.evictions.append({"pod": f"{pod.namespace}/{pod.name}", "node": pod.node, "code": 429})
                raise ApiError(429, "TooManyRequests", "Cannot evict pod as it would violate the pod's disruption budget.",
                               {"causes": [{"reason": "DisruptionBudget",
                                            "message": f"The disruption budget {b.name} needs {b.min_available} healthy pods and has {healthy} currently"}]})
        del c.pods[(pod.namespace, pod.name)]
        c.evictions.append({"pod": f"{pod.namespace}/{pod.name}", "node": pod.node, "code": 201})
        return 201, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}


    def _write_lease(self, c: FakeCluster, ns: str, url_name: str | None, raw: bytes) -> dict[str, Any]:
        """Create (``url_name`` None) or replace a Lease, validated as the apiserver validates one."""
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            raise ApiError(400, "BadRequest", "error decoding Lease: invalid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", 'Lease in version "v1" cannot be handled as a Lease: expected an object')
        if body.get("kind", "Lease") != "Lease" or body.get("apiVersion", "coordination.k8s.io/v1") != "coordination.k8s.io/v1":
            raise ApiError(400, "BadRequest", f"the API version in the data ({body.get('apiVersion')}) does not match the expected API version (coordination.k8s.io/v1)")
        meta = body.get("metadata") or {}
        name = meta.get("name")
        if url_name is not None and name != url_name:
            raise ApiError(400, "BadRequest", f"the name of the object ({name}) does not match the name on the URL ({url_name})")
        if meta.get("namespace") not in (None, ns):
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
        if not name:
            raise ApiError(422, "Invalid", "Lease.coordination.k8s.io \"\" is invalid: metadata.name: Required value: name or generateName is required",
                           {"group": "coordination.k8s.io", "kind": "Lease",
                            "causes": [{"reason": "FieldValueRequired", "message": "Required value: name or generateName is required", "field": "metadata.name"}]})
        spec = dict(body.get("spec") or {})
        for field_name in ("acquireTime", "renewTime"):
            if spec.get(field_name) is not None:
                spec[field_name] = micro_time(spec[field_name])
        for field_name, low in (("leaseDurationSeconds", 1), ("leaseTransitions", 0)):
            value = spec.get(field_name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
                bound = "greater than 0" if low else "greater than or equal to 0"
                raise ApiError(422, "Invalid", f'Lease.coordination.k8s.io "{name}" is invalid: spec.{field_name}: Invalid value: {json.dumps(value)}: must be {bound}',
                               {"name": name, "group": "coordination.k8s.io", "kind": "Lease",
                                "causes": [{"reason": "FieldValueInvalid", "message": f"Invalid value: {json.dumps(value)}: must be {bound}",
                                            "field": f"spec.{field_name}"}]})
        key = (ns, name)
        old = c.leases.get(key)
        if url_name is None and old is not None:
            raise ApiError(409, "AlreadyExists", f'leases.coordination.k8s.io "{name}" already exists',
                           {"name": name, "group": "coordination.k8s.io", "kind": "leases"})
        if url_name is not None:
            if old is None:
                raise not_found("coordination.k8s.io", "leases", name)
            rv = meta.get("resourceVersion")
            if rv not in (None, "") and str(rv) != old["metadata"]["resourceVersion"]:
                c.lease_log.append({"t": time.time(), "name": name, "holder": spec.get("holderIdentity"), "code": 409})
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on leases.coordination.k8s.io "{name}": the object has been modified; '
                               "please apply your changes to the latest version and try again",
                               {"name": name, "group": "coordination.k8s.io", "kind": "leases"})
        created = old["metadata"] if old is not None else {"uid": str(uuid.uuid4()), "creationTimestamp": rfc3339(time.time())}
        obj = {"kind": "Lease", "apiVersion": "coordination.k8s.io/v1",
               "metadata": {"name": name, "namespace": ns, "uid": created["uid"], "resourceVersion": str(c.next_rv()),
                            "creationTimestamp": created["creationTimestamp"]},
               "spec": {k: v for k, v in spec.items() if v is not None and v != ""}}
        c.leases[key] = obj
        c.lease_log.append({"t": time.time(), "name": name, "holder": obj["spec"].get("holderIdentity"), "code": 201 if old is None else 200,
                            "transitions": obj["spec"].get("leaseTransitions")})
        return copy.deepcopy(obj)


MICRO_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\.(\d{6})(Z|[+-]\d{2}:\d{2})$")


def micro_time(text: Any) -> str:
    """A MicroTime as the apiserver reads it (layout ``2006-01-02T15:04:05.000000Z07:00``), written back in UTC."""
    m = MICRO_TIME.match(text) if isinstance(text, str) else None
    if m is None:
        raise ApiError(400, "BadRequest", f'Lease in version "v1" cannot be handled as a Lease: parsing time {json.dumps(text)} '
                       'as "2006-01-02T15:04:05.000000Z07:00": cannot parse it')
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    t = datetime.fromisoformat(f"{m.group(1)}.{m.group(2)}{zone}").astimezone(timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _fields_match(pod: Pod, fields: list[tuple[str, ...]]) -> bool:
    values = {"spec.nodeName": pod.node or "", "status.phase": pod.phase, "metadata.name": pod.name, "metadata.namespace": pod.namespace}
    for key, value, op in fields:
        if key not in values:
            raise ApiError(400, "BadRequest", f'"{key}" is not a known field selector: only "metadata.name", "metadata.namespace", "spec.nodeName", "status.phase"')
        if (values[key] == value) != (op == "="):
            return False
    return True


def forbidden(verb: str, group: str, resource: str, namespace: str | None, name: str | None) -> ApiError:
    base = resource.split("/")[0]
    qualified = f"{base}.{group}" if group else base
    head = f'{qualified} "{name}"' if name else qualified
    where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    return ApiError(403, "Forbidden", f'{head} is forbidden: User "{USER}" cannot {verb} resource "{resource}" in API group "{group}" {where}',
                    {"name": name or "", "group": group, "kind": base})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    cluster: FakeCluster

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.lock = threading.Lock()
        self.connections: set[Any] = set()

    def drop_connections(self) -> None:
        """Reset every open keep-alive connection, as a dead API server's would be."""
        import socket

        with self.lock:
            conns = list(self.connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class FakeApiServer:
    """``FakeCluster`` behind HTTP on 127.0.0.1 (a free port unless given); ``down()``/``up()`` for outages."""

    def __init__(self, cluster: FakeCluster, port: int = 0) -> None:
        self.cluster = cluster
        self._server = self._bind(port)
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    def _bind(self, port: int) -> _Server:
        server = _Server(("127.0.0.1", port), Handler)
        server.cluster = self.cluster
        return server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeApiServer":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def down(self) -> None:
        """Close the listening socket: clients get "connection refused" until ``up()``."""
        self._server.shutdown()
        self._server.server_close()
        self._server.drop_connections()

    def up(self) -> None:
        deadline = time.monotonic() + 5
        while True:
            try:
                self._server = self._bind(self.port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.start()

    def stop(self) -> None:
        try:
            self._server.shutdown()
        finally:
            self._server.server_close()

    def kubeconfig(self, path: Any, token: str = TOKEN) -> None:
        """A kubeconfig that points the official client at this server with a bearer token."""
        import yaml

        doc = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "rlscale", "user": {"token": token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "rlscale", "namespace": "default"}}],
        }
        with open(path, "w") as f:
            yaml.safe_dump(doc, f)


class FakePrometheus:
    """``/api/v1/query`` for registered PromQL strings (a value function each); anything else is an empty vector."""

    def __init__(self, queries: dict[str, Callable[[], float]] | None = None) -> None:
        self.queries = dict(queries or {})
        self.down = False
        outer = self

        class PromHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if outer.down:
                    body, code = {"status": "error", "errorType": "unavailable", "error": "test outage"}, 503
                elif url.path == "/-/ready":
                    body, code = {}, 200
                elif url.path == "/api/v1/query":
                    promql = parse_qs(url.query).get("query", [""])[-1]
                    fn = outer.queries.get(promql)
                    result = []
                    if fn is not None:
                        value = fn()
                        if value is not None:
                            text = "NaN" if isinstance(value, float) and math.isnan(value) else repr(float(value))
                            result = [{"metric": {}, "value": [round(time.time(), 3), text]}]
                    body, code = {"status": "success", "data": {"resultType": "vector", "result": result}}, 200
                else:
                    body, code = {"status": "error", "error": "not found"}, 404
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), PromHandler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
