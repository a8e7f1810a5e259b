"""Every autoscaling policy behind one ``Policy`` protocol, and ``make_policy`` to build one by name.

Policy specs (CLI ``--policy`` values): ``static``, ``hpa``, ``target_tracking``,
``predictive``, ``oracle`` and ``ppo:PATH``. ``ppo`` and ``oracle`` live in their
own modules (``rlscale.policies.ppo``, ``rlscale.policies.oracle``), imported
lazily so that the baselines never pull in what those need.
"""

from __future__ import annotations

import importlib
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
    "recommend",
]

_BASELINES: dict[str, Callable[[Scenario], Policy]] = {
    "static": StaticPolicy,
    "hpa": HPAPolicy,
    "target_tracking": TargetTrackingPolicy,
    "predictive": PredictivePolicy,
}
POLICY_NAMES = (*_BASELINES, "oracle", "ppo:PATH")


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
