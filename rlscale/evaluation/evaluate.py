"""Evaluate policies on a scenario: paired seeded episodes, TensorBoard runs, and a report.

Every policy plays the same episodes (same seeds, so the same traces and the
same simulator randomness): differences between policies are the policies',
not the luck of the draw, and each seed is a paired comparison. Held-out
evaluation seeds start at ``HELD_OUT_SEED_BASE``; training uses seeds below it.

Policies run in a process pool of at most two workers (the machines this runs
on have two cores); everything a user can get wrong (a policy spec, a model
path, a trace file) is checked before any work starts, and outputs are built
in temporary directories that replace the targets only when complete.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlscale import workload
from rlscale.config import MODELS_DIR, TEST_SEED_BASE, ConfigError, Scenario, load_scenario
from rlscale.rollout import METRIC_NAMES, run_policy

HELD_OUT_SEED_BASE = TEST_SEED_BASE
BASELINES = ("hpa", "target_tracking", "predictive", "static")
MAX_WORKERS = 2
STEP_TAGS = {
    "arrivals_rps": "step/arrivals_rps",
    "capacity_rps": "step/capacity_rps",
    "replicas": "step/replicas",
    "nodes": "step/nodes",
    "latency_p95_s": "step/latency_p95_s",
    "slo_s": "step/slo_s",
    "cost_rate_usd_h": "step/cost_rate_usd_h",
}


@dataclass(frozen=True)
class TraceSource:
    """A real trace replayed instead of the scenario's generator."""

    path: str
    column: str = "value"


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation: which policies, which scenario, which seeds."""

    scenario: Scenario
    policies: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int | None = None
    trace: TraceSource | None = None
    workers: int = MAX_WORKERS
    history_days: float | None = None
    """Days before each episode a policy that reads history gets; None: the days its card asks for."""

    @property
    def episode_steps(self) -> int:
        return int(self.steps or self.scenario.episode_steps)


@dataclass
class PolicyResult:
    """One policy's episodes: metrics per seed ``[n]`` and per-step series ``[T, n]``."""

    spec: str
    label: str
    episodes: dict[str, np.ndarray]
    series: dict[str, np.ndarray]
    notes: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0


@dataclass
class Evaluation:
    config: EvalConfig
    scenario: Scenario
    results: list[PolicyResult]
    floor_usd: np.ndarray
    wall_s: float

    def result(self, label: str) -> PolicyResult | None:
        return next((r for r in self.results if r.label == label), None)


# --------------------------------------------------------------------------- checking user input


def parse_policies(text: str) -> tuple[str, ...]:
    """``"ppo:models/x,hpa,oracle"`` -> specs; empty entries and repeats are one-line errors."""
    specs = tuple(part.strip() for part in text.split(","))
    if not text.strip() or any(not s for s in specs):
        raise ConfigError(f"--policies {text!r}: expected a comma-separated list such as 'hpa,predictive,oracle'")
    labels = [policy_label(s) for s in specs]
    for i, label in enumerate(labels):
        if label in labels[:i]:
            raise ConfigError(f"--policies: {specs[i]!r} is listed twice")
    return specs


def shipped_model(name: str) -> str | None:
    """``ppo:models/NAME`` for a policy shipped in ``models/`` (an absolute path outside the project root), else None."""
    model = MODELS_DIR / name
    if not ((model / "policy.npz").is_file() and (model / "card.json").is_file()):
        return None
    local = Path("models") / name
    return f"ppo:{local}" if local.resolve() == model.resolve() else f"ppo:{model}"


def default_policies(scenario: Scenario) -> tuple[str, ...]:
    """The shipped model for this scenario (if there is one), every baseline and the oracle."""
    ppo = shipped_model(scenario.name)
    return (*((ppo,) if ppo else ()), *BASELINES, "oracle")


def policy_label(spec: str) -> str:
    """Short, unique display name: ``ppo:models/web-diurnal`` -> ``ppo:web-diurnal``."""
    name, sep, arg = spec.strip().partition(":")
    if name == "ppo" and sep and arg:
        return f"ppo:{Path(arg.rstrip('/')).name}"
    return spec.strip()


