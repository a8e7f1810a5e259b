"""Every autoscaling policy behind one ``Policy`` protocol, and ``make_policy`` to build one by name.

Policy specs (CLI ``--policy`` values): ``static``, ``hpa``, ``target_tracking``,
``predictive``, ``oracle`` and ``ppo:PATH``; a baseline may carry parameters,
``hpa:target=0.8:window=150`` or ``predictive:target=0.8:headroom=1.1:down=0.1``, and a generalist
``ppo:models/general:repack=0``. ``ppo`` and ``oracle`` live in their
own modules (``rlscale.policies.ppo``, ``rlscale.policies.oracle``), imported
lazily so that the baselines never pull in what those need.
"""

from __future__ import annotations

import importlib
import math
from types import ModuleType
from typing import Callable

from rlscale.config import ConfigError, Scenario
from rlscale.policies.base import Policy, clamp_replicas
from rlscale.policies.hpa import HPAPolicy, ScalingPolicy, ScalingRules, recommend
from rlscale.policies.predictive import PredictivePolicy
from rlscale.policies.static import StaticPolicy
from rlscale.policies.target_tracking import TargetTrackingPolicy

__all__ = [
    "HPAPolicy",
    "POLICY_NAMES",
    "Policy",
    "PredictivePolicy",
    "ScalingPolicy",
    "ScalingRules",
    "StaticPolicy",
    "TargetTrackingPolicy",
    "clamp_replicas",
    "make_policy",
    "parse_parameters",
    "recommend",
]

_BASELINES: dict[str, Callable[[Scenario], Policy]] = {
    "static": StaticPolicy,
    "hpa": HPAPolicy,
    "target_tracking": TargetTrackingPolicy,
    "predictive": PredictivePolicy,
}
POLICY_NAMES = (*_BASELINES, "oracle", "ppo:PATH")

PARAMETERS: dict[str, dict[str, str]] = {
    "hpa": {"target": "target_utilisation", "window": "downscale_window_s", "tolerance": "tolerance"},
    "predictive": {"target": "target_utilisation", "headroom": "headroom", "down": "max_scale_down"},
    "target_tracking": {"target": "target_utilisation", "out_cooldown": "scale_out_cooldown_s",
                        "in_cooldown": "scale_in_cooldown_s"},
}
"""Short parameter names of ``name:key=value:...`` specs (``hpa:target=0.8:window=150``), so a tuned rule
fits in a comma-separated ``--policies`` list; each maps to the policy's keyword argument."""


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


def _optional_module(name: str, needs: str) -> ModuleType:
    """Import ``rlscale.policies.<name>``; a one-line ConfigError if it is not there (yet)."""
    full = f"rlscale.policies.{name}"
    try:
        return importlib.import_module(full)
    except ModuleNotFoundError as err:
        if err.name != full:
            raise
        raise ConfigError(f"{needs} the module {full}, which is not available in this installation") from None


def make_policy(spec: str, scenario: Scenario) -> Policy:
    """Build a policy from its spec string; unknown specs raise a one-line ``ConfigError``.

    ``ppo:PATH`` calls ``rlscale.policies.ppo.make_policy(PATH, scenario)`` and
    ``oracle`` calls ``rlscale.policies.oracle.make_policy(scenario)``; those
    modules own their arguments and errors.
    """
    name, sep, arg = spec.strip().partition(":")
    if name in _BASELINES and not sep:
        return _BASELINES[name](scenario)
    if name in _BASELINES and arg:
        kwargs = parse_parameters(spec, name, arg)
        baseline: Policy = _BASELINES[name](scenario, **kwargs)  # type: ignore[call-arg]
        baseline.name = spec.strip()
        return baseline
    if name == "ppo" and sep:
        if not arg:
            raise ConfigError("policy 'ppo:': expected ppo:PATH to an exported model")
        ppo = _optional_module("ppo", "ppo policies need")
        policy: Policy = ppo.make_policy(arg, scenario)
        return policy
    if name == "oracle" and not sep:
        oracle = _optional_module("oracle", "the oracle policy needs")
        policy = oracle.make_policy(scenario)
        return policy
    raise ConfigError(f"unknown policy {spec!r}: expected one of {', '.join(POLICY_NAMES)}")
