"""``card.json`` as a validated format: every field typed and bounded, and the whole card under a checksum.

A card steers the decoder (the specialist's ``obs_spec`` scales every feature,
its ``action_spec`` bounds every decision; the generalist's ``range`` decides
which clusters it may serve), so an edited card is as dangerous as edited
weights: ``replica_rps: 0`` divided by zero, ``min_replicas: [500],
max_replicas: [1]`` pinned a service at 1 replica with "every guard rail
passed", a ``range`` of NaNs switched the range check off. So:

* the JSON itself: at most ``MAX_CARD_BYTES``, UTF-8, no ``NaN``/``Infinity``
  constants, no duplicate keys, nesting at most ``MAX_DEPTH`` levels;
* ``card_sha256``: the SHA-256 of the canonical card (every field but
  ``card_sha256`` itself, as ``json.dumps(sort_keys=True, separators=(",", ":"))``
  of the parsed card); ``policy_sha256`` inside it binds the card to
  ``policy.npz``, so one digest covers both files. It is a checksum, not a
  signature: it catches corruption and edits by anyone who does not recompute
  it, and the schema below is what makes a card that was edited and re-hashed
  harmless (each field typed, finite, positive where it divides, ``min <= max``,
  lengths matching the services, and the specs equal to what the card's own
  ``scenario_config`` derives);
* sections that are a record for people (``evaluation``, ``training.config``,
  ``versions``, ``sweep``) are typed and bounded but never steer a decision.

Every failure is one ``ConfigError`` line naming the file and the field.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlscale.config import MAX_POOLS, MAX_SERVICES, NAME_CHARS, ConfigError, RandomisationSpec, Scenario, _format_validation_error
from rlscale.spaces import ActionSpec, ObsSpec

CARD_FORMAT = "rlscale-policy/1"
GENERAL_KIND = "general"
HASH_FIELD = "card_sha256"
MAX_CARD_BYTES = 1024 * 1024
MAX_LAYERS = 32
MAX_DEPTH = 32
SHA256_PATTERN = r"^[0-9a-f]{64}$"

Name = Annotated[str, Field(min_length=1, max_length=NAME_CHARS)]
Text = Annotated[str, Field(max_length=4096)]
Positive = Annotated[float, Field(gt=0, le=1e12)]


class Section(BaseModel):
    """JSON types exactly (strict: ``"5"`` is not 5, ``true`` is not 1), no unknown keys, no NaN or infinity."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class NetworkSection(Section):
    activation: Literal["relu", "tanh"]
    layers: int = Field(ge=0, le=MAX_LAYERS, description="hidden layers (ten million took 30 s and 3.5 GB to refuse)")


class ObsSpecSection(Section):
    """The constants that scale the specialist's observation: each divides a metric, so each must be > 0."""

    services: list[Name] = Field(min_length=1, max_length=MAX_SERVICES)
    pools: list[Name] = Field(min_length=1, max_length=MAX_POOLS)
    replica_rps: list[Annotated[float, Field(gt=0, le=1e9)]]
    ref_replicas: list[Annotated[float, Field(ge=1, le=512)]]
    slo_target_s: list[Annotated[float, Field(gt=0, le=30 * 86_400)]]
    max_nodes: list[Annotated[float, Field(ge=1, le=256)]]
    step_s: float = Field(ge=1, le=3600)
    cost_ref_usd_h: Positive

    @model_validator(mode="after")
    def _lengths(self) -> "ObsSpecSection":
        _unique("services", self.services)
        _unique("pools", self.pools)
        for name in ("replica_rps", "ref_replicas", "slo_target_s"):
            _same_length(name, getattr(self, name), "services", len(self.services))
        _same_length("max_nodes", self.max_nodes, "pools", len(self.pools))
        return self


class ActionSpecSection(Section):
    n_services: int = Field(ge=1, le=MAX_SERVICES)
    max_step: int = Field(ge=1, le=50)
    min_replicas: list[Annotated[int, Field(ge=0, le=512)]]
    max_replicas: list[Annotated[int, Field(ge=1, le=512)]]

    @model_validator(mode="after")
    def _bounds(self) -> "ActionSpecSection":
        _same_length("min_replicas", self.min_replicas, "services (n_services)", self.n_services)
        _same_length("max_replicas", self.max_replicas, "services (n_services)", self.n_services)
        for i, (lo, hi) in enumerate(zip(self.min_replicas, self.max_replicas)):
            if lo > hi:
                raise ValueError(f"min_replicas[{i}] ({lo}) exceeds max_replicas[{i}] ({hi})")
        return self


