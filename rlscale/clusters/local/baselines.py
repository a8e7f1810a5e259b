"""The baselines on the local cluster, with their time constants kept in decisions rather than seconds.

HPA and target tracking count their windows and cooldowns in seconds tuned
for 60 s decision intervals (HPA's 300 s scale-down window = 5 decisions).
The local cluster decides every few real seconds (``envs/local.yaml``:
``step_s`` = 5 s); with the seconds unchanged, HPA would remember 60
decisions and react an order of magnitude more sluggishly than the same
HPA in the simulator. Rescaling by ``step_s / 60`` keeps the number of
decisions per window, which is the fair comparison with a policy trained on
the same interval. The simulated backend does not rescale: serving there
must equal ``run_policy``'s evaluation.
"""

from __future__ import annotations

from rlscale.config import Scenario
from rlscale.policies import HPAPolicy, Policy, ScalingPolicy, ScalingRules, TargetTrackingPolicy, make_policy
from rlscale.policies.hpa import DEFAULT_SCALE_DOWN, DEFAULT_SCALE_UP

REFERENCE_STEP_S = 60.0
"""The decision interval the baselines' default time constants are tuned for."""


def _rescaled(rules: ScalingRules, factor: float) -> ScalingRules:
    return ScalingRules(tuple(ScalingPolicy(p.kind, p.value, p.period_s * factor) for p in rules.policies), rules.select)


def scaled_policy(spec: str, scenario: Scenario, reference_step_s: float = REFERENCE_STEP_S) -> Policy:
    """``make_policy(spec, scenario)``, with HPA's and target tracking's time constants scaled by ``step_s / reference_step_s``.

    HPA: scale-down stabilisation window (300 s), sync period (15 s) and the
    rate policies' periods; target tracking: scale-out (60 s) and scale-in
    (300 s) cooldowns. Every other spec is ``make_policy``'s.
    """
    factor = scenario.step_s / reference_step_s
    name = spec.strip()
    if name == "hpa":
        return HPAPolicy(
            scenario, downscale_window_s=300.0 * factor, sync_period_s=15.0 * factor,
            scale_up=_rescaled(DEFAULT_SCALE_UP, factor), scale_down=_rescaled(DEFAULT_SCALE_DOWN, factor),
        )
    if name == "target_tracking":
        return TargetTrackingPolicy(scenario, scale_out_cooldown_s=60.0 * factor, scale_in_cooldown_s=300.0 * factor)
    return make_policy(spec, scenario)
