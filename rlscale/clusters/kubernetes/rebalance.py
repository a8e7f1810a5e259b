"""``rebalance: consolidate`` on Kubernetes: cordon the least-utilised node and move its replicas off it.

What ``drain`` means in the simulator (move the emptiest node's replicas
onto the others so it is released) maps onto two API calls a cluster operator already trusts: cordon
(``spec.unschedulable = true``, so nothing new lands there) and the Eviction
API, which honours PodDisruptionBudgets. The workload's controller recreates
each evicted pod on another node; the cluster autoscaler releases the empty
node. We never delete a pod directly: a 429 from the Eviction API means a
budget forbids it now, and we wait (``Retry-After`` when given, else the next
interval). After ``give_up_after_s`` of waiting the node is uncordoned and the
consolidation abandoned, so a budget that never allows it cannot leave a node
cordoned forever.

Only nodes that can actually empty are candidates: Ready, schedulable,
holding at least one of our replicas and nothing else that would stay
(DaemonSet pods, mirror pods and finished pods do not count), and whose
replicas' CPU requests fit in the free requests of the other schedulable
nodes. Among those, the one with the lowest requested-CPU share. The
simulator's ``consolidate`` (repack every node at once) runs here as the same
one-node step, repeated while the policy keeps asking.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from rlscale.clusters.kubernetes.errors import NOT_FOUND, TOO_MANY_REQUESTS, classify
from rlscale.clusters.kubernetes.settings import ConsolidateSpec


def cpu_request(pod: Any) -> Decimal:
    """Sum of the pod's containers' CPU requests, in cores."""
    from kubernetes.utils.quantity import parse_quantity

    total = Decimal(0)
    for c in (pod.spec.containers if pod.spec is not None else None) or []:
        requests = (c.resources.requests if c.resources is not None else None) or {}
        if "cpu" in requests:
            total += parse_quantity(requests["cpu"])
    return total


def stays(pod: Any) -> bool:
    """A pod that does not move when its node is drained: DaemonSet-owned, a static (mirror) pod, or finished."""
    phase = pod.status.phase if pod.status is not None else None
    if phase in ("Succeeded", "Failed") or pod.metadata.deletion_timestamp is not None:
        return False
    annotations = pod.metadata.annotations or {}
    owners = pod.metadata.owner_references or []
    return "kubernetes.io/config.mirror" in annotations or any(o.kind == "DaemonSet" for o in owners)


def node_ready(node: Any) -> bool:
    conditions = (node.status.conditions if node.status is not None else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def allocatable_cpu(node: Any) -> Decimal:
    from kubernetes.utils.quantity import parse_quantity

    alloc = (node.status.allocatable if node.status is not None else None) or {}
    return parse_quantity(alloc["cpu"]) if "cpu" in alloc else Decimal(0)


def live(pod: Any) -> bool:
    phase = pod.status.phase if pod.status is not None else None
    return phase not in ("Succeeded", "Failed") and pod.metadata.deletion_timestamp is None


class Consolidator:
    """One consolidation at a time; ``start`` picks and cordons a node, ``step`` evicts, once per interval."""

    def __init__(self, core: Any, spec: ConsolidateSpec, timeout: Any, clock: Callable[[], float]) -> None:
        self.core = core
        self.spec = spec
        self.timeout = timeout
        self.clock = clock
        self.node: str | None = None
        self.started_s = 0.0
        self.wait_until_s = 0.0
        self.evicted: list[str] = []
        self.finished: list[dict[str, Any]] = []

    @property
    def in_progress(self) -> bool:
        return self.node is not None

    def start(self, managed: frozenset[tuple[str, str]]) -> dict[str, Any]:
        """Pick the node to empty and cordon it (nothing if one is in progress or none qualifies)."""
        if self.node is not None:
            return {"verb": "consolidate", "status": "busy", "node": self.node}
        try:
            nodes = self.core.list_node(_request_timeout=self.timeout).items or []
            pods = self.core.list_pod_for_all_namespaces(_request_timeout=self.timeout).items or []
        except Exception as err:  # noqa: BLE001 - a failed rebalance is recorded, never fatal
            return {"verb": "consolidate", "status": "failed", "call": "list nodes and pods", **classify(err).to_dict()}
        node = self.pick(nodes, pods, managed)
        if node is None:
            return {"verb": "consolidate", "status": "skipped", "why": "no node can be emptied onto the others"}
        try:
            self.core.patch_node(node, {"spec": {"unschedulable": True}}, _request_timeout=self.timeout)
        except Exception as err:  # noqa: BLE001
            return {"verb": "consolidate", "status": "failed", "call": f"cordon {node}", **classify(err).to_dict()}
        self.node, self.started_s, self.wait_until_s, self.evicted = node, self.clock(), 0.0, []
        return {"verb": "consolidate", "status": "cordoned", "node": node}

    @staticmethod
    def pick(nodes: list[Any], pods: list[Any], managed: frozenset[tuple[str, str]]) -> str | None:
        by_node: dict[str, list[Any]] = {}
        for pod in pods:
            if pod.spec is not None and pod.spec.node_name and live(pod):
                by_node.setdefault(pod.spec.node_name, []).append(pod)
        usable = [n for n in nodes if node_ready(n) and not (n.spec is not None and n.spec.unschedulable)]
        free = {n.metadata.name: allocatable_cpu(n) - sum((cpu_request(p) for p in by_node.get(n.metadata.name, [])), Decimal(0))
                for n in usable}
        best: tuple[Decimal, str] | None = None
        for n in usable:
            name = n.metadata.name
            here = by_node.get(name, [])
            ours = [p for p in here if (p.metadata.namespace, p.metadata.name) in managed]
            others = [p for p in here if (p.metadata.namespace, p.metadata.name) not in managed and not stays(p)]
            if not ours or others:
                continue
            need = sum((cpu_request(p) for p in ours), Decimal(0))
            room = sum((v for k, v in free.items() if k != name and v > 0), Decimal(0))
            if need > room:
                continue
            alloc = allocatable_cpu(n)
            share = sum((cpu_request(p) for p in here), Decimal(0)) / alloc if alloc > 0 else Decimal(1)
            if best is None or (share, name) < best:
                best = (share, name)
        return None if best is None else best[1]

    def step(self, managed: frozenset[tuple[str, str]]) -> dict[str, Any]:
        """Evict up to ``evictions_per_interval`` of our pods from the cordoned node; finish when none is left."""
        node = self.node
        assert node is not None
        now = self.clock()
        note: dict[str, Any] = {"node": node}
        if now - self.started_s > self.spec.give_up_after_s:
            return {**note, **self._give_up(f"still not empty after {now - self.started_s:.0f} s")}
        if now < self.wait_until_s:
            return {**note, "status": "waiting", "why": "a disruption budget asked us to wait", "until_s": self.wait_until_s}
        try:
            pods = self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}", _request_timeout=self.timeout).items or []
        except Exception as err:  # noqa: BLE001
            return {**note, "status": "failed", "call": f"list pods on {node}", **classify(err).to_dict()}
        ours = [p for p in pods if live(p) and (p.metadata.namespace, p.metadata.name) in managed]
        if not ours and not any(live(p) and not stays(p) and (p.metadata.namespace, p.metadata.name) not in managed for p in pods):
            self.finished.append({"node": node, "evicted": list(self.evicted)})
            self.node = None
            return {**note, "status": "done", "evicted": list(self.evicted)}
        from kubernetes.client import V1Eviction, V1ObjectMeta

        evicted: list[str] = []
        blocked: dict[str, Any] | None = None
        for pod in ours[: self.spec.evictions_per_interval]:
            ns, name = pod.metadata.namespace, pod.metadata.name
            body = V1Eviction(api_version="policy/v1", kind="Eviction", metadata=V1ObjectMeta(name=name, namespace=ns))
            try:
                self.core.create_namespaced_pod_eviction(name, ns, body, _request_timeout=self.timeout)
            except Exception as err:  # noqa: BLE001
                problem = classify(err)
                if problem.reason == NOT_FOUND:
                    continue
                if problem.reason == TOO_MANY_REQUESTS:
                    self.wait_until_s = now + (problem.retry_after_s or 0.0)
                    blocked = {"pod": f"{ns}/{name}", **problem.to_dict()}
                    break
                return {**note, "status": "failed", "call": f"evict {ns}/{name}", "evicted": evicted, **problem.to_dict()}
            evicted.append(f"{ns}/{name}")
            self.evicted.append(f"{ns}/{name}")
        if blocked is not None:
            return {**note, "status": "waiting", "evicted": evicted, "blocked": blocked}
        return {**note, "status": "evicting", "evicted": evicted}

    def _give_up(self, why: str) -> dict[str, Any]:
        node, self.node = self.node, None
        try:
            self.core.patch_node(node, {"spec": {"unschedulable": False}}, _request_timeout=self.timeout)
            status = "abandoned; uncordoned"
        except Exception as err:  # noqa: BLE001
            status = f"abandoned; uncordon failed ({classify(err)})"
        self.finished.append({"node": node, "evicted": list(self.evicted), "abandoned": why})
        return {"status": status, "why": why}
