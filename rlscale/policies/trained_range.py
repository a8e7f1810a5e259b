"""A specialist's trained range, derived from its card, and the refusal of a cluster outside it.

A specialist's network was trained on one scenario (``scenario_config`` in its
card) with its load scaled by the training randomisation, and nothing else
varied: the same replica capacity, limits, prices, delays and interval every
episode. Served on a cluster with the same service and pool names but three
times the load (``envs/generalisation/peak-x3.yaml``) or twice the prices
(``prices-x2.yaml``), its decoder meets inputs it never saw, and it was
accepted silently. So, as the generalist does with its card's ``range``, the
specialist refuses a cluster outside what it was trained across, with one
line naming the field. The range is derived, not stored: the card already
holds the scenario and the training config, under its checksum.

| field | trained range |
|---|---|
| ``step_s`` | the scenario's |
| ``services[S].workload.peak_rps`` | the scenario's peak x ``randomisation.scale`` (x 1 with ``randomise: false``) |
| ``services[S].min_replicas``, ``max_replicas`` | within the scenario's ``[min_replicas, max_replicas]`` (tighter bounds are the guard rails' business) |
| ``services[S].replica_rps`` (work, size and node speed), ``slo_target_s``, ``cold_start_s`` | the scenario's |
| ``pools[P].price_per_hour``, ``provision_delay_s``, ``max_nodes``, ``vcpu``, ``memory_gib`` | the scenario's |
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from rlscale.config import ConfigError, Scenario
from rlscale.policies.card import SpecialistCard, trained_scenario, training_randomisation

RELATIVE_TOLERANCE = 1e-9


def trained_range(card: SpecialistCard, source: str = "card.json") -> dict[str, tuple[float, float]]:
    """``{"services[api].workload.peak_rps": (lo, hi), ...}``: every bounded quantity, keyed as the refusal names it."""
    return {name: (lo, hi) for name, _, lo, hi in _bounds(card, trained_scenario(card), source)}


def check_trained_range(card: SpecialistCard, scenario: Scenario, source: str) -> None:
    """One line naming the first quantity of ``scenario`` outside the specialist's trained range."""
    if [s.name for s in scenario.services] != card.obs_spec.services or [p.name for p in scenario.pools] != card.obs_spec.pools:
        return  # another cluster altogether: the model_mismatch check says so (or --fallback-only serves HPA)
    bounds = {name: (lo, hi) for name, _, lo, hi in _bounds(card, trained_scenario(card), source)}
    for name, value, _, _ in _bounds(card, scenario, source):
        lo, hi = bounds[name]
        slack = RELATIVE_TOLERANCE * max(abs(lo), abs(hi), 1.0)
        if not lo - slack <= value <= hi + slack:
            raise ConfigError(
                f"{source}: {name} = {value:g} is outside the trained range [{lo:g}, {hi:g}]; "
                f"scenario {scenario.name!r} needs a policy trained for it (or the generalist, models/general)"
            )


def _bounds(card: SpecialistCard, sc: Scenario, source: str) -> Iterator[tuple[str, float, float, float]]:
    """(name, value in ``sc``, low, high) with the bounds the card's training implies for that value."""
    randomisation = training_randomisation(card, Path(source))
    lo_scale, hi_scale = randomisation.scale if randomisation is not None else (1.0, 1.0)
    trained = trained_scenario(card)
    yield "step_s", sc.step_s, trained.step_s, trained.step_s
    speed = {p.name: p.speed for p in sc.pools}
    t_speed = {p.name: p.speed for p in trained.pools}
    for svc, t in zip(sc.services, trained.services):
        at = f"services[{svc.name}]"
        peak = t.workload.peak_rps
        yield f"{at}.workload.peak_rps", svc.workload.peak_rps, peak * lo_scale, peak * hi_scale
        yield f"{at}.min_replicas", float(svc.min_replicas), float(t.min_replicas), float(t.max_replicas)
        yield f"{at}.max_replicas", float(svc.max_replicas), float(t.min_replicas), float(t.max_replicas)
        rps, t_rps = svc.replica_rps * speed[svc.pools[0]], t.replica_rps * t_speed[t.pools[0]]
        yield f"{at}.replica_rps", rps, t_rps, t_rps
        yield f"{at}.slo_target_s", svc.slo_target_s, t.slo_target_s, t.slo_target_s
        yield f"{at}.cold_start_s", svc.cold_start_s, t.cold_start_s, t.cold_start_s
    for pool, t_pool in zip(sc.pools, trained.pools):
        for field in ("price_per_hour", "provision_delay_s", "max_nodes", "vcpu", "memory_gib"):
            trained_value = float(getattr(t_pool, field))
            yield f"pools[{pool.name}].{field}", float(getattr(pool, field)), trained_value, trained_value
