"""A sweep's trial: what the plan (``sweep.py``) hands a worker (``sweep_ray.py``) and what the worker leaves.

Both sides read and write these, so they live below both: the planner never
imports Ray, and the Ray side never imports the planner.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRIAL_FILE = "trial.json"
TUNE_DIR = "tune"


@dataclass(frozen=True)
class Trial:
    """One planned training run of a sweep: its axis values and the complete training config they give."""

    index: int
    name: str
    axes: dict[str, Any]
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "axes": self.axes, "config": self.config}


def best_evaluation(run_dir: Path) -> dict[str, Any] | None:
    """The validation entry of the run's best checkpoint (what its score was picked on)."""
    try:
        state = json.loads((run_dir / "best" / "state.json").read_text())
    except (OSError, ValueError):
        return None
    entry = state.get("evaluation")
    return entry if isinstance(entry, dict) else None


def metrics_of(entry: dict[str, Any]) -> dict[str, float]:
    """The flat numbers of one validation entry (``HeldOutEvalCallback``'s history) that the table shows."""
    ppo, hpa = entry.get("ppo") or {}, entry.get("hpa") or {}
    return {
        "timesteps": float(entry.get("timesteps", float("nan"))),
        "score": float(entry.get("score", float("nan"))),
        "cost_vs_hpa": float(entry.get("cost_vs_hpa", float("nan"))),
        "slo_violation_rate": float(ppo.get("slo_violation_rate", float("nan"))),
        "hpa_slo_violation_rate": float(hpa.get("slo_violation_rate", float("nan"))),
        "dropped_fraction": float(ppo.get("dropped_fraction", float("nan"))),
        "hpa_dropped_fraction": float(hpa.get("dropped_fraction", float("nan"))),
    }


def trial_summary(trial: dict[str, Any], run_dir: Path, timesteps: int, wall_s: float) -> dict[str, Any]:
    best = best_evaluation(run_dir)
    return {
        "trial": trial["name"],
        "index": trial["index"],
        "axes": trial["axes"],
        "status": "finished",
        "timesteps": int(timesteps),
        "wall_s": round(float(wall_s), 1),
        "best": metrics_of(best) if best is not None else None,
        "run_dir": str(run_dir),
    }
