"""The generalist: one exported network applied to every service of any cluster (DESIGN.md section 10).

The network is an SB3 ``MlpPolicy`` trained on one service at a time over a
wide distribution of clusters and traffic; its input is the scale-free row of
``rlscale.policies.relative`` and its output is a target utilisation level per service
plus a rebalance verb. At serve time the rows of all services go through the
network in one batched call. The rebalance head is linear in the last hidden
layer, so averaging its logits over a cluster's services is the head applied
to the mean-pooled per-service features: node-level actions read pooled
service features, as the design asks, without a second network.

A card states the ranges it was trained across; ``check_range`` refuses a
cluster outside them with one line naming the field.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rlscale.config import ConfigError, Scenario
from rlscale.policies.base import ClusterAutoscaler
from rlscale.policies.network import ExportedPolicy, PolicyWeights, logits
from rlscale.policies.relative import LEVELS, RelativeDecoder, RelativeObservation, ServiceTraits, calm_repack, decide
from rlscale.spaces import Action, Metrics

N_LEVELS = len(LEVELS)
NVEC = np.array([N_LEVELS, 3], dtype=np.int64)


def trait_values(scenario: Scenario) -> dict[str, np.ndarray]:
    """The quantities a generalist card bounds, per service of ``scenario``."""
    t = ServiceTraits.from_scenario(scenario)
    a = t.arrays()
    work = np.array([s.work_s for s in scenario.services])
    return {
        "lead_steps": a["lead_s"] / t.step_s,
        "cold_start_steps": a["cold_start_s"] / t.step_s,
        "price_ratio": a["price_ratio"],
        "replicas_per_node": a["replicas_per_node"],
        "max_replicas": a["max_replicas"],
        "slo_over_work": a["slo_s"] / work,
    }


def check_range(card: dict[str, Any], scenario: Scenario, source: str) -> None:
    """One line naming the first field of ``scenario`` outside the card's trained ``range``."""
    from pydantic import ValidationError

    from rlscale.config import _format_validation_error
    from rlscale.policies.card import RangeSection

    if not isinstance(card.get("range"), dict):
        raise ConfigError(f"{source}: card.json has no 'range' (a generalist card states what it was trained across)")
    try:
        ranges = RangeSection.model_validate(card["range"]).model_dump()
    except ValidationError as err:  # a NaN bound compared False and switched the check off
        raise ConfigError(_format_validation_error(f"{source}: card.json range", err)) from None
    values = trait_values(scenario)
    for field, (lo, hi) in sorted(ranges.items()):
        v = values[field]
        bad = np.flatnonzero((v < lo - 1e-9) | (v > hi + 1e-9))
        if bad.size:
            i = int(bad[0])
            where = f" (service {scenario.services[i].name!r})"
            raise ConfigError(
                f"{source}: {field} = {float(v[i]):g}{where} is outside the trained range [{lo:g}, {hi:g}]; "
                f"scenario {scenario.name!r} needs a policy trained for it"
            )


def policy_logits(weights: PolicyWeights, rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-service level logits ``[N, S, L]`` and per-cluster rebalance logits ``[N, 3]`` (pooled over services)."""
    out = logits(weights, rows)
    per = out.reshape(n, -1, out.shape[1])
    return per[:, :, :N_LEVELS], per[:, :, N_LEVELS:].mean(axis=1)


class GeneralPolicy:
    """A generalist card behind the ``Policy`` protocol, built for the cluster it serves.

    ``step_raw`` is the training env's entry point and ``act`` the serving one;
    both go through the same observation, decoder and node drain. ``repack``
    off (``ppo:DIR:repack=0``) leaves node consolidation to the cluster
    autoscaler alone: the switch the repacking measurements compare against.
    """

    def __init__(self, exported: ExportedPolicy | None, scenario: Scenario, name: str = "general",
                 source: str = "policy", repack: bool = True, drain: bool = True) -> None:
        if exported is not None:
            check_range(exported.card, scenario, source)
        self.exported = exported
        self.repack = repack
        self.drain = drain
        self.name = name
        self.scenario = scenario
        self.traits = ServiceTraits.from_scenario(scenario)
        self.nodes = ClusterAutoscaler(scenario)
        self.reset(1)

    @property
    def services(self) -> tuple[str, ...]:
        return self.traits.services

    def reset(self, n: int = 1) -> None:
        self.n = n
        self.builder = RelativeObservation(self.traits, n)
        self.decoder = RelativeDecoder(self.traits, n)
        self.nodes.reset(n)

    def reset_rows(self, mask: np.ndarray) -> None:
        """New episodes for the masked clusters (training autoreset)."""
        self.builder.reset(mask)
        self.decoder.reset(mask)
        self.nodes.under_s[mask] = 0.0

    def observe(self, metrics: Metrics) -> np.ndarray:
        return self.builder.build(metrics)

    def verb(self, metrics: Metrics, rebalance: np.ndarray) -> np.ndarray:
        """``[N]`` rebalance verbs: the policy's where it asks for one, else calm repacking or the node drain."""
        calm = calm_repack(metrics, self.builder, self.drain) if self.repack else np.zeros(metrics.n, dtype=np.int64)
        unasked = np.where(calm > 0, calm, self.nodes.rebalance(metrics))
        return np.where(np.asarray(rebalance) > 0, rebalance, unasked)

    def step_raw(self, metrics: Metrics, levels: np.ndarray, rebalance: np.ndarray) -> Action:
        """Decode levels ``[N, S]`` and verbs ``[N]`` (after ``observe`` for this interval)."""
        return decide(levels, self.verb(metrics, rebalance), self.builder, self.decoder)

    def act(self, metrics: Metrics) -> Action:
        if self.exported is None:
            raise ValueError("GeneralPolicy without weights can only be driven through step_raw")
        rows = self.observe(metrics)
        lv, rb = policy_logits(self.exported.weights, rows, metrics.n)
        return self.step_raw(metrics, lv.argmax(axis=2), rb.argmax(axis=1))
