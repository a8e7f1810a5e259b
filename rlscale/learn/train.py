"""PPO training with stable-baselines3 on the batched simulator.

A run directory holds everything a run needs to be watched, resumed and
exported: TensorBoard events (``tb/``), the latest checkpoint (``last/``), the
best checkpoint by held-out evaluation (``best/``), and ``run.json``. Held-out
evaluation runs the exported numpy policy (``rlscale.policies.ppo``) through
``rlscale.rollout``, so the number that picks the best model is the number a
served policy would reach.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import HParam, configure
from stable_baselines3.common.vec_env import VecNormalize

from rlscale.atomic import staged_dir
from rlscale.config import ConfigError, Scenario, TrainConfig, load_scenario
from rlscale.policies.hpa import HPAPolicy
from rlscale.policies.ppo import PPOPolicy
from rlscale.policies.network import ExportedPolicy, PolicyWeights
from rlscale.rollout import Rollout, run_policy
from rlscale.learn.sb3_env import SB3ClusterVecEnv
from rlscale.spaces import ActionSpec, ObsSpec

CHECKPOINT_FILES = ("model.zip", "vecnormalize.pkl", "state.json")
# what a run directory holds; a new run refuses to start over any of these unless told to replace them
RUN_CONTENTS = ("config.json", "last", "best", "tb", "evaluations.jsonl")
SCORE_MEANING = "held-out cost / HPA's, plus 100 x any extra SLO-violation rate or drops; lower is better"


def training_scenario(cfg: TrainConfig) -> Scenario:
    """The scenario as trained on: the file's, with the training config's overrides.

    Reward weights are a training choice (where on the cost/SLO trade-off the
    policy lands), so a config may move them without forking the scenario.
    """
    sc = load_scenario(cfg.scenario)
    updates = {k: v for k, v in (("randomisation", cfg.randomisation), ("reward", cfg.reward)) if v is not None}
    return sc.model_copy(update=updates) if updates else sc


def learning_rate(value: float | str) -> float | Callable[[float], float]:
    if isinstance(value, str):
        start = float(value[4:])
        return lambda progress_remaining: progress_remaining * start
    return float(value)


def make_env(cfg: TrainConfig, scenario: Scenario) -> VecNormalize:
    env: Any
    if cfg.general is not None:
        from rlscale.learn.general_env import GeneralVecEnv

        engines = cfg.general.engines
        if cfg.n_envs % engines:
            raise ConfigError(f"n_envs ({cfg.n_envs}): expected a multiple of general.engines ({engines})")
        env = GeneralVecEnv(cfg.general, engines, cfg.n_envs // engines, seed=cfg.seed * 1000)
    else:
        env = SB3ClusterVecEnv(
            scenario, cfg.n_envs, episode_steps=cfg.episode_steps, randomise=cfg.randomise, seed=cfg.seed * 1000
        )
    n = cfg.normalize
    return VecNormalize(
        env, norm_obs=n.norm_obs, norm_reward=n.norm_reward, clip_obs=n.clip_obs, gamma=n.gamma or cfg.gamma
    )


def make_model(cfg: TrainConfig, env: VecNormalize) -> PPO:
    # torch.distributions checks its arguments on every categorical it builds (each sample, each log-prob):
    # with the MultiDiscrete action that is ~15% of PPO's CPU time, spent re-checking logits our own network
    # produced. Off, the numbers are the same; NaN logits still fail, in torch.multinomial.
    torch.distributions.Distribution.set_default_validate_args(False)
    activation = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[cfg.policy_kwargs.activation_fn]
    model = PPO(
        cfg.policy,
        env,
        learning_rate=learning_rate(cfg.learning_rate),
        n_steps=cfg.n_steps,
        batch_size=cfg.batch_size,
        n_epochs=cfg.n_epochs,
        gamma=cfg.gamma,
        gae_lambda=cfg.gae_lambda,
        ent_coef=cfg.ent_coef,
        vf_coef=cfg.vf_coef,
        clip_range=cfg.clip_range,
        max_grad_norm=cfg.max_grad_norm,
        policy_kwargs={"net_arch": list(cfg.policy_kwargs.net_arch), "activation_fn": activation},
        seed=cfg.seed,
        device="cpu",
        verbose=0,
    )
    if cfg.general is not None:
        from rlscale.learn.general_env import start_at_rule

        start_at_rule(model, cfg.general.start_level, history=cfg.general.history_days > 0,
                      preference=cfg.general.start_preference)
    return model


def weights_from_sb3(model: PPO, env: VecNormalize) -> PolicyWeights:
    """The policy half of an SB3 MlpPolicy and its VecNormalize statistics, as plain arrays."""
    linear = [m for m in model.policy.mlp_extractor.policy_net if isinstance(m, torch.nn.Linear)]
    acts = {type(m) for m in model.policy.mlp_extractor.policy_net if not isinstance(m, torch.nn.Linear)}
    activation = "relu" if torch.nn.ReLU in acts else "tanh"
    size = model.observation_space.shape[0]
    if env.norm_obs:
        mean, var = env.obs_rms.mean.astype(np.float64), env.obs_rms.var.astype(np.float64)
    else:
        mean, var = np.zeros(size), np.ones(size)
    return PolicyWeights(
        layers=tuple((m.weight.detach().cpu().numpy().copy(), m.bias.detach().cpu().numpy().copy()) for m in linear),
        action_w=model.policy.action_net.weight.detach().cpu().numpy().copy(),
        action_b=model.policy.action_net.bias.detach().cpu().numpy().copy(),
        obs_mean=mean,
        obs_var=var,
        obs_clip=float(env.clip_obs) if env.norm_obs else float("inf"),
        obs_eps=float(env.epsilon) if env.norm_obs else 0.0,
        activation=activation,
    )


def exported_from(weights: PolicyWeights, scenario: Scenario, card: dict[str, Any]) -> ExportedPolicy:
    return ExportedPolicy(weights, card, ObsSpec.from_scenario(scenario), ActionSpec.from_scenario(scenario))


def eval_seeds(cfg: TrainConfig, count: int | None = None) -> list[int]:
    return [cfg.eval.seed_base + i for i in range(count or cfg.eval.seeds)]


@dataclass
class EvalResult:
    """Held-out evaluation of one policy against HPA on the same seeds."""

    policy: Rollout
    hpa: Rollout

    @property
    def cost_vs_hpa(self) -> float:
        return float(self.policy.episodes["cost_usd"].mean() / self.hpa.episodes["cost_usd"].mean())

    @property
    def score(self) -> float:
        """Lower is better: cost relative to HPA, with any SLO loss against HPA priced heavily."""
        extra_slo = self.policy.episodes["slo_violation_rate"].mean() - self.hpa.episodes["slo_violation_rate"].mean()
        extra_drop = self.policy.episodes["dropped_fraction"].mean() - self.hpa.episodes["dropped_fraction"].mean()
        return self.cost_vs_hpa + 100.0 * max(0.0, extra_slo) + 100.0 * max(0.0, extra_drop)

    def summary(self) -> dict[str, Any]:
        return {
            "seeds": self.policy.seeds,
            "ppo": self.policy.mean(),
            "hpa": self.hpa.mean(),
            "cost_vs_hpa": self.cost_vs_hpa,
        }


def evaluate_weights(
    weights: PolicyWeights, scenario: Scenario, seeds: list[int], steps: int | None, hpa: Rollout | None = None
) -> EvalResult:
    policy = PPOPolicy(exported_from(weights, scenario, {}), name="ppo")
    ppo_run = run_policy(scenario, policy, seeds, steps=steps)
    hpa_run = hpa if hpa is not None else run_policy(scenario, HPAPolicy(scenario), seeds, steps=steps)
    return EvalResult(ppo_run, hpa_run)


# --------------------------------------------------------------------------- checkpoints


def _rngs(env: VecNormalize) -> list[np.random.Generator]:
    """The training env's generators (its whole random state): the specialist's engine's, or the generalist's slots'."""
    venv: Any = env.venv
    return venv.rngs if hasattr(venv, "rngs") else venv.engine.rngs


