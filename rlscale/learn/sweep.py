"""Seed and hyperparameter sweeps of ``rlscale train`` (``rlscale sweep``), run on Ray Tune.

A sweep file (``train/sweeps/NAME.yaml``) names a base training config, the
settings every trial shares (``overrides``) and the axes to vary, as dotted
paths into the training config (``seed``, ``learning_rate``, ``reward.w_slo``,
``policy_kwargs.net_arch``, ...), searched as a grid or by seeded random
sampling. This module turns that file into a fixed list of trials, each a
complete, validated ``TrainConfig``, before Ray starts: a mistake in any
trial is one line naming the file and the field, not a failed worker twenty
minutes in. Each trial is then the ordinary training code path
(``rlscale.learn.train.train``) in a Ray worker (``rlscale.learn.sweep_ray``); at the
end the trials are tabulated (Markdown + CSV), the best is picked by the rule
that picks a run's best checkpoint, and exported like ``rlscale export`` does,
its card recording the sweep.

Nothing here imports Ray, torch or stable-baselines3 at module level: the
schema, the plan and the table work in the default install, and ``rlscale
sweep`` without the ``ray`` extra fails with one line that says how to get it.

A sweep directory (``sweeps/NAME``) holds:

- ``sweep.json``: the sweep file as read and the planned trials (what ``--resume`` continues);
- ``runs/<trial>/``: each trial's training run (TensorBoard ``tb/``, ``best/``, ``last/``, ``trial.json``);
- ``tune/``: Ray Tune's experiment state and results (never ``~/ray_results``);
- ``trials.md``, ``trials.csv``: every trial, best first;
- ``policy/``: the best trial exported (``policy.npz`` + ``card.json``), unless ``--out`` says elsewhere.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator

from rlscale import atomic
from rlscale.config import (
    ConfigError,
    Strict,
    TrainConfig,
    _format_validation_error,
    load_scenario,
    load_train_config,
    parse_model,
    read_yaml,
    resolve_scenario_path,
)
from rlscale.learn.trial import TRIAL_FILE, TUNE_DIR, Trial, best_evaluation, metrics_of

SELECTION_RULE = (
    "lowest validation score: cost / HPA's cost on the validation seeds, plus 100 x any SLO-violation rate "
    "or dropped fraction above HPA's (the rule that picks a training run's best checkpoint)"
)
# sections of a training config that default to the scenario's own values when the config leaves them out
SCENARIO_SECTIONS = ("reward", "randomisation")
PLAN_FILE = "sweep.json"
MAX_TRIALS = 10_000


class RandomAxis(Strict):
    """A distribution to sample one axis from (``search: random``); exactly one field is set."""

    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = Field(default=None, description="inclusive bounds")

    @model_validator(mode="after")
    def _one_distribution(self) -> "RandomAxis":
        set_ = [k for k in ("uniform", "loguniform", "randint") if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError("expected exactly one of uniform, loguniform, randint")
        lo, hi = getattr(self, set_[0])
        if not lo < hi:
            raise ValueError(f"{set_[0]}: the lower bound must be below the upper bound")
        if set_[0] == "loguniform" and lo <= 0:
            raise ValueError("loguniform: bounds must be positive")
        return self

    def sample(self, rng: np.random.Generator) -> float | int:
        if self.uniform is not None:
            return float(rng.uniform(*self.uniform))
        if self.loguniform is not None:
            lo, hi = self.loguniform
            return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        assert self.randint is not None
        return int(rng.integers(self.randint[0], self.randint[1] + 1))

    def bounds(self) -> list[float | int]:
        for name in ("uniform", "loguniform", "randint"):
            value = getattr(self, name)
            if value is not None:
                return list(value)
        return []


class SweepConfig(Strict):
    """One sweep file (``train/sweeps/NAME.yaml``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=80,
                      description="the sweep directory's name (sweeps/NAME)")
    base: str = Field(min_length=1, description="training config every trial starts from, e.g. train/ppo-web-diurnal.yaml")
    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted paths set for every trial")
    search: Literal["grid", "random"] = "grid"
    axes: dict[str, list[Any] | RandomAxis] = Field(min_length=1, description="dotted path -> values (grid, random) or a distribution (random)")
    samples: int | None = Field(default=None, ge=1, le=MAX_TRIALS, description="random search: how many trials")
    seed: int = Field(default=0, ge=0, lt=2**32, description="seed of the random search")
    metric: Literal["score"] = Field(default="score", description="the selection rule; see SELECTION_RULE")
    max_concurrent: int | None = Field(default=None, ge=1, le=256, description="trials at once (default: one per CPU)")
    export_seeds: int = Field(default=10, ge=1, le=100, description="held-out seeds of the exported card's evaluation")

    @model_validator(mode="before")
    @classmethod
    def _axes(cls, data: Any) -> Any:
        """Each axis is a list of values or one distribution; say which axis is wrong and how, not which union member failed."""
        if not isinstance(data, dict) or not isinstance(data.get("axes"), dict):
            return data
        axes: dict[str, Any] = {}
        for path, values in data["axes"].items():
            if not isinstance(path, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", path):
                raise ValueError(f"axes.{path}: expected a dotted path into the training config, e.g. reward.w_slo")
            if isinstance(values, dict):
                try:
                    values = RandomAxis.model_validate(values)
                except ValidationError as err:
                    raise ValueError(f"axes.{path}: {_format_validation_error('', err).removeprefix(': ')}") from None
            elif not isinstance(values, list):
                raise ValueError(f"axes.{path}: expected a list of values, or one of uniform, loguniform, randint: [low, high]")
            elif not values:
                raise ValueError(f"axes.{path}: expected at least one value")
            axes[path] = values
        return {**data, "axes": axes}

    @model_validator(mode="after")
    def _check(self) -> "SweepConfig":
        for path, values in self.axes.items():
            if self.search == "grid" and isinstance(values, RandomAxis):
                raise ValueError(f"axes.{path}: a distribution needs search: random (a grid takes a list of values)")
            if path in self.overrides:
                raise ValueError(f"axes.{path}: also set in overrides; set it in one place")
        if self.search == "random" and self.samples is None:
            raise ValueError("samples: search: random needs the number of trials to draw")
        if self.search == "grid" and self.samples is not None:
            raise ValueError("samples: only for search: random (a grid runs every combination once)")
        if self.search == "grid" and math.prod(len(v) for v in self.axes.values() if isinstance(v, list)) > MAX_TRIALS:
            raise ValueError(f"axes: the grid has more than {MAX_TRIALS} combinations")
        return self


# --------------------------------------------------------------------------- plan


def load_sweep(path: str | os.PathLike[str]) -> SweepConfig:
    p = Path(path)
    data = read_yaml(p, "sweep file")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of sweep settings")
    return parse_model(SweepConfig, data, str(p))


def set_path(data: dict[str, Any], path: str, value: Any, defaults: dict[str, dict[str, Any]]) -> None:
    """Set ``a.b.c`` in a nested dict; a section left out (None) starts from ``defaults`` (the scenario's)."""
    keys = path.split(".")
    node = data
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = dict(defaults.get(key, {})) if i == 0 else {}
            node[key] = child
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(keys[: i + 1])} is a value, not a section")
        node = child
    node[keys[-1]] = value