Bound = Annotated[float, Field(ge=0, le=1e9)]
Pair = Annotated[list[Bound], Field(min_length=2, max_length=2)]


class RangeSection(Section):
    """The generalist's trained range: every quantity ``general.check_range`` bounds, ``[low, high]``."""

    lead_steps: Pair
    cold_start_steps: Pair
    price_ratio: Pair
    replicas_per_node: Pair
    max_replicas: Pair
    slo_over_work: Pair

    @model_validator(mode="after")
    def _low_le_high(self) -> "RangeSection":
        for name, (lo, hi) in self.model_dump().items():
            if lo > hi:
                raise ValueError(f"{name}: expected [low, high] with low <= high, got [{lo:g}, {hi:g}]")
        return self


class GeneralActionSection(Section):
    """The generalist's decoder constants; they must be this rlscale's, or the network's outputs mean other levels."""

    levels: list[Annotated[float, Field(gt=0, le=1)]] = Field(min_length=1, max_length=64)
    rebalance: list[Name] = Field(max_length=8)
    u_max: float = Field(gt=0, le=1)
    tolerance: float = Field(ge=0, lt=1)
    down_window_steps: int = Field(ge=0, le=10_000)

    @model_validator(mode="after")
    def _this_decoder(self) -> "GeneralActionSection":
        from rlscale.policies import relative

        ours = {"levels": list(relative.LEVELS), "rebalance": ["none", "consolidate", "spread"], "u_max": relative.U_MAX,
                "tolerance": relative.TOLERANCE, "down_window_steps": relative.DOWN_WINDOW_STEPS}
        for name, value in ours.items():
            if getattr(self, name) != value:
                raise ValueError(f"{name}: {getattr(self, name)} is not this rlscale's decoder ({value}); "
                                 "export the policy with this version")
        return self


class HistorySection(Section):
    """A history-reading generalist's memory (DESIGN.md section 15): the days it reads and how long it holds a pick."""

    days: float = Field(gt=0, le=14)
    min_days: float = Field(default=1.0, ge=0, le=14)
    hold_steps: int = Field(default=1, ge=1, le=240)

    @model_validator(mode="after")
    def _min_le_days(self) -> "HistorySection":
        if self.min_days > self.days:
            raise ValueError(f"min_days ({self.min_days:g}) exceeds days ({self.days:g})")
        return self


class CalibrationSection(Section):
    """A generalist that calibrates its base level on each cluster's history (``policies.calibration``)."""

    days: float = Field(gt=0, le=14, description="days of history replayed (the last ones)")
    min_days: float = Field(default=1.0, ge=0, le=14, description="less history than this: no calibration")
    start_level: int = Field(ge=0, le=7, description="the level the network was biased to: it reads as the calibrated one")
    sees_base: bool = Field(default=False, description="the network reads its base as the row's last feature")

    @model_validator(mode="after")
    def _min_le_days(self) -> "CalibrationSection":
        if self.min_days > self.days:
            raise ValueError(f"min_days ({self.min_days:g}) exceeds days ({self.days:g})")
        return self


Record = dict[Annotated[str, Field(max_length=NAME_CHARS)], Any]


class TrainingSection(Section):
    checkpoint: Name
    command: Text = ""
    config: Record = Field(default_factory=dict, description="the training config: a record, read only for the randomisation")
    seed: int = Field(ge=0, lt=2**32)
    timesteps: int = Field(ge=0, le=10**12)
    n_timesteps: int | None = Field(default=None, ge=1, le=10**12, description="what the run was asked to train")
    run_timesteps: int | None = Field(default=None, ge=0, le=10**12, description="how far the run got (its last checkpoint)")
    complete: bool | None = Field(default=None, description="false: exported from a run interrupted before n_timesteps")
    validation_score: float | None = Field(default=None, ge=-1e15, le=1e15, description="the checkpoint's validation score")


