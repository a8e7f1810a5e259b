"""The one protocol every policy implements, and the guard rails they share.

Policies are batched like everything else: ``act`` takes ``Metrics`` for N
clusters and returns an ``Action`` for N clusters. A policy keeps whatever
history it needs per cluster, and ``reset(n)`` says how many clusters there are.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from rlscale.config import Scenario
from rlscale.spaces import Action, Metrics, ObsSpec

INT_CAP = float(2**31 - 1)
"""Replica counts are int32 in Kubernetes; we cap recommendations there before casting."""

_CEIL_EPS = 1e-9


@runtime_checkable
class Policy(Protocol):
    """Maps a batch of metrics to a batch of actions; holds per-cluster history."""

    name: str

    def reset(self, n: int = 1) -> None:
        """Forget all history and prepare for ``n`` clusters."""
        ...

    def act(self, metrics: Metrics) -> Action:
        """``replicas`` int64 ``[N, S]`` within each service's [min, max]; ``rebalance`` int64 ``[N]``."""
        ...


def replica_bounds(scenario: Scenario) -> tuple[np.ndarray, np.ndarray]:
    """Per-service (min_replicas, max_replicas) as int64 ``[S]`` arrays."""
    lo = np.array([s.min_replicas for s in scenario.services], dtype=np.int64)
    hi = np.array([s.max_replicas for s in scenario.services], dtype=np.int64)
    return lo, hi


def clamp_replicas(replicas: np.ndarray, scenario: Scenario) -> np.ndarray:
    """Clamp ``[N, S]`` replicas to each service's [min_replicas, max_replicas] as int64."""
    lo, hi = replica_bounds(scenario)
    return np.clip(np.asarray(replicas, dtype=np.int64), lo, hi)


def service_rps(scenario: Scenario) -> np.ndarray:
    """Requests/s one replica serves at 100% on its preferred pool, ``[S]``.

    Taken from ``ObsSpec`` so that sizing rules and observations agree on what
    one replica is worth (it folds in the preferred pool's speed).
    """
    return np.asarray(ObsSpec.from_scenario(scenario).replica_rps, dtype=np.float64)


def ceil_count(x: np.ndarray) -> np.ndarray:
    """``ceil`` of a non-negative replica estimate as int64.

    The epsilon keeps float noise (e.g. ``3.0000000000000004``) from adding a
    replica; negatives, NaN and +inf are mapped to 0, 0 and ``INT_CAP``.
    """
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=INT_CAP)
    return np.ceil(np.clip(x - _CEIL_EPS, 0.0, INT_CAP)).astype(np.int64)


def step_down_limit(current: np.ndarray, fraction: float) -> np.ndarray:
    """The most replicas a conservative scale-in may remove: ``fraction`` of current, at least 1.

    "At least 1" lets small services shrink at all; without it a 10% rule
    would pin anything under 10 replicas forever.
    """
    return np.maximum(1, np.floor(current * fraction).astype(np.int64))


class ClusterAutoscaler:
    """The node half of a Kubernetes autoscaling stack, shared by every baseline.

    The simulator already adds a node for pending replicas and removes empty
    ones. What the cluster autoscaler adds on top is scale-down of
    *underutilised* nodes: a pool whose ready nodes stay below
    ``threshold`` of requested CPU for ``unneeded_s`` (its defaults: 0.5 and
    10 minutes) gets its replicas drained onto fewer nodes, which is the
    'consolidate' rebalance. Without this, a baseline would keep the
    half-empty nodes a ReplicaSet scale-down leaves behind forever, which no
    real cluster does.
    """

    def __init__(self, scenario: Scenario, threshold: float = 0.5, unneeded_s: float = 600.0) -> None:
        self.step_s = scenario.step_s
        self.threshold = threshold
        self.unneeded_s = unneeded_s
        self.n_pools = len(scenario.pools)
        self.reset(1)

    def reset(self, n: int = 1) -> None:
        self.under_s = np.zeros((n, self.n_pools))

    def rebalance(self, metrics: Metrics) -> np.ndarray:
        """``[N]`` int64: 1 (consolidate) where some pool has been underutilised long enough, else 0."""
        low = (np.nan_to_num(metrics.packing, nan=1.0) < self.threshold) & (metrics.nodes_ready > 1)
        self.under_s = np.where(low, self.under_s + self.step_s, 0.0)
        fire = (self.under_s >= self.unneeded_s).any(axis=1) & ~(metrics.rebalancing > 0)
        self.under_s[fire] = 0.0
        return fire.astype(np.int64)


def no_rebalance(n: int) -> np.ndarray:
    """The baselines never rebalance: ``[N]`` zeros."""
    return np.zeros(n, dtype=np.int64)


def check_batch(expected: int, metrics: Metrics, name: str) -> None:
    """Stateful policies keep per-cluster history; a batch of a different size is a caller bug."""
    if metrics.n != expected:
        raise ValueError(f"{name} policy was reset for {expected} clusters but got metrics for {metrics.n}; call reset({metrics.n})")
