"""Training speed: env-steps/s of PPO training as a ratio to SB3 PPO on CartPole, and time to a good policy.

    python benchmarks/perf/train_speed.py                      # the ratio (about a minute)
    python benchmarks/perf/train_speed.py --full               # trains train/ppo-web-diurnal.yaml into a temp dir
    python benchmarks/perf/train_speed.py --from-run runs/ppo-web-diurnal-s0   # reads a finished run

The ratio: our PPO (the config's n_envs, n_steps, batch, epochs, network and
VecNormalize on the batched simulator) against SB3 PPO on ``CartPole-v1``
with the same settings (``anchors.sb3_cartpole_model``; SB3's usual
``make_vec_env``), each ``model.learn`` for the same env steps, rounds
alternating, one torch thread each as in ``rlscale train``. Held-out
evaluations are not part of it (they are the time-to-0.8 figure's). Target: >= 0.75.

Each side runs with its own code path's settings: ours as ``make_model``
leaves torch (``torch.distributions`` argument checks off), SB3 with torch's
default (on). A third measurement, SB3-on-CartPole with ours' settings, gives
the ratio of equal learners: what the simulator and the larger action space cost.

"Below 0.8" counts only evaluations (on the validation seeds) whose SLO-violation
rate is not above HPA's on the same seeds.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the project root: benchmarks.* and rlscale

from benchmarks.perf.machine import cpu_model  # noqa: E402


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


def ratio(config: str, rollouts: int, rounds: int) -> dict:
    """Env steps/s of ``learn`` for ours and for SB3-on-CartPole with the same settings, alternating; per round and median."""
    import numpy as np
    import torch

    from torch.distributions import Distribution

    from benchmarks.perf.anchors import learn_rate, load_average, sb3_cartpole_model
    from rlscale.config import load_train_config
    from rlscale.learn.train import make_env, make_model, training_scenario

    torch.set_num_threads(1)
    cfg = load_train_config(config)
    steps = rollouts * cfg.n_envs * cfg.n_steps
    torch_default = bool(Distribution._validate_args)
    ours = make_model(cfg, make_env(cfg, training_scenario(cfg)))
    ours_setting = bool(Distribution._validate_args)  # what our training path chose
    anchor = sb3_cartpole_model(cfg)

    def timed(model: object, validate: bool) -> tuple[float, float]:
        Distribution.set_default_validate_args(validate)
        return learn_rate(model, steps)

    for model in (ours, anchor):  # warm-up: first rollout, first update
        learn_rate(model, cfg.n_envs * cfg.n_steps)
    runs = []
    for _ in range(rounds):
        load = load_average()
        (a, a_cpu) = timed(ours, ours_setting)
        (b, b_cpu) = timed(anchor, torch_default)
        (c, _) = timed(anchor, ours_setting)
        runs.append({"load_avg_1min": round(load, 1), "ours": round(a), "sb3_cartpole": round(b), "ratio": a / b,
                     "ours_per_cpu_s": round(a_cpu), "sb3_cartpole_per_cpu_s": round(b_cpu), "cpu_ratio": a_cpu / b_cpu,
                     "sb3_cartpole_same_settings": round(c), "equal_learner_ratio": a / c})
    return {"config": config, "n_envs": cfg.n_envs, "n_steps": cfg.n_steps, "batch_size": cfg.batch_size,
            "n_epochs": cfg.n_epochs, "net_arch": list(cfg.policy_kwargs.net_arch), "steps_per_round": steps,
            "rounds": runs, "ratio_median": float(np.median([r["ratio"] for r in runs])),
            "cpu_ratio_median": float(np.median([r["cpu_ratio"] for r in runs])),
            "equal_learner_ratio_median": float(np.median([r["equal_learner_ratio"] for r in runs])),
            "validate_args": {"ours": ours_setting, "sb3_default": torch_default}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="train/ppo-web-diurnal.yaml")
    parser.add_argument("--from-run", type=Path, default=None)
    parser.add_argument("--full", action="store_true", help="train the whole config (minutes) instead of the ratio")
    parser.add_argument("--rollouts", type=int, default=5, help="rollouts per side and round (ratio mode)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (ratio mode)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.from_run is None and not args.full:
        r = ratio(args.config, args.rollouts, args.rounds)
        if args.json:
            print(json.dumps({"machine": machine(), **r}, indent=2))
            return
        target = "met" if r["ratio_median"] >= 0.75 else "MISSED"
        print(f"machine: {machine()}; {r['config']}: n_envs {r['n_envs']}, n_steps {r['n_steps']}, batch {r['batch_size']}, "
              f"epochs {r['n_epochs']}, net {r['net_arch']}; {r['steps_per_round']:,} env steps per side and round\n")
        print("| round | 1-min load | ours, env steps/s | SB3 PPO on CartPole, env steps/s | ratio | ratio per CPU second "
              "| SB3 on CartPole with ours' torch settings | ratio of equal learners |\n|---:|---:|---:|---:|---:|---:|---:|---:|")
        for i, run in enumerate(r["rounds"], 1):
            print(f"| {i} | {run['load_avg_1min']} | {run['ours']:,} | {run['sb3_cartpole']:,} | {run['ratio']:.2f} "
                  f"| {run['cpu_ratio']:.2f} | {run['sb3_cartpole_same_settings']:,} | {run['equal_learner_ratio']:.2f} |")
        print(f"\nmedian ratio {r['ratio_median']:.2f} (target >= 0.75: {target}); per CPU second {r['cpu_ratio_median']:.2f}; "
              f"of equal learners {r['equal_learner_ratio_median']:.2f}")
        return
    if args.from_run is None:
        from rlscale.config import load_train_config
        from rlscale.learn.train import train

        run = Path(tempfile.mkdtemp(prefix="rlscale-train-speed-")) / "run"
        started = time.monotonic()
        train(load_train_config(args.config), run, progress_bar=False, command=f"benchmarks/perf/train_speed.py --config {args.config}")
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
