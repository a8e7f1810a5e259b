"""The cheapest mix of node pools that holds every service's replicas at their peak: an exact search, small on purpose.

A node of shape ``p`` can hold a **pattern** ``a`` (``a[s]`` replicas of
service ``s``) when the pattern's CPU and memory requests fit its vCPU and
memory and every service in it may use the pool. Only maximal patterns
matter (a node never holds fewer than it could at the same price). The
cheapest mix covering the demand vector ``R`` is then

    cost(r) = min over shapes p and maximal patterns a of p:  price[p] + cost(max(0, r - a)),   cost(0) = 0

a dynamic programme over the remaining-demand vectors, exact for any number
of services while their product ``prod(R[s] + 1)`` stays below
``max_states``; beyond that each service is packed on its own nodes by the
same programme (exact per service, an upper bound jointly), and the mix says
so. The per-vCPU cheapest shape is not always the cheapest total: a 3-core
replica on a 4-vCPU node wastes a quarter of what the node costs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import numpy as np


@dataclass(frozen=True)
class NodeShape:
    name: str
    vcpu: float
    memory_gib: float
    price_per_hour: float
    max_nodes: int | None = None


@dataclass(frozen=True)
class Demand:
    """One service's replicas to place: their requests and count at the peak, and the pools they may use (None: any)."""

    service: str
    cpu: float
    memory_gib: float
    replicas: int
    pools: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Mix:
    nodes: dict[str, int]
    """nodes per shape name"""
    patterns: list[tuple[str, tuple[int, ...]]]
    """each node of the mix: its shape and the replicas of each service it holds"""
    cost_per_hour: float
    cpu_efficiency: float
    """requested CPU over the nodes' vCPU"""
    memory_efficiency: float
    method: str
    notes: tuple[str, ...] = ()


def _fits(shape: NodeShape, d: Demand) -> bool:
    return (d.pools is None or shape.name in d.pools) and d.cpu <= shape.vcpu + 1e-9 and d.memory_gib <= shape.memory_gib + 1e-9


def maximal_patterns(shape: NodeShape, demands: list[Demand]) -> list[tuple[int, ...]]:
    """Every maximal pattern of ``shape`` (no replica of any service could be added), counts capped at the demand."""
    S = len(demands)
    out: list[tuple[int, ...]] = []

    def extend(s: int, cpu: float, mem: float, acc: list[int]) -> None:
        if s == S:
            if any(acc) and all(
                acc[i] >= demands[i].replicas or not _fits(shape, demands[i])
                or demands[i].cpu > shape.vcpu - cpu + 1e-9 or demands[i].memory_gib > shape.memory_gib - mem + 1e-9
                for i in range(S)
            ):
                out.append(tuple(acc))
            return
        d = demands[s]
        top = 0
        if _fits(shape, d) and d.replicas > 0:
            room = (shape.vcpu - cpu + 1e-9) / d.cpu
            if d.memory_gib > 0:
                room = min(room, (shape.memory_gib - mem + 1e-9) / d.memory_gib)
            top = min(d.replicas, int(math.floor(room)))
        for k in range(top, -1, -1):
            acc.append(k)
            extend(s + 1, cpu + k * d.cpu, mem + k * d.memory_gib, acc)
            acc.pop()

    extend(0, 0.0, 0.0, [])
    return out


def _solve(demands: list[Demand], shapes: list[NodeShape]) -> tuple[float, list[tuple[str, tuple[int, ...]]]]:
    """The exact programme of the module docstring over ``demands``, iterated over the demand vectors in index order.

    A vector's rest ``max(0, r - a)`` is componentwise no larger, so its flat
    index is smaller: every rest is solved before the vectors that need it.
    """
    options = [(shape, np.array(a, dtype=np.int64)) for shape in shapes for a in maximal_patterns(shape, demands)]
    dims = tuple(d.replicas + 1 for d in demands)
    n = int(np.prod(dims))
    cost = np.full(n, math.inf)
    choice = np.full(n, -1, dtype=np.int64)
    cost[0] = 0.0
    vectors = np.stack(np.unravel_index(np.arange(n), dims), axis=1)
    rests = [np.ravel_multi_index(tuple(np.maximum(0, vectors - a).T), dims) for _, a in options]
    prices = np.array([shape.price_per_hour for shape, _ in options])
    for idx in range(1, n):
        best, pick = math.inf, -1
        for i in range(len(options)):
            rest = rests[i][idx]
            if rest == idx:
                continue
            c = prices[i] + cost[rest]
            if c < best - 1e-12:
                best, pick = c, i
        cost[idx], choice[idx] = best, pick
    nodes: list[tuple[str, tuple[int, ...]]] = []
    idx = n - 1
    while idx > 0:
        i = int(choice[idx])
        if i < 0:
            raise ValueError("no pool can hold the replicas")
        shape, a = options[i]
        r = vectors[idx]
        nodes.append((shape.name, tuple(int(x) for x in np.minimum(a, r))))
        idx = int(rests[i][idx])
    return float(cost[n - 1]), nodes


