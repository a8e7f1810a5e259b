"""The Ray half of ``rlscale sweep``: a Ray session, the trial (``rlscale train`` in a worker), and Tune.

Imported only by ``rlscale.learn.sweep.run_sweep`` after it has set the
environment Ray reads at import (``_ray_environment``), and by Ray's workers
to unpickle the trial function. Serving and the default install never import it.

Each trial is one ``rlscale.learn.train.train`` call in a worker that holds 1 CPU
and runs torch on 1 thread: the simulator and PPO's updates alternate in that
one thread, so a trial uses one core and K trials use K. A trial reports to
Tune after every validation evaluation, and saves ``last/`` there too, so a
sweep stopped by Ctrl-C loses at most ``eval.freq`` steps per running trial:
``--resume`` restarts the unfinished trials from their ``last/`` checkpoints.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from ray import tune

from rlscale import atomic
from rlscale.config import ConfigError, TrainConfig
from rlscale.learn.trial import TRIAL_FILE, TUNE_DIR, Trial, metrics_of, trial_summary

OBJECT_STORE_BYTES = 128 * 1024 * 1024  # trials pass configs and metrics, never arrays: Ray's default is 30% of RAM
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class TrialInterrupted(RuntimeError):
    """Training stopped before its last step (the sweep is being stopped); ``--resume`` continues it."""


# --------------------------------------------------------------------------- Ray


@contextmanager
def ray_session(address: str | None, *, echo: Callable[[str], None] = print) -> Iterator[dict[str, Any]]:
    """Start a private local Ray (``address`` None) or join a cluster; always ``ray.shutdown()`` on the way out.

    The local Ray keeps its sockets, logs and spill files in a fresh folder under
    the system temp dir (short enough for Unix socket paths, never under ``~``),
    removed after shutdown; it binds loopback only, and is refused if it did not.
    """
    info: dict[str, Any] = {"mode": "local" if address is None else "cluster", "address": address}
    temp: Path | None = None
    started = time.monotonic()
    try:
        if address is None:
            temp = Path(tempfile.mkdtemp(prefix="rlscale-ray-"))
            try:
                ray.init(
                    num_cpus=os.cpu_count() or 1,
                    include_dashboard=False,
                    _node_ip_address="127.0.0.1",
                    _temp_dir=str(temp),
                    object_store_memory=OBJECT_STORE_BYTES,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                    namespace="rlscale-sweep",
                )
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise ConfigError(f"could not start a local Ray: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}") from None
            node_ip = ray.util.get_node_ip_address()
            if node_ip not in LOOPBACK:
                raise ConfigError(f"local Ray took the network address {node_ip}, not loopback; refusing to run "
                                  "(was ray imported before rlscale sweep set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0?)")
        else:
            try:
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, namespace="rlscale-sweep")
            except (ConnectionError, RuntimeError, ValueError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ConfigError(f"--address {address}: cannot connect to a Ray cluster ({first})") from None
        info["startup_s"] = round(time.monotonic() - started, 2)
        info["cpus"] = ray.cluster_resources().get("CPU", 0)
        info["temp_dir"] = str(temp) if temp else None
        echo(f"ray: {info['mode']} ({'127.0.0.1 only' if address is None else address}), {info['cpus']:.0f} CPUs, "
             f"ready in {info['startup_s']:.1f} s")
        yield info
    finally:
        ray.shutdown()
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


# --------------------------------------------------------------------------- the trial (runs in a Ray worker)


def _prepare_run_dir(run_dir: Path) -> Path | None:
    """The checkpoint to resume from, or None after clearing what an attempt left before its first evaluation."""
    last = run_dir / "last"
    if (last / "state.json").is_file() and (last / "model.zip").is_file():
        return last
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return None


def run_trial(config: dict[str, Any]) -> None:
    """One trial: ``rlscale train`` with the trial's config, reporting each validation evaluation to Tune."""
    import torch

    from rlscale.learn.train import save_checkpoint, train

    torch.set_num_threads(1)
    try:
        import numba

        numba.set_num_threads(1)  # the simulator's parallel kernel (large batches) stays on the trial's one CPU
    except (ImportError, ValueError):
        pass
    trial = config["trial"]
    cfg = TrainConfig.model_validate(trial["config"])
    run_dir = Path(config["sweep_dir"]) / "runs" / trial["name"]
    resume = _prepare_run_dir(run_dir)

    def on_evaluation(callback: Any, entry: dict[str, Any]) -> None:
        model = callback.model
        env = model.get_env()
        save_checkpoint(run_dir / "last", model, env,
                        {"best_score": callback.best_score, "last_eval": callback.last_eval, **callback.run_meta})
        tune.report({**metrics_of(entry), "best_score": float(callback.best_score), "finished": 0})

    outcome = train(cfg, run_dir, resume=resume, progress_bar=False,
                    command=f"{config.get('command', '')} (trial {trial['name']})".strip(),
                    on_evaluation=on_evaluation)
    if outcome.interrupted:
        raise TrialInterrupted(f"{trial['name']}: training interrupted at {outcome.timesteps} steps")
    summary = trial_summary(trial, run_dir, outcome.timesteps, outcome.wall_s)
    atomic.write_json(run_dir / TRIAL_FILE, summary)
    best = summary["best"] or {}
    tune.report({**best, "timesteps": float(outcome.timesteps), "best_score": float(outcome.best_score), "finished": 1})