Metric = Annotated[float, Field(ge=-1e15, le=1e15)] | None


class EvaluationSection(BaseModel):
    """How the policy did on held-out seeds: shown to people, never read by a decision."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True, allow_inf_nan=False)

    held_out_seeds: list[Annotated[int, Field(ge=0, lt=2**32)]] = Field(default_factory=list, max_length=10_000)
    seeds: list[Annotated[int, Field(ge=0, lt=2**32)]] = Field(default_factory=list, max_length=10_000)
    cost_vs_hpa: Metric = None
    ppo: dict[Name, Metric] = Field(default_factory=dict)
    hpa: dict[Name, Metric] = Field(default_factory=dict)
    cases: dict[Name, Record] = Field(default_factory=dict)


class CardBase(Section):
    format: Literal["rlscale-policy/1"]
    name: Name
    network: NetworkSection
    obs_features: list[Annotated[str, Field(max_length=2 * NAME_CHARS)]] = Field(max_length=100_000)
    policy_sha256: str = Field(pattern=SHA256_PATTERN)
    card_sha256: str = Field(pattern=SHA256_PATTERN)
    training: TrainingSection
    evaluation: EvaluationSection
    versions: dict[Name, Annotated[str, Field(max_length=NAME_CHARS)]] = Field(max_length=64)
    version: Name | None = Field(default=None, description="shown as the served policy's version (else policy_sha256)")
    sweep: Record | None = Field(default=None, description="the sweep a policy was picked from (rlscale sweep)")


class SpecialistCard(CardBase):
    """A policy trained on one scenario: its observation and action specs, and the scenario they come from."""

    scenario: Name
    scenario_config: Record
    obs_spec: ObsSpecSection
    action_spec: ActionSpecSection

    @model_validator(mode="after")
    def _consistent(self) -> "SpecialistCard":
        obs = ObsSpec.from_dict(self.obs_spec.model_dump())
        if self.action_spec.n_services != obs.n_services:
            raise ValueError(f"action_spec.n_services: {self.action_spec.n_services}, but obs_spec has {obs.n_services} services")
        if self.obs_features != obs.feature_names():
            raise ValueError("obs_features: not the features of obs_spec's services and pools")
        return self


class GeneralCard(CardBase):
    kind: Literal["general"]
    action: GeneralActionSection
    range: RangeSection
    history: HistorySection | None = Field(default=None, description="present: the policy reads each service's history")
    calibration: CalibrationSection | None = Field(
        default=None, description="present: the policy calibrates its base level on each service's history")

    @model_validator(mode="after")
    def _features(self) -> "GeneralCard":
        from rlscale.policies.relative import feature_names

        sees_base = self.calibration is not None and self.calibration.sees_base
        if self.obs_features != feature_names(self.history is not None, sees_base):
            raise ValueError("obs_features: not this rlscale's generalist features"
                             f"{' with history' if self.history is not None else ''}; export the policy with this version")
        return self


# --------------------------------------------------------------------------- reading


def _unique(name: str, values: list[str]) -> None:
    if len(set(values)) != len(values):
        raise ValueError(f"{name}: names must be unique")


def _same_length(name: str, values: list[Any], of: str, n: int) -> None:
    if len(values) != n:
        raise ValueError(f"{name}: {len(values)} values for {n} {of}")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as infinity
        raise ValueError(f"{text[:40]} is not a finite number")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:40]!r}")
        out[key] = value
    return out


def _depth(obj: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        value, d = stack.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, d)
            if d <= MAX_DEPTH:
                stack.extend((v, d + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def parse_card_bytes(data: bytes, path: Path) -> dict[str, Any]:
    """The card's JSON: UTF-8, standard JSON only (no NaN or Infinity), no duplicate keys, bounded nesting."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})") from None
    try:
        card = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise ConfigError(f"{path}: not valid JSON (nested deeper than {MAX_DEPTH} levels)") from None
    except ValueError as err:
        raise ConfigError(f"{path}: not valid JSON ({str(err).splitlines()[0][:100]})") from None
    if not isinstance(card, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    if _depth(card) > MAX_DEPTH:
        raise ConfigError(f"{path}: not valid JSON (nested deeper than {MAX_DEPTH} levels)")
    return card


def card_digest(card: dict[str, Any]) -> str:
    """SHA-256 of the canonical card without its ``card_sha256``: the same for any formatting of the same content."""
    body = {k: v for k, v in card.items() if k != HASH_FIELD}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def check_card_digest(card: dict[str, Any], path: Path) -> None:
    want = card.get(HASH_FIELD)
    if not isinstance(want, str) or len(want) != 64 or any(c not in "0123456789abcdef" for c in want):
        raise ConfigError(f"{path}: field {HASH_FIELD}: required, 64 lowercase hex digits (a card exported before it "
                          "existed: re-export the policy, or if you trust the card, `python -m rlscale.policies.card seal DIR`)")
    if card_digest(card) != want:
        raise ConfigError(f"{path}: does not match its {HASH_FIELD} (edited or corrupted after export)")


def validate_card(card: dict[str, Any], path: Path) -> SpecialistCard | GeneralCard:
    """The card through its schema; one line naming the first bad field."""
    if card.get("format") != CARD_FORMAT:
        raise ConfigError(f"{path}: format: expected {CARD_FORMAT!r}")
    model: type[SpecialistCard] | type[GeneralCard] = GeneralCard if "kind" in card else SpecialistCard
    try:
        parsed = model.model_validate(card)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(str(path), err)) from None
    if isinstance(parsed, SpecialistCard):
        check_scenario_config(parsed, path)
    return parsed