def cheapest_mix(demands: list[Demand], shapes: list[NodeShape], max_states: int = 40_000) -> Mix:
    """The cheapest nodes that hold every demand (module docstring); ValueError names a service no shape can hold."""
    for d in demands:
        if d.replicas > 0 and not any(_fits(s, d) for s in shapes):
            raise ValueError(f"service {d.service!r}: a replica of {d.cpu:g} CPU and {d.memory_gib:g} GiB fits no node of its pools")
    live = [d for d in demands if d.replicas > 0]
    states = float(np.prod([d.replicas + 1.0 for d in live])) if live else 1.0
    if states <= max_states:
        cost, nodes = _solve(live, shapes)
        method = f"exact (dynamic programme over {int(states)} demand vectors)"
        patterns = [(name, _expand(a, live, demands)) for name, a in nodes]
    else:
        cost, patterns = 0.0, []
        for d in live:
            c, nodes = _solve([d], shapes)
            cost += c
            patterns += [(name, _expand(a, [d], demands)) for name, a in nodes]
        method = f"each service on its own nodes, exact per service (a joint search over {states:.3g} demand vectors is too large)"
    return _summarise(demands, shapes, patterns, cost, method)


def _expand(a: tuple[int, ...], live: list[Demand], demands: list[Demand]) -> tuple[int, ...]:
    index = {d.service: k for k, d in enumerate(live)}
    return tuple(a[index[d.service]] if d.service in index else 0 for d in demands)


def _summarise(demands: list[Demand], shapes: list[NodeShape], patterns: list[tuple[str, tuple[int, ...]]], cost: float,
               method: str) -> Mix:
    by_name = {s.name: s for s in shapes}
    nodes: dict[str, int] = {}
    for name, _ in patterns:
        nodes[name] = nodes.get(name, 0) + 1
    vcpu = sum(by_name[n].vcpu * k for n, k in nodes.items())
    mem = sum(by_name[n].memory_gib * k for n, k in nodes.items())
    cpu_req = sum(d.cpu * d.replicas for d in demands)
    mem_req = sum(d.memory_gib * d.replicas for d in demands)
    notes = tuple(f"pool {n!r}: {k} nodes exceed its max_nodes {by_name[n].max_nodes}"
                  for n, k in nodes.items() if by_name[n].max_nodes is not None and k > by_name[n].max_nodes)  # type: ignore[operator]
    return Mix(nodes, patterns, cost, cpu_req / vcpu if vcpu else 0.0, mem_req / mem if mem else 0.0, method, notes)


def fits_in(counts: dict[str, int], demands: list[Demand], shapes: list[NodeShape]) -> bool:
    """Whether ``counts`` nodes of each shape can hold every demand: an exhaustive search, for checking small cases."""
    bins: list[list[float]] = []
    names: list[str] = []
    for s in shapes:
        for _ in range(counts.get(s.name, 0)):
            bins.append([s.vcpu, s.memory_gib])
            names.append(s.name)
    by_name = {s.name: s for s in shapes}
    items = sorted((d for d in demands for _ in range(d.replicas)), key=lambda d: (-d.cpu, -d.memory_gib))

    def place(i: int) -> bool:
        if i == len(items):
            return True
        d = items[i]
        tried: set[tuple[str, float, float]] = set()
        for b, room in enumerate(bins):
            key = (names[b], round(room[0], 9), round(room[1], 9))
            if key in tried or not _fits(by_name[names[b]], d):
                continue
            tried.add(key)
            if d.cpu <= room[0] + 1e-9 and d.memory_gib <= room[1] + 1e-9:
                room[0] -= d.cpu
                room[1] -= d.memory_gib
                if place(i + 1):
                    room[0] += d.cpu
                    room[1] += d.memory_gib
                    return True
                room[0] += d.cpu
                room[1] += d.memory_gib
        return False

    return place(0)
