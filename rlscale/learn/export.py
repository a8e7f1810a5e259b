"""Export a training run's best checkpoint to ``policy.npz`` + ``card.json`` (no pickle at load time).

The card describes the artefact completely: what it observes and emits, the
scenario and training config it came from, the exact command, library
versions, and how it did against HPA on held-out seeds.
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

from rlscale import __version__
from rlscale.config import TEST_SEED_BASE, ConfigError, TrainConfig, load_scenario, parse_model
from rlscale.policies.network import write_exported
from rlscale.spaces import ActionSpec, ObsSpec

EXPORT_SEEDS = 10
EXPORT_FILES = ("policy.npz", "card.json")


def check_target(out: Path, *, force: bool) -> None:
    """Refuse (ConfigError) to replace an exported policy in ``out`` unless ``force``, naming what is there.

    ``models/`` holds the shipped policies; an export with a name that is
    already taken would silently swap one for an undertrained policy.
    """
    out = Path(out)
    present = [name for name in EXPORT_FILES if (out / name).exists()]
    if force or not present:
        return
    what = ""
    try:
        card = json.loads((out / "card.json").read_text())
        ev, training = card.get("evaluation") or {}, card.get("training") or {}
        parts = [f"a policy for {card.get('scenario', '?')}"]
        if training.get("timesteps"):
            parts.append(f"trained {int(training['timesteps']):,} steps")
        if isinstance(ev.get("cost_vs_hpa"), (int, float)):
            parts.append(f"cost vs HPA {ev['cost_vs_hpa']:.3f}")
        what = " (" + ", ".join(parts) + ")"
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    raise ConfigError(f"{out}: would replace {' and '.join(present)}{what}; pass --force to overwrite, or choose another --out")


def find_checkpoint(path: Path) -> Path:
    """A run directory (its best, else last checkpoint), a checkpoint directory, or a model.zip in one."""
    path = Path(path)
    if path.is_file() and path.name.endswith(".zip"):
        path = path.parent
    for candidate in (path / "best", path / "last", path):
        if (candidate / "model.zip").is_file() and (candidate / "state.json").is_file():
            return candidate
    raise ConfigError(f"{path}: not a training run or checkpoint (expected best/ or last/ with model.zip and state.json)")


def run_progress(ckpt: Path, state: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    """How far the run got against what it was asked (``last/`` is saved on an interrupt), and the checkpoint's
    validation score: a run interrupted at 229k of 2.77M steps exported without a word."""
    reached = int(state["num_timesteps"])
    last = ckpt.parent / "last" / "state.json"
    if ckpt.name != "last" and last.is_file():
        try:
            reached = max(reached, int(json.loads(last.read_text())["num_timesteps"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass
    evaluation = state.get("evaluation")
    score = evaluation.get("score") if isinstance(evaluation, dict) else state.get("best_score")
    progress: dict[str, Any] = {"n_timesteps": cfg.n_timesteps, "run_timesteps": reached, "complete": reached >= cfg.n_timesteps}
    if isinstance(score, (int, float)) and math.isfinite(score):
        progress["validation_score"] = float(score)
    return progress


def incomplete_note(card: dict[str, Any]) -> str | None:
    """One line for a card exported from a run stopped before its ``n_timesteps``, else None."""
    t = card.get("training") or {}
    if t.get("complete") is not False:
        return None
    score = f", validation score {t['validation_score']:.3f}" if t.get("validation_score") is not None else ""
    return (f"the run is incomplete: it stopped at {t['run_timesteps']:,} of {t['n_timesteps']:,} steps "
            f"({t['run_timesteps'] / t['n_timesteps']:.0%}); exported its {t['checkpoint']} checkpoint from "
            f"{t['timesteps']:,} steps{score}; resume the run to finish it")


def versions() -> dict[str, str]:
    import gymnasium
    import numpy
    import stable_baselines3
    import torch

    return {
        "rlscale": __version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "gymnasium": gymnasium.__version__,
    }


def export_run(run: Path, out: Path, *, seeds: int = EXPORT_SEEDS, force: bool = False,
               card_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Export and evaluate against HPA on ``seeds`` held-out seeds; returns the card.

    ``card_extra``: more top-level card fields, e.g. the sweep a policy was picked from (``rlscale sweep``).

    Refuses to replace a policy already in ``out`` unless ``force`` (see ``check_target``).
    """
    from rlscale.learn.train import evaluate_weights, load_checkpoint, training_scenario, weights_from_sb3

    check_target(out, force=force)
    ckpt = find_checkpoint(run)
    state = json.loads((ckpt / "state.json").read_text())
    if "config" not in state:
        raise ConfigError(f"{ckpt / 'state.json'}: missing field config")
    cfg = parse_model(TrainConfig, state["config"], str(ckpt / "state.json"))
    model, env, _ = load_checkpoint(ckpt, cfg, training_scenario(cfg))
    # cards describe and evaluate the scenario as served, not the training config's reward overrides
    scenario = load_scenario(cfg.scenario)
    weights = weights_from_sb3(model, env)
    held_out = list(range(TEST_SEED_BASE, TEST_SEED_BASE + seeds))
    training = {
        "config": cfg.model_dump(),
        "seed": cfg.seed,
        "timesteps": int(state["num_timesteps"]),
        "command": state.get("command", ""),
        "checkpoint": ckpt.name,
        **run_progress(ckpt, state, cfg),
    }
    if cfg.general is not None:
        card = general_card(out.name, weights, cfg, held_out, training)
        card.update(card_extra or {})
        write_exported(out, weights, card)
        return card
    result = evaluate_weights(weights, scenario, held_out, cfg.eval.episode_steps)
    card = {
        "name": out.name,
        "scenario": scenario.name,
        "scenario_config": json.loads(scenario.model_dump_json()),
        "obs_spec": ObsSpec.from_scenario(scenario).to_dict(),
        "obs_features": ObsSpec.from_scenario(scenario).feature_names(),
        "action_spec": ActionSpec.from_scenario(scenario).to_dict(),
        "training": training,
        "versions": versions(),
        "evaluation": {"held_out_seeds": held_out, **result.summary()},
        **(card_extra or {}),
    }
    write_exported(out, weights, card)
    return card


def general_card(name: str, weights: Any, cfg: TrainConfig, held_out: list[int], training: dict[str, Any]) -> dict[str, Any]:
    """A generalist's card: its kind, features, levels and margin, the range it covers, and held-out results."""
    from rlscale.policies import relative
    from rlscale.learn.general_eval import card_memory, card_range, evaluate_general, policy_history
    from rlscale.policies.network import GENERAL_KIND

    assert cfg.general is not None
    result = evaluate_general(weights, cfg.general, held_out, cfg.eval.episode_steps)
    return {
        "name": name,
        "kind": GENERAL_KIND,
        "obs_features": relative.feature_names(policy_history(cfg.general) is not None, cfg.general.base_feature),
        "action": {"levels": list(relative.LEVELS), "rebalance": ["none", "consolidate", "spread"],
                   "u_max": relative.U_MAX, "tolerance": relative.TOLERANCE, "down_window_steps": relative.DOWN_WINDOW_STEPS},
        "range": card_range(cfg.general),
        **card_memory(cfg.general),
        "training": training,
        "versions": versions(),
        "evaluation": {"held_out_seeds": held_out, **result.summary()},
    }
