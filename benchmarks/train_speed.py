"""Training speed: env-steps/s of PPO training, and wall time until eval/cost_vs_hpa first drops below 0.8.

    python benchmarks/train_speed.py                      # trains train/ppo-web-diurnal.yaml into a temp dir
    python benchmarks/train_speed.py --from-run runs/ppo-web-diurnal-s0   # reads a finished run

"Below 0.8" counts only evaluations (on the validation seeds) whose SLO-violation
rate is not above HPA's on the same seeds.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from machine import cpu_model  # benchmarks/machine.py


def machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def read_run(run: Path) -> dict:
    rows = list(csv.DictReader((run / "tb" / "progress.csv").open()))
    fps = [float(r["time/fps"]) for r in rows if r.get("time/fps")]
    evals = [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines() if line.strip()]
    first = next((e for e in evals if e["cost_vs_hpa"] < 0.8
                  and e["ppo"]["slo_violation_rate"] <= e["hpa"]["slo_violation_rate"]), None)
    return {
        "timesteps": evals[-1]["timesteps"] if evals else None,
        "train_env_steps_per_s": fps[-1] if fps else None,
        "wall_s_total": evals[-1]["wall_s"] if evals else None,
        "first_below_0_8": None if first is None else {"timesteps": first["timesteps"], "wall_s": round(first["wall_s"], 1),
                                                         "cost_vs_hpa": round(first["cost_vs_hpa"], 3)},
        "best_score": min((e["score"] for e in evals), default=None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="train/ppo-web-diurnal.yaml")
    parser.add_argument("--from-run", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.from_run is None:
        from rlscale.config import load_train_config
        from rlscale.train import train

        run = Path(tempfile.mkdtemp(prefix="rlscale-train-speed-")) / "run"
        started = time.monotonic()
        train(load_train_config(args.config), run, progress_bar=False, command=f"benchmarks/train_speed.py --config {args.config}")
        wall = time.monotonic() - started
    else:
        run, wall = args.from_run, None
    result = {"machine": machine(), "config": args.config, "run": str(run), **read_run(run)}
    if wall is not None:
        result["wall_s_total"] = round(wall, 1)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"machine: {result['machine']}")
    print("| metric | value |\n|---|---|")
    for key in ("timesteps", "train_env_steps_per_s", "wall_s_total", "first_below_0_8", "best_score"):
        print(f"| {key} | {result[key]} |")


if __name__ == "__main__":
    main()
