"""One decision: metrics -> recommendation (policy, or the HPA rule as fallback) -> guard rails -> final action.

``Decider`` is shared by the control loop (stateful: it keeps the policy's
load history and the guard state across intervals, like an episode) and the
HTTP API (``fresh=True``: a new history per request, like the first interval
of an episode). The policy's observation is built inside the policy with the
same ``ObservationBuilder`` as training; baselines act on ``Metrics``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from rlscale.config import ConfigError, Scenario
from rlscale.controller.guards import (
    METRIC_FIELDS,
    MODEL_MISMATCH,
    POLICY_ERROR,
    PER_POOL,
    PER_SERVICE,
    Adjustment,
    Assessment,
    GuardConfig,
    GuardState,
    apply_guards,
    assess,
    current_replicas,
    fallback_metrics,
)
from rlscale.policies.hpa import HPAPolicy
from rlscale.spaces import REBALANCE_NAMES, Action, Metrics

POLICY_ACTED, FALLBACK_ACTED, NOBODY_ACTED = "policy", "fallback:hpa", "none"


@dataclass
class Decision:
    """Everything the audit log records about one decision."""

    source: str
    now: float
    age_s: float | None
    metrics: Metrics | None
    acted_by: str
    raw_replicas: np.ndarray | None
    raw_rebalance: int | None
    current: np.ndarray | None
    replicas: np.ndarray | None
    rebalance: int
    fallback_reason: str | None
    fallback_detail: str
    adjustments: list[Adjustment]
    latency_s: float
    services: tuple[str, ...]
    applied: bool = False
    degraded: bool = False
    metrics_source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        """One sentence saying why the final action is what it is."""
        if self.replicas is None:
            head = f"fell back ({self.fallback_reason}: {self.fallback_detail}) and the current replicas are unknown: no action"
        elif self.fallback_reason is not None:
            head = f"fell back to the HPA rule ({self.fallback_reason}: {self.fallback_detail})"
        else:
            head = "policy recommendation"
        if not self.adjustments:
            return head + ("" if self.replicas is None else "; passed every guard rail")
        changes = ", ".join(f"{a.guard} {a.target} {a.before}->{a.after}" for a in self.adjustments)
        return f"{head}; adjusted by guard rails: {changes}"

    def response(self) -> dict[str, Any]:
        """The parts of the decision an external controller needs (``POST /v1/decide``)."""
        return {
            "services": list(self.services),
            "replicas": None if self.replicas is None else self.replicas.tolist(),
            "rebalance": self.rebalance,
            "rebalance_name": REBALANCE_NAMES[self.rebalance],
            "acted_by": self.acted_by,
            "raw_action": self._raw(),
            "fallback": self._fallback(),
            "adjustments": [a.to_dict() for a in self.adjustments],
            "reason": self.reason,
            "latency_s": self.latency_s,
        }

    def audit(self) -> dict[str, Any]:
        """The audit log line: inputs, raw action, final action, reason, latency."""
        return {
            "kind": "decision",
            "source": self.source,
            "time_s": self.now,
            "inputs": {
                "age_s": self.age_s,
                "current_replicas": _list(self.current),
                "metrics_source": self.metrics_source,
                "degraded": self.degraded,
                "metrics": metrics_json(self.metrics),
            },
            "acted_by": self.acted_by,
            "raw_action": self._raw(),
            "final_action": None if self.replicas is None else {"replicas": self.replicas.tolist(), "rebalance": self.rebalance},
            "applied": self.applied,
            "fallback": self._fallback(),
            "adjustments": [a.to_dict() for a in self.adjustments],
            "reason": self.reason,
            "latency_s": self.latency_s,
            **self.extra,
        }

    def _raw(self) -> dict[str, Any] | None:
        if self.raw_replicas is None:
            return None
        return {"replicas": self.raw_replicas.tolist(), "rebalance": self.raw_rebalance}

    def _fallback(self) -> dict[str, str] | None:
        return None if self.fallback_reason is None else {"reason": self.fallback_reason, "detail": self.fallback_detail}


def _list(a: np.ndarray | None) -> list[Any] | None:
    return None if a is None else a.tolist()


def metrics_json(metrics: Metrics | None) -> dict[str, Any] | None:
    """One cluster's metrics as JSON values: lists per service/pool, scalars per cluster, None where missing."""
    if metrics is None:
        return None
    out: dict[str, Any] = {}
    for name in METRIC_FIELDS:
        value = getattr(metrics, name)
        if value is None:
            out[name] = None
            continue
        try:
            array = value if type(value) is np.ndarray else np.asarray(value, dtype=np.float64)
            flat = array.ravel().tolist()
        except (TypeError, ValueError):
            out[name] = repr(value)[:200]
            continue
        out[name] = flat if name in _LISTED or len(flat) != 1 else flat[0]
    return out