def save_checkpoint(target: Path, model: PPO, env: VecNormalize, extra: dict[str, Any]) -> None:
    with staged_dir(target) as tmp:
        model.save(tmp / "model.zip")
        env.save(str(tmp / "vecnormalize.pkl"))
        state = {
            "num_timesteps": int(model.num_timesteps),
            "rng_states": [rng.bit_generator.state for rng in _rngs(env)],
            **({"env_state": env.venv.state_dict()} if hasattr(env.venv, "state_dict") else {}),
            **extra,
        }
        (tmp / "state.json").write_text(json.dumps(state, default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(type(obj))


def load_checkpoint(path: Path, cfg: TrainConfig, scenario: Scenario) -> tuple[PPO, VecNormalize, dict[str, Any]]:
    path = Path(path)
    if path.is_dir() and (path / "last").is_dir():
        path = path / "last"
    for f in CHECKPOINT_FILES:
        if not (path / f).is_file():
            raise ConfigError(f"{path}: not a checkpoint (missing {f})")
    base = make_env(cfg, scenario)
    env = VecNormalize.load(str(path / "vecnormalize.pkl"), base.venv)
    state = json.loads((path / "state.json").read_text())
    model = PPO.load(path / "model.zip", env=env, device="cpu")
    for rng, s in zip(_rngs(env), state["rng_states"]):
        rng.bit_generator.state = s
    if "env_state" in state:
        env.venv.load_state_dict(state["env_state"])  # type: ignore[attr-defined]
    return model, env, state


# --------------------------------------------------------------------------- callback


class HeldOutEvalCallback(BaseCallback):
    """Evaluates on held-out seeds, logs ``eval/*`` to TensorBoard, keeps the best model by score."""

    def __init__(self, cfg: TrainConfig, scenario: Scenario, run_dir: Path, run_meta: dict[str, Any],
                 best_score: float = float("inf"), last_eval: int = 0,
                 on_evaluation: Callable[[HeldOutEvalCallback, dict[str, Any]], None] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.on_evaluation = on_evaluation
        self.scenario = scenario
        self.run_dir = run_dir
        self.run_meta = run_meta
        self.seeds = eval_seeds(cfg)
        self.steps = cfg.eval.episode_steps
        self.best_score = best_score
        self.last_eval = last_eval
        self.hpa: Rollout | None = None
        self.history: list[dict[str, Any]] = []
        self.first_below_0_8: float | None = None
        self.started = time.monotonic()

    def _on_training_start(self) -> None:
        hparams = {k: v for k, v in self.cfg.model_dump().items() if isinstance(v, (int, float, str, bool))}
        hparams["net_arch"] = str(self.cfg.policy_kwargs.net_arch)
        metrics = {"eval/cost_vs_hpa": 0.0, "eval/slo_violation_rate": 0.0, "eval/cost_usd": 0.0}
        self.logger.record("hparams", HParam(hparams, metrics), exclude=("stdout", "log", "json", "csv"))

    def _on_rollout_end(self) -> None:
        venv: Any = self.training_env.venv  # type: ignore[attr-defined]
        if getattr(getattr(venv, "spec", None), "constraint", None) is not None:
            self.logger.record("train/w_slo", float(venv.multipliers[0]))
            self.logger.record("train/w_drop", float(venv.multipliers[1]))

    def _on_step(self) -> bool:
        if self.num_timesteps - self.last_eval >= self.cfg.eval.freq:
            self.last_eval = self.num_timesteps
            self.evaluate()
        return True

    def evaluate(self) -> EvalResult:
        env = self.model.get_env()
        assert isinstance(env, VecNormalize)
        weights = weights_from_sb3(self.model, env)  # type: ignore[arg-type]
        result: Any
        if self.cfg.general is not None:
            from rlscale.learn.general_eval import evaluate_general

            result = evaluate_general(weights, self.cfg.general, self.seeds, self.steps)
        else:
            result = evaluate_weights(weights, self.scenario, self.seeds, self.steps, self.hpa)
            self.hpa = result.hpa
        mean = result.policy.mean()
        for key in ("cost_usd", "slo_violation_rate", "dropped_fraction", "utilisation", "episode_reward"):
            self.logger.record(f"eval/{key}", mean[key])
        self.logger.record("eval/cost_vs_hpa", result.cost_vs_hpa)
        self.logger.record("eval/hpa_cost_usd", result.hpa.mean()["cost_usd"])
        self.logger.record("eval/hpa_slo_violation_rate", result.hpa.mean()["slo_violation_rate"])
        self.logger.record("eval/score", result.score)
        elapsed = time.monotonic() - self.started
        if self.first_below_0_8 is None and result.cost_vs_hpa < 0.8 and result.score < 0.8:
            self.first_below_0_8 = elapsed
        self.logger.dump(self.num_timesteps)
        entry = {"timesteps": int(self.num_timesteps), "wall_s": elapsed, "score": result.score, **result.summary()}
        self.history.append(entry)
        if result.score < self.best_score:
            self.best_score = result.score
            save_checkpoint(self.run_dir / "best", self.model, env, {"evaluation": entry, **self.run_meta})
        if self.on_evaluation is not None:
            self.on_evaluation(self, entry)
        return result


class PlainProgress(BaseCallback):
    """Progress as plain lines, for output that is not a terminal (a file, a pipe, a CI log).

    A progress bar redraws one line in place, which a file only receives at the
    end; a line per 5% (or per minute, whichever comes first) shows a training
    run's progress while it happens.
    """

    def __init__(self, total: int, out: Any = None, every_s: float = 60.0) -> None:
        super().__init__()
        self.total = max(1, int(total))
        self.out = out
        self.every_s = every_s
        self.started = time.monotonic()
        self.start_steps = 0
        self.last_line = -1.0
        self.last_fraction = -1.0

    def _on_training_start(self) -> None:
        self.started = time.monotonic()
        self.start_steps = int(self.num_timesteps)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        done = int(self.num_timesteps)
        fraction = done / self.total
        now = time.monotonic()
        if fraction - self.last_fraction >= 0.05 or now - self.last_line >= self.every_s or self.last_line < 0:
            self.last_line, self.last_fraction = now, fraction
            elapsed = now - self.started
            rate = (done - self.start_steps) / max(elapsed, 1e-9)
            print(f"step {done:,} / {self.total:,} ({fraction:.0%}), {rate:,.0f} env steps/s, {elapsed:.0f} s",
                  file=self.out or sys.stdout, flush=True)


class BarProgress(BaseCallback):
    """A progress bar over the run's whole ``n_timesteps``, starting where a resumed run stands.

    SB3's own bar counts only the steps of this ``learn`` call, so a resumed
    run showed ``16,192/2,770,560`` where it stood at 229k; and it stays open
    when Ctrl-C interrupts ``learn``, redrawing itself once more after the
    interrupt message. ``close`` is called before that message is printed.
    """

    def __init__(self, total: int) -> None:
        super().__init__()
        self.total = max(1, int(total))
        self.bar: Any = None

    def _on_training_start(self) -> None:
        from tqdm import tqdm

        with signals_deferred() as caught:  # a Ctrl-C inside the first draw would leave a bar nobody can close
            self.bar = tqdm(total=self.total, initial=int(self.num_timesteps), unit="step", dynamic_ncols=True,
                            bar_format="{percentage:3.0f}%|{bar}| {n:,}/{total:,} steps [{elapsed}<{remaining}, {rate_fmt}]")
        if caught:
            raise KeyboardInterrupt

    def _on_step(self) -> bool:
        if self.bar is not None:
            self.bar.update(int(self.num_timesteps) - self.bar.n)
        return True

    def _on_training_end(self) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_interrupt(handler: Callable[[int, Any], None] = _raise_interrupt) -> Iterator[None]:
    """SIGTERM (``kill``, a job scheduler, ``docker stop``) stops training the way Ctrl-C does.

    Inside the block SIGTERM raises KeyboardInterrupt (or calls ``handler``), which
    ``train`` turns into a saved ``last/`` checkpoint; the previous handler is
    restored on exit. Only the main thread can install handlers; elsewhere this
    does nothing.
    """
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def signals_deferred() -> Iterator[list[int]]:
    """Hold SIGINT and SIGTERM while the final checkpoint is written (the run ends right after anyway).

    A second Ctrl-C or SIGTERM while ``last/`` is being saved would otherwise
    leave the run without the checkpoint the first one asked for.
    """
    caught: list[int] = []
    try:
        previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield caught
        return
    try:
        yield caught
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def check_run_dir(run_dir: Path, *, overwrite: bool) -> None:
    """Refuse to start a new run over an existing one, or (``overwrite``) clear the old run's files.

    Training into a directory that holds a run would replace its ``last/`` and
    ``best/`` checkpoints and pile new TensorBoard events onto the old ones.
    """
    found = [name for name in RUN_CONTENTS if (run_dir / name).exists()]
    if not found:
        return
    if not overwrite:
        raise ConfigError(
            f"{run_dir}: holds a training run ({', '.join(found)}); continue it with --resume {run_dir}, "
            "replace it with --overwrite, or pick another --name"
        )
    for name in found:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def write_custom_scalars(tb_dir: Path) -> None:
    """A TensorBoard layout that puts cost and SLO side by side."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tb_dir)) as w:
        w.add_custom_scalars(
            {
                "rlscale": {
                    "cost vs SLO": ["Multiline", ["eval/cost_usd", "eval/hpa_cost_usd"]],
                    "SLO violations": ["Multiline", ["eval/slo_violation_rate", "eval/hpa_slo_violation_rate"]],
                    "cost / HPA cost": ["Multiline", ["eval/cost_vs_hpa"]],
                    "dropped and utilisation": ["Multiline", ["eval/dropped_fraction", "eval/utilisation"]],
                }
            }
        )


# --------------------------------------------------------------------------- entry point


@dataclass
class TrainOutcome:
    run_dir: Path
    interrupted: bool
    timesteps: int
    best_score: float
    history: list[dict[str, Any]]
    first_below_0_8_s: float | None
    wall_s: float


def train(
    cfg: TrainConfig,
    run_dir: Path,
    *,
    resume: Path | None = None,
    progress_bar: bool = True,
    command: str = "",
    overwrite: bool = False,
    on_evaluation: Callable[[HeldOutEvalCallback, dict[str, Any]], None] | None = None,
) -> TrainOutcome:
    """Train (or resume) one run; Ctrl-C or SIGTERM saves a consistent ``last/`` checkpoint and returns normally.

    A new run (no ``resume``) into a directory that already holds a run is a
    ConfigError unless ``overwrite``, which deletes the old run's files first.
    ``progress_bar`` draws a bar on a terminal and prints plain lines otherwise.
    """
    torch.set_num_threads(1)
    scenario = training_scenario(cfg)
    if resume is None:
        check_run_dir(run_dir, overwrite=overwrite)
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {"config": cfg.model_dump(), "command": command, "scenario": scenario.name}
    (run_dir / "config.json").write_text(json.dumps(meta, indent=2))
    if resume is not None:
        model, env, state = load_checkpoint(resume, cfg, scenario)
        best, last_eval = float(state.get("best_score", float("inf"))), int(state.get("last_eval", 0))
    else:
        env = make_env(cfg, scenario)
        model = make_model(cfg, env)
        best, last_eval = float("inf"), 0
    tb_dir = run_dir / "tb"
    model.set_logger(configure(str(tb_dir), ["tensorboard", "csv"]))
    write_custom_scalars(tb_dir)
    # on_evaluation: called after each validation evaluation (and best/ update), e.g. by a sweep reporting to Ray Tune
    callback = HeldOutEvalCallback(cfg, scenario, run_dir, meta, best, last_eval, on_evaluation)
    remaining = max(0, cfg.n_timesteps - model.num_timesteps)
    bar = BarProgress(cfg.n_timesteps) if progress_bar and sys.stdout.isatty() else None
    callbacks: list[BaseCallback] = [callback]
    if bar is not None:
        callbacks.append(bar)
    elif progress_bar:
        callbacks.append(PlainProgress(cfg.n_timesteps))
    started = time.monotonic()
    interrupted = False
    try:
        with sigterm_as_interrupt():
            model.learn(remaining, callback=callbacks, progress_bar=False, reset_num_timesteps=resume is None)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if bar is not None:
            bar.close()
    if not interrupted and (callback.last_eval < model.num_timesteps or not (run_dir / "best").exists()):
        try:
            with sigterm_as_interrupt():
                callback.evaluate()
        except KeyboardInterrupt:
            interrupted = True
    with signals_deferred():
        save_checkpoint(
            run_dir / "last", model, env,
            {"best_score": callback.best_score, "last_eval": callback.last_eval, **meta},
        )
    history_path = run_dir / "evaluations.jsonl"
    with history_path.open("a") as f:
        for entry in callback.history:
            f.write(json.dumps(entry, default=_json_default) + "\n")
    env.close()
    return TrainOutcome(
        run_dir, interrupted, int(model.num_timesteps), callback.best_score, callback.history,
        callback.first_below_0_8, time.monotonic() - started,
    )