def run_name(label: str) -> str:
    """A directory name for a label (TensorBoard run names are directories)."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in label)


def check_policies(specs: Sequence[str], scenario: Scenario) -> None:
    """Build every policy once, so a bad spec or a missing model fails before any work starts."""
    from rlscale.policies import make_policy

    for spec in specs:
        make_policy(spec, scenario)


def trace_scenario(scenario: Scenario, trace: TraceSource) -> Scenario:
    """The scenario with every service's load replaced by ``trace`` (checked now: one-line errors).

    The trace is resampled to the scenario's step and scaled so its 99th
    percentile is each service's ``peak_rps`` (the first service's, for the
    usual one-service scenario); synthetic noise and flash crowds are turned
    off, so the load is the trace's own. Each seed still draws its start day,
    so seeds replay different days of a multi-day trace.
    """
    ts, values = workload.load_csv(trace.path, trace.column)
    try:
        workload.scale_to_peak(workload.resample(ts, values, scenario.step_s), 1.0)
    except ValueError as err:
        raise ConfigError(f"{trace.path}: column {trace.column!r}: {err}") from None
    path = str(Path(trace.path).resolve())
    services = []
    for svc in scenario.services:
        load = svc.workload.model_copy(update={
            "trace": path,
            "trace_column": trace.column,
            "noise": 0.0,
            "flash_crowds": svc.workload.flash_crowds.model_copy(update={"per_day": 0.0}),
        })
        services.append(svc.model_copy(update={"workload": load}))
    return scenario.model_copy(update={"services": services})


def make_config(
    scenario: str | Scenario,
    policies: str | Sequence[str] | None = None,
    *,
    seeds: int = 10,
    seed_base: int = HELD_OUT_SEED_BASE,
    steps: int | None = None,
    trace: str | None = None,
    trace_column: str = "value",
    workers: int = MAX_WORKERS,
    history_days: float | None = None,
) -> EvalConfig:
    """Resolve and check every input; raises ConfigError (one line) before any work is done."""
    sc = load_scenario(scenario)
    if trace is not None:
        sc = trace_scenario(sc, TraceSource(trace, trace_column))
    if policies is None:
        specs = default_policies(sc)
    elif isinstance(policies, str):
        specs = parse_policies(policies)
    else:
        specs = parse_policies(",".join(policies))
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: expected at least 1")
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps {steps}: expected at least 1")
    check_policies(specs, sc)
    return EvalConfig(
        scenario=sc,
        policies=specs,
        seeds=tuple(range(seed_base, seed_base + seeds)),
        steps=steps,
        trace=TraceSource(trace, trace_column) if trace is not None else None,
        workers=max(1, min(MAX_WORKERS, workers)),
        history_days=history_days,
    )


# --------------------------------------------------------------------------- running


def _run_one(scenario: Scenario, spec: str, seeds: tuple[int, ...], steps: int | None,
             history_days: float | None = None) -> PolicyResult:
    from rlscale.policies import make_policy

    start = time.perf_counter()
    policy = make_policy(spec, scenario)
    rollout = run_policy(scenario, policy, list(seeds), steps=steps, record=True, history_days=history_days)
    notes: dict[str, Any] = {}
    capped = getattr(policy, "capped", None)
    if isinstance(capped, np.ndarray) and capped.ndim == 3:
        notes["capped_intervals"] = capped.any(axis=2).sum(axis=1).astype(int).tolist()
        notes["unresolved_intervals"] = np.asarray(getattr(policy, "unresolved")).astype(int).tolist()
        notes["repair_passes"] = int(getattr(policy, "repairs", 0))
    return PolicyResult(spec, policy_label(spec), rollout.episodes, rollout.series, notes, time.perf_counter() - start)


def episode_floor(scenario: Scenario, seeds: Sequence[int], steps: int | None = None,
                  trace: np.ndarray | None = None) -> np.ndarray:
    """The oracle's proven cost floor (USD) of each seed's episode (of ``trace``'s rates when given, as ``run_policy``)."""
    from rlscale.episode import ClusterEpisodes
    from rlscale.policies.oracle import cost_floor

    engine = ClusterEpisodes(scenario, len(seeds), episode_steps=steps, randomise=False, trace=trace)
    for i, seed in enumerate(seeds):
        engine.seed(i, seed)
        engine.reset(i)
    return cost_floor(scenario, engine.arrivals[:, : engine.episode_steps], engine.sim.key)


def evaluate(config: EvalConfig, on_done: Callable[[PolicyResult], None] | None = None) -> Evaluation:
    """Run every policy on the same seeded episodes (in up to two processes) and the oracle's floor."""
    start = time.perf_counter()
    sc, seeds, steps = config.scenario, config.seeds, config.steps
    results: dict[str, PolicyResult] = {}
    workers = min(config.workers, len(config.policies))
    if workers <= 1:
        for spec in config.policies:
            results[spec] = _run_one(sc, spec, seeds, steps, config.history_days)
            if on_done:
                on_done(results[spec])
        floor = episode_floor(sc, seeds, steps)
    else:
        # slowest first (the oracle replays its plan), so the two workers finish together
        order = sorted(config.policies, key=lambda s: (s != "oracle", not s.startswith("ppo")))
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {spec: pool.submit(_run_one, sc, spec, seeds, steps, config.history_days) for spec in order}
            floor = episode_floor(sc, seeds, steps)
            for spec in order:
                results[spec] = futures[spec].result()
                if on_done:
                    on_done(results[spec])
    ordered = [results[spec] for spec in config.policies]
    return Evaluation(config, sc, ordered, floor, time.perf_counter() - start)


# --------------------------------------------------------------------------- summaries


def summary(evaluation: Evaluation) -> dict[str, Any]:
    """Everything ``results.json`` holds: per-seed metrics, means with 95% CIs, ratios and records."""
    from rlscale.evaluation.stats import head_to_head, mean_ci, paired_ratio

    oracle = evaluation.result("oracle")
    hpa = evaluation.result("hpa")
    cfg = evaluation.config
    policies = []
    for r in evaluation.results:
        entry: dict[str, Any] = {
            "spec": r.spec,
            "label": r.label,
            "episodes": {k: np.asarray(v).tolist() for k, v in r.episodes.items()},
            "mean": {k: mean_ci(v).to_dict() for k, v in r.episodes.items()},
            "wall_s": r.wall_s,
        }
        for name, ref in (("oracle", oracle), ("hpa", hpa)):
            if ref is not None:
                # one number wherever a cost ratio is printed: the ratio of the mean costs, as the model card, the
                # README, checkpoint selection and the benchmarks have it; the CI is that of the per-seed ratios
                ratio = paired_ratio(r.episodes["cost_usd"], ref.episodes["cost_usd"])
                of_means = float(np.mean(r.episodes["cost_usd"]) / np.mean(ref.episodes["cost_usd"]))
                entry[f"cost_vs_{name}"] = {**mean_ci(ratio).to_dict(), "mean": of_means,
                                            "mean_of_seed_ratios": float(np.mean(ratio)), "per_seed": ratio.tolist()}
        if hpa is not None and r is not hpa:
            entry["vs_hpa"] = head_to_head(
                r.episodes["cost_usd"], r.episodes["slo_violation_rate"], hpa.episodes["cost_usd"], hpa.episodes["slo_violation_rate"]
            ).to_dict()
        if r.notes:
            entry["notes"] = r.notes
        policies.append(entry)
    floor = evaluation.floor_usd
    out: dict[str, Any] = {
        "scenario": evaluation.scenario.name,
        "trace": None if cfg.trace is None else {"path": cfg.trace.path, "column": cfg.trace.column},
        "seeds": list(cfg.seeds),
        "steps": cfg.episode_steps,
        "step_s": evaluation.scenario.step_s,
        "metrics": list(METRIC_NAMES),
        "policies": policies,
        "oracle_floor_usd": {**mean_ci(floor).to_dict(), "per_seed": floor.tolist()},
        "wall_s": evaluation.wall_s,
    }
    if oracle is not None:
        out["oracle_floor_usd"]["vs_oracle"] = mean_ci(paired_ratio(floor, oracle.episodes["cost_usd"])).to_dict()
    return out


def format_estimate(metric: str, mean: float, half: float | None) -> str:
    """``12.3 ± 0.4`` with as many decimals as the metric needs."""
    digits = {"cost_usd": 2, "scaling_actions": 0, "rebalances": 0, "episode_reward": 1}.get(metric, 3)
    text = f"{mean:.{digits}f}"
    if half is not None and not math.isnan(half):
        text += f" ± {half:.{digits}f}"
    return text
