"""HPA versus another policy on the real local cluster (worker processes + HAProxy + Prometheus).

Usage::

    .venv/bin/python benchmarks/quality/local_cluster.py --policy target_tracking
    .venv/bin/python benchmarks/quality/local_cluster.py --policy ppo:models/local --scenario envs/local.yaml --speedup 720

Each policy runs on the same two replayed traces, each on a fresh cluster:
``day``, web-diurnal's Monday compressed ``--speedup`` times (Poisson
arrivals, peak ``--peak-rps``), and ``flash``, a flash crowd (a ramp from
``--peak-rps``/3.5 to ``--peak-rps`` in 4 s, decaying over ~10 s). The
controller's own loop (``rlscale.controller.ControlLoop`` with a
``Decider``, in-process, as ``rlscale serve --cluster local`` runs it)
decides every interval (the scenario's ``step_s`` unless ``--interval``);
baselines keep their windows and cooldowns in decisions (``scaled_policy``),
and the per-decision guard rail is opened up to the maximum replicas so that
a baseline moves as it does in the simulator's evaluation (``run_policy``
applies no step limit; a PPO policy's actions are within the limit anyway).
Metrics missing or degraded: the HPA fallback, as in serving.

Reported per policy and trace, measured, not simulated:
``worker_seconds`` (Prometheus: seconds each worker was up and scraped),
``cost_usd`` (worker-seconds at the scenario's price per worker-hour),
``latency_p95_s`` (load generator, every request), ``latency_p95_prom_s``
(Prometheus histogram of the workers), ``slo_violation_rate`` (share of
decision intervals whose p95 exceeds the SLO or that failed >1% of
requests), ``failed_requests`` (load generator: 5xx, timeouts, errors), and
``http_5xx`` (HAProxy via Prometheus). Writes JSON with ``--out``.

Beside the real numbers, the simulator's prediction for the same policies,
twice: ``simulated`` on the scenario's own compressed day (10 seeds, the
trace the policy was trained on) and ``simulated_replay`` on the very rates
the load generator replayed in the ``day`` run (``--peak-rps`` scales the
trace's highest *minute*, so a 5 s interval of the replay peaks lower than
the scenario's ``peak_rps``): the second is the like-for-like prediction.
A policy that calibrates on history (``models/general``) first gets
``--history-days`` of the service's past, as ``rlscale serve --history``
gives it: compressed days of the same load generator for other seeds.
``--keep DIR`` keeps each run's audit log (every decision's metrics, raw and
final action) and load-generator record there.

No anchor: a quality table (worker-seconds, latency and failures against HPA on the same replayed traces).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rlscale.clusters.local import LocalCluster, LocalSettings, open_local_cluster  # noqa: E402
from rlscale.clusters.local.baselines import scaled_policy  # noqa: E402
from rlscale.clusters.local.calibrate import skeleton  # noqa: E402
from rlscale.config import Scenario, load_scenario  # noqa: E402
from rlscale.controller import AuditLog, ControlLoop, Decider, GuardConfig  # noqa: E402


def flash_trace(path: Path, seconds: float, peak: float) -> Path:
    """Base load, then at 25% of the run a 4 s ramp to ``peak`` and an exponential decay (tau 10 s)."""
    base = peak / 3.5
    t = np.arange(0.0, seconds, 0.5)
    start = 0.25 * seconds
    up = np.clip((t - start) / 4.0, 0.0, 1.0)
    decay = np.where(t > start + 4.0, np.exp(-(t - start - 4.0) / 10.0), 1.0)
    rates = base + (peak - base) * up * decay
    path.write_text("timestamp,value\n" + "".join(f"{a:.2f},{r:.3f}\n" for a, r in zip(t, rates)))
    return path


def past_days(sc: Scenario, speedup: float, seconds: float, peak: float, seed: int, days: float) -> np.ndarray:
    """``days`` of the service's past ``[L, 1]``, oldest first, in the scenario's intervals: compressed days of
    the load generator's ``day`` plan for other seeds (``seed`` + 1000 on), as many distinct ones as a
    calibration replays, repeated back in time."""
    from rlscale.policies.calibration import MAX_REPLAY_STEPS
    from rlscale.policies.history import steps_per_day

    one = [replayed_day(sc, speedup, seconds, peak, seed + 1000 + k)[:-1] for k in range(
        max(1, math.ceil(MAX_REPLAY_STEPS / max(1, math.ceil(seconds / sc.step_s)))))]
    distinct = np.concatenate(one[::-1])
    need = int(days * steps_per_day(sc.step_s))
    return np.tile(distinct, (math.ceil(need / distinct.shape[0]), 1))[-need:]


def with_history(policy: Any, sc: Scenario, past: np.ndarray | None) -> float | None:
    """Give a policy that reads or calibrates on history its ``past``, as ``rlscale serve --history`` does;
    the base level it calibrated to (None: it calibrates nothing, or the past is too short)."""
    from rlscale.policies.history import days_wanted
    from rlscale.rollout import calibrate

    if past is None or not days_wanted(policy) or not callable(getattr(policy, "load_history", None)):
        return None
    policy.load_history(0, past, -sc.step_s)
    if getattr(policy, "calibration", None) is None:
        return None
    calibrate(policy, sc)
    return float(policy.base[0])


def control(cluster: LocalCluster, sc: Scenario, policy: Any, seconds: float, interval: float, audit_path: Path) -> list[dict[str, Any]]:
    """Run the controller's loop on ``cluster`` for ``seconds``; returns its decisions (the audit log's lines)."""
    wide = max(s.max_replicas for s in sc.services)
    config = GuardConfig.from_scenario(sc, interval, max_step_change=wide)
    decider = Decider(sc, policy, config, fallback=scaled_policy("hpa", sc))
    audit = AuditLog(audit_path)
    try:
        ControlLoop(cluster, decider, audit, interval_s=interval, steps=max(1, math.ceil(seconds / interval))).run()
    finally:
        audit.close()
    lines = [json.loads(line) for line in audit_path.read_text().splitlines()]
    return [line for line in lines if line["kind"] == "decision"]


def run_one(sc: Scenario, policy_spec: str, trace: str, speedup: float, seconds: float, peak: float,
            settings: LocalSettings, workdir: Path, seed: int, past: np.ndarray | None = None) -> dict[str, Any]:
    policy = scaled_policy(policy_spec, sc)
    level = with_history(policy, sc, past)
    out = workdir / f"load-{policy_spec.replace(':', '_').replace('/', '_')}-{Path(trace).stem}.json"
    with open_local_cluster(sc, workdir / "run", settings, initial_replicas=[2]) as cluster:
        started = time.monotonic()
        loadgen = subprocess.Popen([
            sys.executable, "-m", "rlscale.cli", "loadgen", "--trace", trace, "--speedup", str(speedup),
            "--duration", str(seconds), "--peak-rps", str(peak), "--target", cluster.url(), "--out", str(out),
            "--seed", str(seed), "--timeout", "10",
        ], stdout=subprocess.DEVNULL)
        try:
            decisions = control(cluster, sc, policy, seconds, settings.interval_s or sc.step_s, workdir / "audit.jsonl")
        finally:
            code = loadgen.wait(timeout=60)
        if code != 0:
            raise RuntimeError(f"loadgen exited with {code}")
        time.sleep(1.5 * settings.scrape_s)
        span = f"{int(time.monotonic() - started) + 2}s"
        prom = cluster.prom
        worker_s = prom.scalar(f'sum_over_time((count(up{{job="workers"}} == 1))[{span}:1s])', default=0.0)
        p95_prom = prom.scalar(
            f'histogram_quantile(0.95, sum by (le) (increase(rlscale_worker_request_duration_seconds_bucket[{span}])))')
        errors = prom.scalar(f'sum(increase(haproxy_frontend_http_responses_total{{proxy="api",code="5xx"}}[{span}]))', default=0.0)
        counters = cluster.counters
    load = json.loads(out.read_text())
    summary = load["summary"]
    slo = sc.services[0].slo_target_s
    interval = settings.interval_s or sc.step_s
    iv = _intervals(load, interval)
    ready = np.array([d["inputs"]["metrics"]["ready"][0] for d in decisions if d["inputs"]["metrics"]], dtype=np.float64)
    price = sc.pools[0].price_per_hour * sc.services[0].replica.cpu / sc.pools[0].vcpu
    return {
        "policy": policy_spec,
        "trace": Path(trace).stem,
        "requests": summary["requests"],
        "worker_seconds": worker_s,
        "worker_seconds_supervisor": counters.worker_seconds,
        "cost_usd": worker_s * price / 3600.0,
        "latency_p95_s": summary["latency_p95_s"],
        "latency_p95_prom_s": p95_prom,
        "slo_violation_rate": float(np.mean([(f > 0.01 * s) or (p is not None and p > slo) for s, f, p in iv if s > 0])) if iv else 0.0,
        "failed_requests": summary["failed"],
        "http_5xx": errors,
        "max_workers": float(np.nanmax(ready)) if ready.size else math.nan,
        "decisions": len(decisions),
        "fallbacks": sum(d["fallback"] is not None for d in decisions),
        "calibrated_level": level,
    }


def _intervals(load: dict[str, Any], width: float) -> list[tuple[int, int, float | None]]:
    """(sent, failed, p95) per decision interval from the load generator's per-request record."""
    req = load["per_request"]
    send = np.array(req["send_s"])
    lat = np.array([np.nan if v is None else v for v in req["latency_s"]], dtype=float)
    status = np.array(req["status"])
    ok = (status >= 200) & (status < 400)
    n = max(1, math.ceil(load["duration_s"] / width))
    idx = np.minimum((send // width).astype(int), n - 1)
    out = []
    for k in range(n):
        sel = idx == k
        good = sel & ok
        out.append((int(sel.sum()), int((sel & ~ok).sum()), float(np.quantile(lat[good], 0.95)) if good.any() else None))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default="target_tracking", help="policy to compare with the baseline (e.g. ppo:models/local)")
    parser.add_argument("--baseline", default="hpa")
    parser.add_argument("--scenario", default=None, help="scenario of the local cluster (default: envs/local.yaml if present)")
    parser.add_argument("--interval", type=float, default=None, help="decision interval (s; default: the scenario's step_s, 3 s without one)")
    parser.add_argument("--speedup", type=float, default=1440.0, help="compression of the day (1440: a day in 60 s)")
    parser.add_argument("--day-seconds", type=float, default=60.0)
    parser.add_argument("--flash-seconds", type=float, default=40.0)
    parser.add_argument("--peak-rps", type=float, default=90.0)
    parser.add_argument("--max-workers", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--keep", default=None, help="keep audit logs and load-generator records in this (new) directory")
    parser.add_argument("--history-days", type=float, default=7.0,
                        help="days of the service's past a policy that calibrates on history gets (0: none)")
    parser.add_argument("--simulate-only", action="store_true",
                        help="skip the real cluster: only the simulator's predictions, the oracle and its floor (seconds)")
    args = parser.parse_args()

    path = args.scenario or (str(ROOT / "envs" / "local.yaml") if (ROOT / "envs" / "local.yaml").exists() else None)
    sc = load_scenario(path) if path else skeleton(LocalSettings(), args.interval or 3.0, args.max_workers, 0.2)
    if args.interval is not None and sc.step_s != args.interval:
        sc = sc.model_copy(update={"step_s": args.interval})
    args.interval = sc.step_s
    settings = LocalSettings(interval_s=sc.step_s, max_workers=args.max_workers)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rlscale-bench-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.simulate_only:
            traces = []
        else:
            traces = [("web-diurnal", args.speedup, args.day_seconds),
                      (str(flash_trace(work / "flash.csv", args.flash_seconds, args.peak_rps)), 1.0, args.flash_seconds)]
        past = past_days(sc, args.speedup, args.day_seconds, args.peak_rps, args.seed, args.history_days) if args.history_days > 0 else None
        level = with_history(scaled_policy(args.policy, sc), sc, past)
        if level is not None:
            print(f"{args.policy} calibrated its level on {args.history_days:g} days of the service's past: {level:.0%}", flush=True)
        for spec in (args.baseline, args.policy) if traces else ():
            for trace, speedup, seconds in traces:
                run_dir = work / f"{spec.replace(':', '_').replace('/', '_')}-{Path(trace).stem}"
                run_dir.mkdir()
                row = run_one(sc, spec, trace, speedup, seconds, args.peak_rps, settings, run_dir, args.seed, past)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\nscenario {sc.name}, interval {args.interval:g} s, peak {args.peak_rps:g} req/s, SLO p95 {sc.services[0].slo_target_s:g} s")
    if rows:
        cols = ["worker_seconds", "cost_usd", "latency_p95_s", "latency_p95_prom_s", "slo_violation_rate", "failed_requests", "http_5xx", "max_workers"]
        print("| policy | trace | " + " | ".join(cols) + " |")
        print("|---|---|" + "---|" * len(cols))
        for r in rows:
            print(f"| {r['policy']} | {r['trace']} | " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    predicted = sim_prediction(sc, [args.baseline, args.policy], args.seed)
    print(f"\nsimulator's prediction for the compressed day ({sc.name}, 10 seeds from {args.seed}, same policies):")
    print("| policy | worker_seconds | cost_usd | slo_violation_rate | dropped_fraction |\n|---|---|---|---|---|")
    for name, m in predicted.items():
        print(f"| {name} | {_fmt(m['worker_seconds'])} | {_fmt(m['cost_usd'])} | {_fmt(m['slo_violation_rate'])} | {_fmt(m['dropped_fraction'])} |")
    replayed = replay_prediction(sc, [args.baseline, args.policy], args.speedup, args.day_seconds, args.peak_rps, args.seed)
    print(f"\nsimulator's prediction on the replayed day itself (the load generator's rates, peak {args.peak_rps:g} req/s per minute):")
    print("| policy | worker_seconds | cost_usd | slo_violation_rate | dropped_fraction |\n|---|---|---|---|---|")
    for name, m in replayed.items():
        print(f"| {name} | {_fmt(m['worker_seconds'])} | {_fmt(m['cost_usd'])} | {_fmt(m.get('slo_violation_rate', 0.0))} | {_fmt(m.get('dropped_fraction', 0.0))} |")
    base = replayed[args.baseline]["worker_seconds"]
    print(f"oracle / {args.baseline}: {replayed['oracle']['worker_seconds'] / base:.3f} of its worker-seconds; "
          f"proven floor / {args.baseline}: {replayed['oracle floor']['worker_seconds'] / base:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "scenario": sc.name, "results": rows,
                                              "simulated": predicted, "simulated_replay": replayed}, indent=2))
    return 0


def sim_prediction(sc: Any, specs: list[str], seed: int) -> dict[str, dict[str, float]]:
    """What the simulator predicts for the same policies on the scenario's own (compressed-day) workload."""
    from rlscale.clusters.local.baselines import scaled_policy
    from rlscale.rollout import run_policy

    price = sc.pools[0].price_per_hour
    out = {}
    for spec in specs:
        result = run_policy(sc, scaled_policy(spec, sc), list(range(seed, seed + 10))).mean()
        out[spec] = {**result, "worker_seconds": result["cost_usd"] / price * 3600.0}
    return out


def replayed_day(sc: Any, speedup: float, seconds: float, peak: float, seed: int) -> np.ndarray:
    """The load generator's ``day`` rates averaged per decision interval: the trace ``[steps + 1, 1]`` the simulator replays."""
    from rlscale.clusters.local.loadgen import plan

    p = plan("web-diurnal", speedup, seconds, peak, seed)
    t = np.arange(p.rates.size) * p.interval_s
    steps = max(1, math.ceil(p.duration_s / sc.step_s))
    idx = np.minimum((t // sc.step_s).astype(int), steps - 1)
    rates = np.bincount(idx, weights=p.rates, minlength=steps) / np.maximum(np.bincount(idx, minlength=steps), 1)
    return np.concatenate([rates, rates[-1:]])[:, None]


def replay_prediction(sc: Any, specs: list[str], speedup: float, seconds: float, peak: float, seed: int) -> dict[str, dict[str, float]]:
    """What the simulator predicts for the same policies on the rates the real ``day`` run replayed.

    Also the room any policy has on that day: the oracle (which knows the day in
    advance and buys the least capacity that keeps every interval within the
    SLO; exact for this single-service, single-pool cluster) and its proven
    floor, so a worker-seconds target can be checked against what is possible.
    """
    from rlscale.evaluation.evaluate import episode_floor
    from rlscale.rollout import run_policy

    trace = replayed_day(sc, speedup, seconds, peak, seed)
    steps = trace.shape[0] - 1
    price = sc.pools[0].price_per_hour
    out = {}
    for spec in [*specs, *(["oracle"] if "oracle" not in specs else [])]:
        result = run_policy(sc, scaled_policy(spec, sc), [seed], steps=steps, trace=trace).mean()
        out[spec] = {**result, "worker_seconds": result["cost_usd"] / price * 3600.0}
    floor = float(episode_floor(sc, [seed], steps, trace)[0])
    out["oracle floor"] = {"cost_usd": floor, "worker_seconds": floor / price * 3600.0}
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v.is_integer():
            return f"{v:.0f}"
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


if __name__ == "__main__":
    sys.exit(main())