def check_scenario_config(card: SpecialistCard, path: Path) -> None:
    """``scenario_config`` must be a valid scenario whose specs are the card's ``obs_spec`` and ``action_spec``."""
    try:
        scenario = Scenario.model_validate(card.scenario_config)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(f"{path}: scenario_config", err).replace(": scenario_config: ", ": scenario_config.", 1)) from None
    if scenario.name != card.scenario:
        raise ConfigError(f"{path}: scenario: {card.scenario!r}, but scenario_config is {scenario.name!r}")
    if ObsSpec.from_scenario(scenario).to_dict() != card.obs_spec.model_dump():
        raise ConfigError(f"{path}: obs_spec: not what scenario_config derives (edited after export?)")
    if ActionSpec.from_scenario(scenario).to_dict() != card.action_spec.model_dump():
        raise ConfigError(f"{path}: action_spec: not what scenario_config derives (edited after export?)")
    training_randomisation(card, path)


def trained_scenario(card: SpecialistCard) -> Scenario:
    return Scenario.model_validate(card.scenario_config)


def training_randomisation(card: SpecialistCard, path: Path) -> RandomisationSpec | None:
    """The workload randomisation the specialist was trained with: None if ``randomise`` was off."""
    config = card.training.config
    randomise = config.get("randomise", True)
    if not isinstance(randomise, bool):
        raise ConfigError(f"{path}: training.config.randomise: expected true or false")
    if not randomise:
        return None
    override = config.get("randomisation")
    if override is None:
        return trained_scenario(card).randomisation
    try:
        return RandomisationSpec.model_validate(override)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(f"{path}: training.config.randomisation", err)) from None


def seal(card: dict[str, Any]) -> dict[str, Any]:
    """The card with its ``card_sha256`` (over everything else, ``policy_sha256`` included)."""
    body = {k: v for k, v in card.items() if k != HASH_FIELD}
    return {**body, HASH_FIELD: card_digest(body)}


def dumps(card: dict[str, Any]) -> str:
    return json.dumps(card, indent=2, sort_keys=True, allow_nan=False) + "\n"


def _seal_dir(directory: str) -> None:
    """Add or renew the checksum of a card you trust (one exported before ``card_sha256`` existed)."""
    from rlscale.atomic import write_text
    from rlscale.config import read_user_bytes

    path = Path(directory) / "card.json"
    card = parse_card_bytes(read_user_bytes(path, "card", MAX_CARD_BYTES), path)
    sealed = seal(card)
    validate_card(sealed, path)
    write_text(path, dumps(sealed))
    print(f"{path}: {HASH_FIELD} {sealed[HASH_FIELD]}")


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "seal":
        print("usage: python -m rlscale.policies.card seal MODEL_DIR...", file=sys.stderr)
        sys.exit(2)
    try:
        for d in sys.argv[2:]:
            _seal_dir(d)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