_LISTED = frozenset(PER_SERVICE + PER_POOL)


def model_mismatch(policy: Any, scenario: Scenario) -> str | None:
    """Why the policy cannot run on this cluster (its card's services/pools differ), or None."""
    spec = getattr(policy, "obs_spec", None)
    why = spec.mismatch(scenario) if spec is not None else None
    return f"policy {why}" if why else None


class Decider:
    """The policy, the HPA fallback and the guard rails of one cluster.

    The fallback HPA starts afresh at the start of each run of fallback
    decisions, so a recommendation from an earlier outage never holds a
    scale-down now. The policy is consulted only with trusted metrics, so its
    load history holds only intervals whose metrics were good.

    ``fallback`` is the HPA the decider falls back to (default
    ``HPAPolicy(scenario)``); a backend whose decision interval is not the
    60 s the HPA defaults are tuned for passes one with rescaled windows
    (``rlscale.clusters.local.baselines.scaled_policy("hpa", scenario)``).
    """

    def __init__(self, scenario: Scenario, policy: Any, config: GuardConfig, fallback: Any | None = None) -> None:
        services = tuple(s.name for s in scenario.services)
        if config.services != services:
            raise ConfigError(f"guard rails are for services {list(config.services)}, the scenario has {list(services)}")
        self.scenario = scenario
        self.policy = policy
        self.config = config
        self.services = services
        self.mismatch = model_mismatch(policy, scenario)
        self.fallback = fallback if fallback is not None else HPAPolicy(scenario)
        self._falling_back = False
        policy.reset(1)

    def decide(
        self,
        metrics: Metrics | None,
        age_s: float | None,
        now: float,
        state: GuardState,
        *,
        source: str = "loop",
        fresh: bool = False,
        history_rps: np.ndarray | None = None,
        degraded: bool = False,
    ) -> Decision:
        """Decide for one cluster (N = 1). ``fresh`` forgets all history first (the API's per-request decision).

        ``degraded``: the backend says the sample came from its fallback
        source (``MetricsSample.degraded``), so the HPA rule decides.
        """
        t0 = time.perf_counter()
        if fresh:
            self.policy.reset(1)
            self._falling_back = False
        assessment = assess(metrics, age_s, self.config, degraded=degraded)
        if assessment.reason is None and self.mismatch is not None:
            assessment = Assessment(MODEL_MISMATCH, self.mismatch)
        current = current_replicas(metrics, assessment, state, self.config)
        raw: Action | None = None
        acted_by = NOBODY_ACTED
        if assessment.reason is None:
            assert metrics is not None
            try:
                if history_rps is not None:
                    self._warm_history(metrics, history_rps)
                raw = self._checked(self.policy.act(metrics))
                acted_by = POLICY_ACTED
            except Exception as err:  # a policy bug must not take the controller down: fall back and say why
                assessment = Assessment(POLICY_ERROR, f"{type(err).__name__}: {str(err)[:200]}")
        if assessment.reason is not None and current is not None:
            if not self._falling_back:
                self.fallback.reset(1)
            raw = self.fallback.act(fallback_metrics(metrics, assessment, current, self.config))
            acted_by = FALLBACK_ACTED
        self._falling_back = assessment.reason is not None
        replicas: np.ndarray | None = None
        rebalance = 0
        adjustments: list[Adjustment] = []
        raw_replicas = None if raw is None else np.asarray(raw.replicas[0], dtype=np.int64)
        raw_rebalance = None if raw is None else int(raw.rebalance[0])
        if raw_replicas is not None and raw_rebalance is not None and current is not None:
            rebalancing = _scalar(metrics.rebalancing) if metrics is not None and assessment.reason is None else None
            replicas, rebalance, adjustments = apply_guards(raw_replicas, raw_rebalance, current, rebalancing, now, state, self.config)
        latency = time.perf_counter() - t0
        return Decision(
            source=source,
            now=now,
            age_s=age_s,
            metrics=metrics,
            acted_by=acted_by,
            raw_replicas=raw_replicas,
            raw_rebalance=raw_rebalance,
            current=current,
            replicas=replicas,
            rebalance=rebalance,
            fallback_reason=assessment.reason,
            fallback_detail=assessment.detail,
            adjustments=adjustments,
            latency_s=latency,
            services=self.services,
            degraded=degraded,
        )

    def warm_up(self) -> None:
        """Run one throw-away decision so the first real one does not pay for loading compiled code; then forget it."""
        S, P = len(self.services), len(self.config.max_nodes)
        lo = self.config.min_replicas.astype(np.float64)[None]
        m = Metrics(
            time_s=np.zeros(1), arrivals_rps=np.zeros((1, S)), ready=lo.copy(), desired=lo.copy(), utilisation=np.zeros((1, S)),
            latency_p95_s=np.zeros((1, S)), backlog=np.zeros((1, S)), dropped=np.zeros((1, S)), nodes_ready=np.zeros((1, P)),
            nodes_provisioning=np.zeros((1, P)), packing=np.zeros((1, P)), cost_rate_usd_h=np.zeros(1), hot_spot=np.zeros(1),
            rebalancing=np.zeros(1),
        )
        self.decide(m, 0.0, 0.0, GuardState(), fresh=True)
        self.decide(None, None, 0.0, GuardState(last_replicas=self.config.min_replicas.copy()))
        self.policy.reset(1)
        self.fallback.reset(1)
        self._falling_back = False

    def _checked(self, action: Action) -> Action:
        S = len(self.services)
        replicas, rebalance = action.replicas, action.rebalance
        if type(replicas) is not np.ndarray or type(rebalance) is not np.ndarray:
            replicas, rebalance = np.asarray(replicas), np.asarray(rebalance)
        if replicas.shape != (1, S) or rebalance.shape != (1,):
            raise ValueError(f"action has shapes {replicas.shape} and {rebalance.shape}, expected (1, {S}) and (1,)")
        if replicas.dtype.kind not in "iu" or rebalance.dtype.kind not in "iu":
            raise ValueError(f"action has dtypes {replicas.dtype} and {rebalance.dtype}, expected integers")
        return action

    def _warm_history(self, metrics: Metrics, history_rps: np.ndarray) -> None:
        """Feed earlier intervals' arrivals (oldest first) to a policy that keeps a load history (ppo)."""
        builder = getattr(self.policy, "builder", None)
        if builder is None:
            return
        for row in np.asarray(history_rps, dtype=np.float64).reshape(-1, len(self.services)):
            builder.build(replace(metrics, arrivals_rps=row[None].copy()))


def _scalar(value: Any) -> float | None:
    if type(value) is np.ndarray and value.size:
        return float(value.item(0))
    try:
        return float(np.asarray(value, dtype=np.float64).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        return None
