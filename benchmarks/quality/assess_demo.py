"""The whole path from a user's metrics to a trusted policy, on the real local cluster (docs/ASSESS.md, "Measured").

    .venv/bin/python benchmarks/quality/assess_demo.py --work runs/assess-demo    # about 45 minutes

1. ``rlscale calibrate`` measures this machine's per-worker capacity directly (the yardstick for the fit).
2. The history generator (``rlscale.assess.generate.LocalHistory``): the local cluster under ``rlscale loadgen``
   replaying web-diurnal compressed 240x (a day in 6 minutes, decisions every 5 s) with the HPA rule acting,
   for the whole run; Prometheus records it.
3. After two compressed days: ``rlscale assess`` on those 12 minutes of history (the second day held out).
4. ``rlscale train`` on the fitted scenario, stopped (Ctrl-C: a checkpoint) after ``--train-minutes`` at the latest,
   and ``rlscale export`` (the cluster and HPA keep running meanwhile).
5. ``rlscale shadow`` with the trained policy beside the still-acting HPA, then ``rlscale shadow-report``.
6. The trained policy against HPA in the simulator on the held-out day (the real rates of day 2).

Writes ``<work>/demo.json`` with every number, and the fit and shadow reports under ``<work>``.
``--held-out-only MODEL`` repeats step 6 alone for another model trained on ``<work>/envs/local-history.yaml``.

No anchor: a quality record (fit errors, shadow agreement, held-out cost and SLO against HPA).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rlscale.assess.generate import LocalHistory  # noqa: E402


def rlscale(*args: str, timeout: float = 3600.0) -> str:
    print("$ rlscale " + " ".join(args), flush=True)
    done = subprocess.run([sys.executable, "-m", "rlscale.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    print(done.stdout[-3000:], done.stderr[-2000:], sep="\n", flush=True)
    if done.returncode != 0:
        raise SystemExit(f"rlscale {args[0]} failed with {done.returncode}")
    return done.stdout


def held_out(scenario_path: Path, model: Path) -> dict[str, dict[str, float]]:
    """The trained policy and HPA (both as on the local cluster and with the simulator's default time constants) on the held-out day."""
    from rlscale.clusters.local.baselines import scaled_policy
    from rlscale.config import load_scenario
    from rlscale.policies import make_policy
    from rlscale.rollout import run_policy
    from rlscale.workload import load_csv

    sc = load_scenario(scenario_path)
    _, rates = load_csv(scenario_path.with_name(scenario_path.stem + "-holdout.csv"))
    trace = np.concatenate([rates, rates[-1:]])[:, None]
    out = {}
    for label, policy in (("ppo", make_policy(f"ppo:{model}", sc)), ("hpa (as on the cluster)", scaled_policy("hpa", sc)),
                          ("hpa (simulator defaults)", make_policy("hpa", sc)), ("target_tracking", scaled_policy("target_tracking", sc))):
        r = run_policy(sc, policy, [10_000], steps=rates.size, trace=trace)
        out[label] = r.mean()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="runs/assess-demo")
    p.add_argument("--speedup", type=float, default=240.0)
    p.add_argument("--history-seconds", type=float, default=720.0)
    p.add_argument("--train-minutes", type=float, default=10.0)
    p.add_argument("--timesteps", type=int, default=3_000_000)
    p.add_argument("--shadow-seconds", type=float, default=180.0)
    p.add_argument("--peak-rps", type=float, default=90.0)
    p.add_argument("--held-out-only", metavar="MODEL", default=None,
                   help="only step 6: MODEL (e.g. a longer training on <work>/envs/local-history.yaml) vs HPA on the held-out day")
    args = p.parse_args()
    work = (ROOT / args.work).resolve()
    if args.held_out_only:
        print(json.dumps(held_out(work / "envs" / "local-history.yaml", Path(args.held_out_only).resolve()), indent=2))
        return 0
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {}

    rlscale("calibrate", "--cluster", "local", "--out", str(work / "calibrated" / "local.yaml"))
    results["calibrate"] = json.loads((work / "calibrated" / "local.calibration.json").read_text())

    total = args.history_seconds + args.train_minutes * 60 + args.shadow_seconds + 240
    service = ROOT / "envs" / "services" / "local-api.yaml"
    out = work / "envs" / "local-history.yaml"
    with LocalHistory("local", interval_s=5.0, speedup=args.speedup, seconds=total, peak_rps=args.peak_rps,
                      run_dir=work / "cluster") as history:
        history.wait(history.started_unix + args.history_seconds)
        end = time.time()
        days = (end - history.started_unix + 5.0) / 86_400.0
        t0 = time.monotonic()
        rlscale("assess", "--prometheus", history.prometheus_url, "--config", str(service), "--days", f"{days:.8f}",
                "--end", f"{end:.3f}", "--out", str(out), "--report", str(work / "fit-report"))
        results["assess_s"] = time.monotonic() - t0
        results["fit"] = json.loads((work / "fit-report" / "fit.json").read_text())["fit"]

        config = yaml.safe_load((ROOT / "train" / "ppo-local.yaml").read_text())
        config.update({"scenario": str(out), "n_timesteps": args.timesteps, "eval": {"freq": 50_000, "seeds": 8, "seed_base": 5000}})
        train_cfg = work / "ppo-local-history.yaml"
        train_cfg.write_text(yaml.safe_dump(config, sort_keys=False))
        model = work / "models" / "local-history"
        t0 = time.monotonic()
        train = subprocess.Popen([sys.executable, "-m", "rlscale.cli", "train", "--config", str(train_cfg), "--logdir",
                                  str(work / "runs"), "--name", "local-history", "--no-progress"], cwd=ROOT)
        try:
            train.wait(timeout=args.train_minutes * 60)
        except subprocess.TimeoutExpired:
            train.send_signal(signal.SIGINT)  # Ctrl-C: saves a checkpoint and exits 0
            train.wait(timeout=300)
        results["train_s"] = time.monotonic() - t0
        rlscale("export", str(work / "runs" / "local-history"), "--out", str(model))
        results["card_evaluation"] = json.loads((model / "card.json").read_text()).get("evaluation")

        audit = work / "shadow-audit.jsonl"
        rlscale("shadow", "--prometheus", history.prometheus_url, "--config", str(service), "--model", str(model),
                "--duration", f"{args.shadow_seconds:g}", "--audit-log", str(audit))
        results["hpa_decisions_on_cluster"] = history.loop.decisions if history.loop else 0
    rlscale("shadow-report", str(audit), "--out", str(work / "shadow-report"))
    results["shadow"] = {k: v for k, v in json.loads((work / "shadow-report" / "shadow.json").read_text()).items() if k != "series"}
    results["held_out"] = held_out(out, model)
    (work / "demo.json").write_text(json.dumps(results, indent=2, default=float))
    print(json.dumps({k: v for k, v in results.items() if k != "calibrate"}, indent=2, default=float))
    print("capacity: fitted", results["fit"]["capacity_rps_per_replica"], "calibrate",  # type: ignore[index]
          results["calibrate"]["capacity_rps_per_worker"])  # type: ignore[index]
    return 0


if __name__ == "__main__":
    sys.exit(main())