def trial_label(trial: Any) -> str:
    return str(trial.config["trial"]["name"])


TRAINABLE = tune.with_resources(run_trial, {"cpu": 1})


# --------------------------------------------------------------------------- progress (runs in the driver)


class Progress(tune.Callback):
    """One line per evaluation, finish or failure: a sweep takes hours, and Tune is told to be silent."""

    def __init__(self, total: int, timesteps: dict[str, int]) -> None:
        self.total = total
        self.timesteps = timesteps
        self.started = time.monotonic()

    def setup(self, **info: Any) -> None:
        self.started = time.monotonic()  # a resumed sweep restores this callback from Tune's pickled state

    def _counts(self, trials: list[Any]) -> str:
        done = sum(t.status == "TERMINATED" for t in trials)
        running = sum(t.status == "RUNNING" for t in trials)
        failed = sum(t.status == "ERROR" for t in trials)
        return f"[{done}/{self.total} done, {running} running{f', {failed} failed' if failed else ''}, {time.monotonic() - self.started:.0f} s]"

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any) -> None:
        name = trial_label(trial)
        if result.get("finished"):
            return
        total = self.timesteps.get(name, 0)
        print(f"{self._counts(trials)} {name}: {int(result.get('timesteps', 0)):,}/{total:,} steps, "
              f"validation score {result.get('score', float('nan')):.3f} (cost vs HPA {result.get('cost_vs_hpa', float('nan')):.3f}), "
              f"best {result.get('best_score', float('nan')):.3f}", flush=True)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        print(f"{self._counts(trials)} {trial_label(trial)}: finished, best validation score "
              f"{result.get('best_score', float('nan')):.3f}", flush=True)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        print(f"{self._counts(trials)} {trial_label(trial)}: failed (details in {trial.path}/error.txt)", flush=True)


# --------------------------------------------------------------------------- Tune


def _status(result: Any) -> tuple[int, tuple[str, str]]:
    index = int(result.config["trial"]["index"])
    if result.error is not None:
        text = str(result.error).strip().splitlines()
        reason = next((line.strip() for line in reversed(text) if line.strip()), type(result.error).__name__)
        if "TrialInterrupted" in reason or "KeyboardInterrupt" in reason:
            return index, ("interrupted", "")
        return index, ("error", reason[:300])
    metrics = result.metrics or {}
    if metrics.get("finished"):
        return index, ("finished", "")
    return index, ("interrupted" if metrics else "pending", "")


def fit(
    sweep_dir: Path,
    trials: list[Trial],
    *,
    max_concurrent: int | None,
    resume: bool,
    command: str,
    echo: Callable[[str], None] = print,
) -> tuple[dict[int, tuple[str, str]], bool]:
    """Run the trials under Tune (or restore the interrupted experiment); returns each trial's status and
    whether the sweep was interrupted."""
    tune_path = sweep_dir / TUNE_DIR
    if resume:
        if not tune.Tuner.can_restore(str(tune_path)):
            raise ConfigError(f"{tune_path}: no Tune experiment to resume; start the sweep again without --resume")
        echo(f"resuming: finished trials are kept, unfinished ones continue from their last evaluation "
             f"(concurrency as the sweep started{'; --max-concurrent is not applied on resume' if max_concurrent else ''})")
        tuner = tune.Tuner.restore(str(tune_path), trainable=TRAINABLE, resume_unfinished=True, resume_errored=True)
    else:
        timesteps = {t.name: int(t.config["n_timesteps"]) for t in trials}
        tuner = tune.Tuner(
            TRAINABLE,
            param_space={
                "trial": tune.grid_search([t.to_dict() for t in trials]),
                "sweep_dir": str(sweep_dir),
                "command": command,
            },
            tune_config=tune.TuneConfig(
                metric="best_score", mode="min", num_samples=1, max_concurrent_trials=max_concurrent,
                reuse_actors=True,  # a worker that has imported torch and stable-baselines3 runs the next trial too
                trial_name_creator=trial_label, trial_dirname_creator=trial_label,
            ),
            run_config=tune.RunConfig(
                name=TUNE_DIR, storage_path=str(sweep_dir), verbose=0,
                callbacks=[Progress(len(trials), timesteps)],
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
    interrupted = False
    # Tune's own warnings on Ctrl-C name a Python call to resume with; the CLI prints the rlscale command instead
    logging.getLogger("ray.tune").setLevel(logging.ERROR)
    try:
        grid = tuner.fit()
    except KeyboardInterrupt:  # a second Ctrl-C: Tune skipped its last save, the trials keep their last/ checkpoints
        interrupted = True
        grid = None
    statuses: dict[int, tuple[str, str]] = {}
    if grid is not None:
        for result in grid:
            index, status = _status(result)
            statuses[index] = status
    interrupted = interrupted or len(statuses) < len(trials) or any(
        status in ("interrupted", "pending") for status, _ in statuses.values())
    return statuses, interrupted
