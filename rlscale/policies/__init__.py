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
from types import ModuleType
from typing import Any, Callable

from rlscale.config import ConfigError, Scenario
from rlscale.policies.base import Policy, clamp_replicas
from rlscale.policies.hpa import HPAPolicy, ScalingPolicy, ScalingRules, recommend
from rlscale.policies.predictive import PredictivePolicy
from rlscale.policies.static import StaticPolicy
from rlscale.policies.spec import POLICY_NAMES, PolicySpec, parse_parameters, parse_spec
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
    "parse_spec",
    "policy_builder",
    "recommend",
]

_BASELINES: dict[str, Callable[..., Policy]] = {
    "static": StaticPolicy,
    "hpa": HPAPolicy,
    "target_tracking": TargetTrackingPolicy,
    "predictive": PredictivePolicy,
}


def _optional_module(name: str, needs: str) -> ModuleType:
    """Import ``rlscale.policies.<name>``; a one-line ConfigError if it is not there (yet)."""
    full = f"rlscale.policies.{name}"
    try:
        return importlib.import_module(full)
    except ModuleNotFoundError as err:
        if err.name != full:
            raise
        raise ConfigError(f"{needs} the module {full}, which is not available in this installation") from None


def _model_builder(spec: PolicySpec, scenario: Scenario, name: str | None) -> tuple[Any, Callable[[], Policy]]:
    """An exported model loaded once, and a builder of fresh instances of it for ``scenario``.

    A generalist's builder refuses a cluster outside the card's ranges, a
    specialist a cluster outside the range it was trained across
    (``trained_range``); options on a specialist are refused here rather than
    silently ignored.
    """
    assert spec.path is not None
    network = _optional_module("network", "ppo policies need")
    exported = network.load_exported(spec.path)
    arg = spec.text.partition(":")[2]
    if exported.general:
        from rlscale.policies.general import GeneralPolicy

        label = name or spec.text
        return exported, lambda: GeneralPolicy(exported, scenario, name=label, source=spec.path, **spec.options)
    if spec.options:
        raise ConfigError(f"policy 'ppo:{arg}': options ({', '.join(spec.options)}) apply to a generalist only; "
                          f"{spec.path} is a specialist")
    from rlscale.policies.ppo import PPOPolicy
    from rlscale.policies.trained_range import check_trained_range

    if exported.checked is not None:
        check_trained_range(exported.checked, scenario, spec.path)
    label = name or f"ppo:{spec.path}"
    return exported, lambda: PPOPolicy(exported, name=label)


def policy_builder(spec: str | PolicySpec, scenario: Scenario, name: str | None = None) -> tuple[Any, Callable[[], Policy]]:
    """A spec -> (the exported model or None, a builder of fresh instances for ``scenario``).

    Serving rebuilds its policy on every run of the control loop, so it keeps
    the builder; evaluation builds once (``make_policy``).
    """
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    if parsed.is_model:
        return _model_builder(parsed, scenario, name)
    if parsed.name == "oracle":
        oracle = _optional_module("oracle", "the oracle policy needs")
        return None, lambda: oracle.make_policy(scenario)
    cls = _BASELINES[parsed.name]
    if not parsed.params:
        return None, lambda: cls(scenario)

    def build() -> Policy:
        baseline: Policy = cls(scenario, **parsed.params)
        baseline.name = parsed.text
        return baseline

    return None, build


def make_policy(spec: str, scenario: Scenario) -> Policy:
    """Build a policy from its spec string; every mistake is a one-line ``ConfigError``.

    A specialist must match the scenario's services and pools; a generalist must cover its ranges.
    """
    parsed = parse_spec(spec)
    exported, build = policy_builder(parsed, scenario)
    if exported is not None and not exported.general:
        why = exported.obs_spec.mismatch(scenario)
        if why:
            raise ConfigError(f"{parsed.path}: {why}")
    return build()