def _base_config(spec: SweepConfig, source: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    base = load_train_config(spec.base)
    data = base.model_dump()
    # trials run with another working directory (and maybe on another machine): a scenario given as a path is made absolute
    scenario_ref = str(data["scenario"])
    path = resolve_scenario_path(scenario_ref)
    if path.suffix in (".yaml", ".yml") and (scenario_ref.endswith((".yaml", ".yml")) or os.sep in scenario_ref):
        data["scenario"] = str(path.resolve())
    scenario = load_scenario(data["scenario"])
    defaults = {name: getattr(scenario, name).model_dump() for name in SCENARIO_SECTIONS}
    for key, value in spec.overrides.items():
        try:
            set_path(data, key, value, defaults)
        except ConfigError as err:
            raise ConfigError(f"{source}: overrides.{key}: {err}") from None
    return data, defaults


def _axis_values(spec: SweepConfig) -> Iterator[dict[str, Any]]:
    """The axis values of every trial, in order: the grid's combinations, or ``samples`` seeded draws."""
    names = list(spec.axes)
    if spec.search == "grid":
        for combo in itertools.product(*(spec.axes[n] for n in names)):
            yield dict(zip(names, combo))
        return
    rng = np.random.default_rng(spec.seed)
    for _ in range(spec.samples or 0):
        values: dict[str, Any] = {}
        for n in names:
            axis = spec.axes[n]
            values[n] = axis.sample(rng) if isinstance(axis, RandomAxis) else axis[int(rng.integers(len(axis)))]
        yield values


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "x".join(_format_value(v) for v in value)
    return str(value)


def trial_name(index: int, axes: dict[str, Any]) -> str:
    """``t003_seed=1_learning_rate=0.001``: unique by index, readable in TensorBoard's run list."""
    parts = [f"t{index:03d}"] + [f"{path.rsplit('.', 1)[-1]}={_format_value(v)}" for path, v in axes.items()]
    name = re.sub(r"[^A-Za-z0-9._=-]+", "-", "_".join(parts))
    return name[:120]


def compose(base: dict[str, Any], defaults: dict[str, dict[str, Any]], axes: dict[str, Any]) -> dict[str, Any]:
    data = json.loads(json.dumps(base))
    for path, value in axes.items():
        set_path(data, path, value, defaults)
    return data


def plan_trials(spec: SweepConfig, source: str) -> list[Trial]:
    """Every trial's complete training config, validated now (not in a worker after Ray has started)."""
    base, defaults = _base_config(spec, source)
    trials = []
    for index, axes in enumerate(_axis_values(spec)):
        name = trial_name(index, axes)
        try:
            data = compose(base, defaults, axes)
        except ConfigError as err:
            raise ConfigError(f"{source}: axes: {err}") from None
        try:
            cfg = TrainConfig.model_validate(data)
        except ValidationError as err:
            detail = _format_validation_error("", err).removeprefix(": ")
            raise ConfigError(f"{source}: axes give trial {name} an invalid training config: {detail}") from None
        trials.append(Trial(index, name, axes, cfg.model_dump()))
    if spec.search == "random":
        _check_random_bounds(spec, base, defaults, source)
    return trials


def _check_random_bounds(spec: SweepConfig, base: dict[str, Any], defaults: dict[str, dict[str, Any]], source: str) -> None:
    """A distribution's every value must make a valid config, not just the ones this seed happened to draw."""
    for path, axis in spec.axes.items():
        candidates = axis.bounds() if isinstance(axis, RandomAxis) else axis
        for value in candidates:
            try:
                TrainConfig.model_validate(compose(base, defaults, {path: value}))
            except ValidationError as err:
                detail = _format_validation_error("", err).removeprefix(": ")
                raise ConfigError(f"{source}: axes.{path}: value {value!r} gives an invalid training config: {detail}") from None


# --------------------------------------------------------------------------- a trial's results (read in the worker and the driver)


# --------------------------------------------------------------------------- table and selection


@dataclass
class Row:
    """One trial in the sweep's table."""

    trial: Trial
    status: str  # finished | error | interrupted | pending
    run_dir: Path
    best: dict[str, float] | None = None
    timesteps: int | None = None
    wall_s: float | None = None
    error: str = ""

    @property
    def score(self) -> float:
        if self.status != "finished" or not self.best or not math.isfinite(self.best["score"]):
            return float("inf")
        return self.best["score"]

    @property
    def slo_ok(self) -> bool | None:
        if not self.best:
            return None
        return bool(self.best["slo_violation_rate"] <= self.best["hpa_slo_violation_rate"]
                    and self.best["dropped_fraction"] <= self.best["hpa_dropped_fraction"])


def select_best(rows: list[Row]) -> Row | None:
    """The finished trial with the lowest validation score (ties: the earlier trial)."""
    finished = [r for r in rows if r.status == "finished" and math.isfinite(r.score)]
    return min(finished, key=lambda r: (r.score, r.trial.index)) if finished else None


def ordered(rows: list[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: (r.score, r.trial.index))


TABLE_METRICS = ("score", "cost_vs_hpa", "slo_violation_rate", "hpa_slo_violation_rate", "dropped_fraction", "hpa_dropped_fraction")


def _cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and column in TABLE_METRICS:
        return f"{value:.4f}" if math.isfinite(value) else ""
    if column == "wall_s":
        return f"{value:.0f}"
    return _format_value(value)


def table_records(rows: list[Row], axes: list[str]) -> list[dict[str, Any]]:
    records = []
    for rank, row in enumerate(ordered(rows), start=1):
        rec: dict[str, Any] = {"rank": rank if row.status == "finished" else None, "trial": row.trial.name}
        rec.update({a: row.trial.axes.get(a) for a in axes})
        rec["status"] = row.status
        rec["timesteps"] = row.timesteps
        for m in TABLE_METRICS:
            rec[m] = row.best[m] if row.best else None
        rec["slo_ok"] = row.slo_ok
        rec["wall_s"] = row.wall_s
        rec["error"] = row.error
        rec["run_dir"] = str(row.run_dir)
        records.append(rec)
    return records


def write_tables(sweep_dir: Path, rows: list[Row], axes: list[str], best: Row | None) -> tuple[Path, Path]:
    """``trials.csv`` (machine-readable, full precision) and ``trials.md`` (the same, best first, for reading)."""
    records = table_records(rows, axes)
    columns = list(records[0]) if records else ["trial"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow({k: (json.dumps(v) if isinstance(v, (list, dict)) else ("" if v is None else v)) for k, v in rec.items()})
    csv_path, md_path = sweep_dir / "trials.csv", sweep_dir / "trials.md"
    atomic.write_text(csv_path, buf.getvalue())
    shown = [c for c in columns if c not in ("run_dir", "error")]
    lines = [
        f"# Sweep {sweep_dir.name}: {len(rows)} trials",
        "",
        f"Selection: {SELECTION_RULE}. `slo_ok`: SLO violations and drops no higher than HPA's on the same validation seeds.",
        f"Best: **{best.trial.name}** (score {best.score:.4f})." if best else "Best: none (no trial finished).",
        "",
        "| " + " | ".join(shown) + " |",
        "|" + "|".join("---:" if c not in ("trial", "status") else "---" for c in shown) + "|",
    ]
    for rec in records:
        lines.append("| " + " | ".join(_cell(c, rec[c]) for c in shown) + " |")
    failed = [r for r in records if r["error"]]
    if failed:
        lines += ["", "Errors:", ""] + [f"- {r['trial']}: {r['error']}" for r in failed]
    lines += ["", f"Runs (TensorBoard): `tensorboard --logdir {sweep_dir / 'runs'}`", ""]
    atomic.write_text(md_path, "\n".join(lines))
    return md_path, csv_path


# --------------------------------------------------------------------------- the sweep


@dataclass
class SweepOutcome:
    sweep_dir: Path
    rows: list[Row]
    best: Row | None
    interrupted: bool
    wall_s: float
    tables: tuple[Path, Path] | None = None
    export_dir: Path | None = None
    card: dict[str, Any] | None = None
    ray: dict[str, Any] = field(default_factory=dict)


def _plan_document(spec: SweepConfig, source: str, trials: list[Trial]) -> dict[str, Any]:
    return {"source": source, "sweep": spec.model_dump(mode="json"), "selection": SELECTION_RULE,
            "trials": [t.to_dict() for t in trials]}


def prepare_sweep_dir(sweep_dir: Path, plan: dict[str, Any], *, resume: bool) -> None:
    """A new sweep refuses to start over an old one; ``--resume`` refuses a sweep file that changed since."""
    plan_path = sweep_dir / PLAN_FILE
    if resume:
        if not plan_path.is_file() or not (sweep_dir / TUNE_DIR).is_dir():
            raise ConfigError(f"{sweep_dir}: no sweep to resume here (expected {PLAN_FILE} and {TUNE_DIR}/); start it without --resume")
        try:
            old = json.loads(plan_path.read_text())
        except ValueError:
            raise ConfigError(f"{plan_path}: not valid JSON; cannot resume this sweep") from None
        if old.get("trials") != json.loads(json.dumps(plan["trials"])):
            raise ConfigError(f"{plan['source']}: differs from the sweep started in {sweep_dir} (its trials changed); "
                              "resume with the file it started from, or give the sweep a new name")
        return
    if (sweep_dir / TUNE_DIR).exists() or (sweep_dir / "runs").exists():
        raise ConfigError(f"{sweep_dir}: holds a sweep already; continue it with --resume, or give the sweep another name")
    # a sweep stopped before Tune started has only its plan: starting again simply replaces it
    atomic.write_json(plan_path, plan)


def collect_rows(sweep_dir: Path, trials: list[Trial], tune_status: dict[int, tuple[str, str]]) -> list[Row]:
    """One row per planned trial, from its ``trial.json`` (written when its training finished) and Tune's status."""
    rows = []
    for trial in trials:
        run_dir = sweep_dir / "runs" / trial.name
        status, error = tune_status.get(trial.index, ("pending", ""))
        row = Row(trial, status, run_dir, error=error)
        try:
            summary = json.loads((run_dir / TRIAL_FILE).read_text())
        except (OSError, ValueError):
            summary = None
        if summary is not None:
            row.status, row.error = "finished", ""
            row.best, row.timesteps, row.wall_s = summary.get("best"), summary.get("timesteps"), summary.get("wall_s")
        elif status == "finished":  # Tune saw it end but its summary is missing: do not rank it
            row.status = "error"
            row.error = row.error or f"no {TRIAL_FILE} in its run directory"
        else:
            best = best_evaluation(run_dir)
            row.best = metrics_of(best) if best else None  # partial: shown, never selected
        rows.append(row)
    return rows


def _ray_environment(local: bool) -> None:
    """Environment Ray reads when it is imported and started; must be set before ``import ray``.

    - No usage statistics are sent; Tune prints nothing (``Progress`` prints one line per event instead).
    - A local Ray is a single-node cluster: Ray then takes loopback as the node's address, so every
      server it starts (GCS, raylet, workers, agents) binds 127.0.0.1 instead of the machine's
      network address (``_node_ip_address`` alone is turned back into that address by Ray).
    - Token authentication with a token that lives only in this process's environment (Ray's own
      default writes a token file to ``~/.ray``).
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # Tune's newer console output prints a banner even when told to be silent
    if local:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        if "RAY_AUTH_MODE" not in os.environ:
            import secrets

            os.environ["RAY_AUTH_MODE"] = "token"
            os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))


def _sigterm_as_sigint() -> Any:
    """SIGTERM stops a sweep the way Ctrl-C does: Tune saves its state, Ray is shut down, and ``--resume`` continues."""
    from rlscale.learn.train import sigterm_as_interrupt

    return sigterm_as_interrupt(lambda signum, frame: signal.raise_signal(signal.SIGINT))


def run_sweep(
    config: str | os.PathLike[str],
    *,
    address: str | None = None,
    max_concurrent: int | None = None,
    resume: bool = False,
    logdir: str | os.PathLike[str] = "sweeps",
    out: str | os.PathLike[str] | None = None,
    force: bool = False,
    command: str = "",
    echo: Callable[[str], None] = print,
) -> SweepOutcome:
    """Run (or ``resume``) a sweep; Ctrl-C or SIGTERM stops it with every trial's last evaluation kept.

    ``address``: None starts a private Ray on this machine, bound to loopback, shut down on return;
    ``auto`` or ``ray://HOST:PORT`` joins an existing cluster (which must see the same sweep directory).
    """
    started = time.monotonic()
    source = str(config)
    spec = load_sweep(config)
    trials = plan_trials(spec, source)
    sweep_dir = (Path(logdir) / spec.name).resolve()
    plan = _plan_document(spec, source, trials)
    prepare_sweep_dir(sweep_dir, plan, resume=resume)
    export_dir = Path(out) if out else sweep_dir / "policy"
    if out:  # fail before hours of training, not after, when --out would replace a policy
        from rlscale.learn.export import check_target

        check_target(export_dir, force=force)
    concurrency = max_concurrent or spec.max_concurrent or (None if address else max(1, os.cpu_count() or 1))
    echo(f"sweep {spec.name}: {len(trials)} trials ({spec.search}), at most {concurrency or 'one per CPU'} at once; "
         f"results in {sweep_dir}")

    local = address is None
    _ray_environment(local)
    try:
        from rlscale.learn import sweep_ray
    except ImportError as err:
        raise ConfigError(f"rlscale sweep needs Ray Tune ({err.name or 'ray'} is missing): pip install 'rlscale[ray]'") from None

    fit_started = time.monotonic()
    info: dict[str, Any] = {}
    try:
        # the SIGTERM handler goes in after ray.init, which installs its own (an exit with a traceback)
        with sweep_ray.ray_session(address, echo=echo) as info, _sigterm_as_sigint():
            statuses, interrupted = sweep_ray.fit(
                sweep_dir, trials, max_concurrent=concurrency, resume=resume, command=command, echo=echo,
            )
    except KeyboardInterrupt:  # Ctrl-C while Ray was starting or stopping (Tune handles it while trials run)
        statuses, interrupted = {}, True
    info["trials_s"] = round(time.monotonic() - fit_started, 2)  # Ray's start and shutdown included
    rows = collect_rows(sweep_dir, trials, statuses)
    best = select_best(rows)
    outcome = SweepOutcome(sweep_dir, rows, best, interrupted, 0.0, ray=info)
    outcome.tables = write_tables(sweep_dir, rows, list(spec.axes), best)
    if not interrupted and best is not None:
        from rlscale.learn.export import export_run

        outcome.export_dir = export_dir
        # the sweep's own policy/ is the sweep's to replace (a resumed sweep exports again); --out needs --force
        outcome.card = export_run(best.run_dir, export_dir, seeds=spec.export_seeds, force=force or not out,
                                  card_extra={"sweep": atomic.finite(_sweep_record(spec, source, sweep_dir, rows, best, command))})
    outcome.wall_s = time.monotonic() - started
    return outcome


def _sweep_record(spec: SweepConfig, source: str, sweep_dir: Path, rows: list[Row], best: Row, command: str) -> dict[str, Any]:
    """What the exported card says about the sweep the policy won."""
    return {
        "name": spec.name,
        "file": source,
        "command": command,
        "directory": str(sweep_dir),
        "search": spec.search,
        "axes": {k: (v.model_dump(exclude_none=True) if isinstance(v, RandomAxis) else v) for k, v in spec.axes.items()},
        "trials": len(rows),
        "finished": sum(r.status == "finished" for r in rows),
        "selection": SELECTION_RULE,
        "winner": {"trial": best.trial.name, "axes": best.trial.axes, "validation": best.best, "run_dir": str(best.run_dir)},
        "table": str(sweep_dir / "trials.csv"),
    }


