"""The policy spec grammar, parsed in one place.

A spec names a policy on every front door (``--policy``, ``--policies``,
``--model``, the tuned rule's sweep, the README): ``NAME`` (a baseline or
``oracle``), ``NAME:key=value[:key=value...]`` (a baseline with parameters,
``hpa:target=0.8:window=150``, short enough for a comma-separated list) and
``ppo:DIR[:key=value...]`` (an exported model and its decoder options,
``ppo:models/general:repack=0``). Every error is one line naming the part
that is wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from rlscale.config import ConfigError

BASELINE_NAMES = ("static", "hpa", "target_tracking", "predictive")
POLICY_NAMES = (*BASELINE_NAMES, "oracle", "ppo:PATH")

PARAMETERS: dict[str, dict[str, str]] = {
    "hpa": {"target": "target_utilisation", "window": "downscale_window_s", "tolerance": "tolerance"},
    "predictive": {"target": "target_utilisation", "headroom": "headroom", "down": "max_scale_down"},
    "target_tracking": {"target": "target_utilisation", "out_cooldown": "scale_out_cooldown_s",
                        "in_cooldown": "scale_in_cooldown_s"},
}
"""Short parameter names of baseline specs; each maps to the policy's keyword argument."""

MODEL_OPTIONS = {"repack": {"0": False, "1": True}, "drain": {"0": False, "1": True},
                 "calibrate": {"0": False, "1": True}}
"""``ppo:DIR:key=value`` options (a generalist's decoder switches) and the values each takes."""


@dataclass(frozen=True)
class PolicySpec:
    """A parsed spec: ``name`` is a baseline, ``oracle`` or ``ppo``; ``path`` the model of a ``ppo`` spec."""

    text: str
    name: str
    path: str | None = None
    params: dict[str, float] = field(default_factory=dict)
    options: dict[str, bool] = field(default_factory=dict)

    @property
    def is_model(self) -> bool:
        return self.name == "ppo"


def parse_parameters(spec: str, name: str, text: str, allowed: dict[str, str] | None = None) -> dict[str, float]:
    """``key=value:key=value`` -> keyword arguments of policy ``name``; one-line errors name the key.

    ``allowed`` maps each key to its keyword (default: the baseline's ``PARAMETERS``).
    """
    allowed = PARAMETERS.get(name, {}) if allowed is None else allowed
    kwargs: dict[str, float] = {}
    for part in text.split(":"):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in allowed:
            expected = ", ".join(f"{k}=<number>" for k in allowed) or "no parameters"
            raise ConfigError(f"policy {spec!r}: {part!r} is not a parameter of {name} (expected {expected})")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"policy {spec!r}: {key}={value!r} is not a number") from None
        if not math.isfinite(number) or number <= 0:
            raise ConfigError(f"policy {spec!r}: {key} must be a finite number > 0, got {value!r}")
        if allowed[key] in kwargs:
            raise ConfigError(f"policy {spec!r}: {key} is given twice")
        kwargs[allowed[key]] = number
    return kwargs


def _model_options(arg: str) -> tuple[str, dict[str, bool]]:
    """``DIR[:key=value...]`` -> the model directory and its options (a path that exists is taken whole)."""
    if Path(arg).exists() or "=" not in arg:
        return arg, {}
    path, *parts = arg.split(":")
    options: dict[str, bool] = {}
    for part in parts:
        key, _, value = part.partition("=")
        if key not in MODEL_OPTIONS or value not in MODEL_OPTIONS[key]:
            expected = ", ".join(f"{k}={'|'.join(v)}" for k, v in MODEL_OPTIONS.items())
            raise ConfigError(f"policy 'ppo:{arg}': {part!r} is not an option of a ppo policy (expected {expected})")
        options[key] = MODEL_OPTIONS[key][value]
    return path, options


def parse_spec(text: str) -> PolicySpec:
    """One spec string -> ``PolicySpec``; unknown names list the valid ones."""
    spec = text.strip()
    name, sep, arg = spec.partition(":")
    if name in BASELINE_NAMES and not sep:
        return PolicySpec(spec, name)
    if name in BASELINE_NAMES and arg:
        return PolicySpec(spec, name, params=parse_parameters(spec, name, arg))
    if name == "ppo" and sep:
        if not arg:
            raise ConfigError("policy 'ppo:': expected ppo:PATH to an exported model")
        path, options = _model_options(arg)
        return PolicySpec(spec, "ppo", path=path, options=options)
    if name == "oracle" and not sep:
        return PolicySpec(spec, name)
    raise ConfigError(f"unknown policy {spec!r}: expected one of {', '.join(POLICY_NAMES)}")
