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
from rlscale.policies import calibration as cal
from rlscale.policies import history as hist
from rlscale.policies.relative import (
    LEVELS,
    RelativeDecoder,
    RelativeObservation,
    ServiceTraits,
    calm_repack,
    decide,
    nvec,
)
from rlscale.spaces import Action, Metrics

N_LEVELS = len(LEVELS)
_LEVELS = np.asarray(LEVELS)
_STEPS = np.arange(N_LEVELS, dtype=np.float64)
NVEC = nvec(False)


def card_calibration(card: dict[str, Any] | None) -> dict[str, Any] | None:
    """A card's ``calibration`` section (``{"days": 7, "min_days": 1, "start_level": 3}``) or None."""
    section = (card or {}).get("calibration")
    return section if isinstance(section, dict) else None


def card_history(card: dict[str, Any] | None) -> dict[str, Any] | None:
    """A card's ``history`` section (``{"days": 7, "min_days": 1}``) or None for a history-free generalist."""
    section = (card or {}).get("history")
    return section if isinstance(section, dict) else None


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
    level, rebalance, _ = head_logits(weights, rows, n)
    return level, rebalance


def head_logits(weights: PolicyWeights, rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The level, the pooled rebalance and (with history) the per-service ``AHEAD`` logits."""
    out = logits(weights, rows)
    per = out.reshape(n, -1, out.shape[1])
    ahead = per[:, :, N_LEVELS + 3 :] if out.shape[1] > N_LEVELS + 3 else None
    return per[:, :, :N_LEVELS], per[:, :, N_LEVELS : N_LEVELS + 3].mean(axis=1), ahead


class GeneralPolicy:
    """A generalist card behind the ``Policy`` protocol, built for the cluster it serves.

    ``step_raw`` is the training env's entry point and ``act`` the serving one;
    both go through the same observation, decoder and node drain. ``repack``
    off (``ppo:DIR:repack=0``) leaves node consolidation to the cluster
    autoscaler alone: the switch the repacking measurements compare against.
    """

    def __init__(self, exported: ExportedPolicy | None, scenario: Scenario, name: str = "general",
                 source: str = "policy", repack: bool = True, drain: bool = True,
                 history: dict[str, Any] | None = None, calibrate: bool = True,
                 calibration: dict[str, Any] | None = None, base: float | None = None,
                 sees_base: bool | None = None) -> None:
        if exported is not None:
            check_range(exported.card, scenario, source)
            history = card_history(exported.card)
            calibration = card_calibration(exported.card)
        self.exported = exported
        self.history = history
        """The card's history section; None: the history-free generalist (no history features, no forecast head)."""
        self.calibration = calibration if calibrate and base is None else None
        """The card's calibration section when this policy calibrates its base level on each cluster's history."""
        self.start = int((calibration or {}).get("start_level", cal.START_LEVEL))
        self.fixed_base = None if base is None else float(base)
        """A candidate of a calibration: this base level (a target utilisation), whatever the history."""
        self.sees_base = bool((calibration or {}).get("sees_base", False)) if sees_base is None else sees_base
        """The network's row ends with the base (``relative.BASE_FEATURE``): its picks may depend on it."""
        self.hold = int((history or {}).get("hold_steps", 1))
        """Intervals a pick of the network holds (a decision period); the decoder still runs every interval."""
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
        uses = self.history is not None
        days = hist.days_wanted(self) or hist.DEFAULT_DAYS
        self.builder = RelativeObservation(self.traits, n, history=uses, history_days=days)
        self._held: tuple[np.ndarray, np.ndarray | None] | None = None
        self._since = 0
        self.decoder = RelativeDecoder(self.traits, n, history=uses)
        self.nodes.reset(n)
        self.base = np.full(n, LEVELS[self.start] if self.fixed_base is None else self.fixed_base)
        """``[N]`` each cluster's base, a target utilisation: the network's start level reads as it (calibration)."""
        self.past: list[np.ndarray | None] = [None] * n

    def load_history(self, i: int, past: np.ndarray, end_s: float) -> None:
        """Cluster ``i``'s past demand ``[L, S]`` (req/s per interval, oldest first, NaN for gaps) up to ``end_s``."""
        self.builder.load_history(i, past, end_s)
        self.remember(i, past)

    def remember(self, i: int, past: np.ndarray) -> None:
        """Cluster ``i``'s past ``[L, S]`` for the next calibration only (the features' history is left as it is)."""
        if self.calibration is not None:
            self.past[i] = np.array(past, dtype=float)

    def calibration_request(self) -> cal.CalibrationRequest | None:
        """The history episodes to replay and the candidates to replay them with (``rollout.calibrate``)."""
        if self.calibration is None:
            return None
        sc = self.scenario
        steps = sc.episode_steps
        day = hist.steps_per_day(sc.step_s)
        days = float(self.calibration.get("days", hist.DEFAULT_DAYS))
        most = max(1, min(int(days * day) // steps, cal.MAX_REPLAY_STEPS // steps))
        episodes, owners = [], []
        for i, past in enumerate(self.past):
            if past is None or np.isfinite(past).all(axis=1).sum() < float(self.calibration.get("min_days", 1.0)) * day:
                continue
            got = cal.replay_episodes(past, steps, most)
            episodes.append(got)
            owners += [i] * len(got)
        if not owners:
            return None
        from rlscale.policies.hpa import HPAPolicy

        return cal.CalibrationRequest(
            episodes=np.concatenate(episodes), owners=np.asarray(owners), steps=steps, candidates=cal.CANDIDATES,
            policies=[HPAPolicy(sc), *(self.candidate(level) for level in cal.CANDIDATES)], n=self.n,
            fallback=LEVELS[self.start])

    def candidate(self, base: float) -> "GeneralPolicy":
        """This policy at a fixed base level, calibrating nothing: what a calibration replays."""
        return GeneralPolicy(self.exported, self.scenario, name=f"{self.name}@{base:g}", repack=self.repack,
                             drain=self.drain, history=self.history, base=base, calibration=self.calibration,
                             sees_base=self.sees_base)

    def settle(self, base: np.ndarray) -> None:
        """Take the calibrated base levels ``[N]`` (target utilisations)."""
        self.base = np.asarray(base, dtype=np.float64).copy()

    def read_picks(self, picks: np.ndarray) -> np.ndarray:
        """Target utilisations ``[N, S]`` for the network's (or a fixed) level picks, read as offsets from each
        cluster's base: the start pick is the base itself, the others keep their distance in level steps (a base
        between two levels shifts them by a fraction of a step, interpolated)."""
        picks = np.asarray(picks, dtype=np.int64)
        at = np.interp(self.base, _LEVELS, _STEPS)  # the base in level steps: a whole step on the grid
        shifted = np.interp(picks + (at - self.start)[:, None], _STEPS, _LEVELS)
        return np.where(picks == self.start, self.base[:, None], shifted)

    def history_days(self) -> np.ndarray:
        """``[N, S]`` days of history each service has; under ``history.MIN_DAYS`` it runs history-free."""
        if self.history is not None or self.calibration is None:
            return self.builder.history_days_available()
        day = hist.steps_per_day(self.scenario.step_s)
        S = self.traits.n_services
        return np.array([np.zeros(S) if p is None else np.isfinite(p).sum(axis=0) / day for p in self.past])

    def reset_rows(self, mask: np.ndarray) -> None:
        """New episodes for the masked clusters (training autoreset)."""
        self.builder.reset(mask)
        self.decoder.reset(mask)
        self.nodes.under_s[mask] = 0.0

    def observe(self, metrics: Metrics) -> np.ndarray:
        rows = self.builder.build(metrics)
        if not self.sees_base:
            return rows
        base = np.repeat(self.base, self.traits.n_services).astype(np.float32)[:, None]
        return np.hstack([rows, base])

    def verb(self, metrics: Metrics, rebalance: np.ndarray) -> np.ndarray:
        """``[N]`` rebalance verbs: the policy's where it asks for one, else calm repacking or the node drain."""
        calm = calm_repack(metrics, self.builder, self.drain) if self.repack else np.zeros(metrics.n, dtype=np.int64)
        unasked = np.where(calm > 0, calm, self.nodes.rebalance(metrics))
        return np.where(np.asarray(rebalance) > 0, rebalance, unasked)

    def step_raw(self, metrics: Metrics, levels: np.ndarray, rebalance: np.ndarray,
                 ahead: np.ndarray | None = None) -> Action:
        """Decode target utilisations ``[N, S]`` (``read_picks``), verbs ``[N]`` and (history) ``AHEAD`` picks
        ``[N, S]`` (after ``observe``)."""
        return decide(levels, self.verb(metrics, rebalance), self.builder, self.decoder, ahead)

    def act(self, metrics: Metrics) -> Action:
        if self.exported is None:
            raise ValueError("GeneralPolicy without weights can only be driven through step_raw")
        rows = self.observe(metrics)
        if self._held is not None and self._since < self.hold:
            self._since += 1
            return self.step_raw(metrics, self._held[0], np.zeros(metrics.n, dtype=np.int64), self._held[1])
        lv, rb, ah = head_logits(self.exported.weights, rows, metrics.n)
        levels, ahead = self.read_picks(lv.argmax(axis=2)), None if ah is None else ah.argmax(axis=2)
        if self.hold > 1:
            self._held, self._since = (levels, ahead), 1
        return self.step_raw(metrics, levels, rb.argmax(axis=1), ahead)


class FixedSetting(GeneralPolicy):
    """The generalist's observation and decoder at one fixed setting: a level and (with history) a forecast pick.

    The ablation every learned generalist is reported beside (DESIGN.md section 11, "the network earns its
    keep"): the same features, floor, windows and node drain, with the network replaced by a constant.
    """

    def __init__(self, scenario: Scenario, level: int, ahead: int = 0, history: dict[str, Any] | None = None,
                 name: str | None = None, calibration: dict[str, Any] | None = None, base: float | None = None) -> None:
        self.level, self.ahead = int(level), int(ahead)
        super().__init__(None, scenario, name=name or f"fixed:level={LEVELS[level]:g}:ahead={ahead}", history=history,
                         calibration=calibration, base=base)

    def candidate(self, base: float) -> "GeneralPolicy":
        return FixedSetting(self.scenario, self.level, self.ahead, history=self.history, base=base,
                            calibration=self.calibration, name=f"{self.name}@{base:g}")

    def act(self, metrics: Metrics) -> Action:
        self.observe(metrics)
        S = self.traits.n_services
        ahead = np.full((metrics.n, S), self.ahead, dtype=np.int64) if self.history is not None else None
        return self.step_raw(metrics, self.read_picks(np.full((metrics.n, S), self.level, dtype=np.int64)),
                             np.zeros(metrics.n, dtype=np.int64), ahead)
