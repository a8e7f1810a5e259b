"""Measure the real local cluster and write a scenario the simulator can train on (the needs assessment).

What is measured, in about a minute (``calibrate``):

1. **cold start**: spawn of a worker process until it is registered and
   ready in HAProxy (median over the workers started);
2. **capacity**: ``workers`` workers saturated by closed-loop clients;
   requests/s per worker from the clients' count (Prometheus'
   ``rate(rlscale_worker_requests_total)`` over the same span is kept too);
3. **CPU-seconds per request**: ``rate(rlscale_worker_cpu_seconds_total) /
   rate(rlscale_worker_requests_total)`` during saturation (the burn plus the
   HTTP overhead of the worker);
4. **latency under load**: open-loop Poisson arrivals at 50 %, 70 % and 90 %
   of the measured capacity, p95 from the load generator;
5. **hot-spot noise**: the backend's ``hot_spot`` (slowest worker's service
   time over the median, minus 1, over one interval) after each load level.
   Identical workers still differ by a few tenths of a percent per interval
   (timer and scheduler jitter); the scenario gets that as independent
   per-interval node-speed noise (``drift_sigma``, ``drift_reversion`` 1), so
   the simulator's ``hot_spot`` has the spread a policy will see here instead
   of being exactly 0 (a feature that is constant in training is normalised
   with a near-zero variance, and any real reading then saturates it).

What is written: a scenario (``envs/local.yaml``) with one pool ``local``
whose node is the slice of the machine one worker gets (``vcpu`` = the
worker's concurrency slots, one worker per node, no provisioning delay, a
nominal price per worker-hour), and one service ``api`` whose ``work_s`` is
slot-seconds per request (``concurrency / capacity``, so the simulator's
``replica_rps`` equals the measured capacity) and whose ``cold_start_s`` is
measured. Its ``step_s`` is the local decision interval. Its workload is a
compressed web-diurnal day written next to it as a CSV trace, the same shape
``rlscale loadgen --trace web-diurnal --speedup N`` replays, peaking at
``load_factor`` of the cluster's capacity. The default compression, 240x (a
day in 6 minutes, 72 intervals of 5 s), is the strongest at which the HPA
baseline still keeps the SLO in the simulator, as it does in every shipped
scenario; at 720x the day ramps up faster than any reactive policy follows. The measurements are kept in the
YAML's header comment and in ``<out>.calibration.json``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rlscale.clusters.local.backend import open_local_cluster
from rlscale.clusters.local.settings import LocalSettings
from rlscale.config import ConfigError, Scenario, load_scenario, parse_model
from rlscale.atomic import write_json, write_text
from rlscale.clusters.local.loadgen import Plan, closed_loop, replay
from rlscale.spaces import Action
from rlscale.workload import generate

log = logging.getLogger("rlscale.clusters.local")

DAY_S = 86_400.0


def skeleton(settings: LocalSettings, step_s: float, max_workers: int, slo_s: float) -> Scenario:
    """A minimal scenario to run the local cluster with while measuring it."""
    data = {
        "name": "local-calibration",
        "step_s": step_s,
        "pools": [{"name": "local", "vcpu": settings.concurrency, "memory_gib": 1.0, "price_per_hour": 0.05,
                   "provision_delay_s": 0, "max_nodes": max_workers, "idle_release_s": 0}],
        "services": [{"name": "api", "work_s": settings.service_time_s, "replica": {"cpu": settings.concurrency, "memory_gib": 1.0},
                      "min_replicas": 1, "max_replicas": max_workers, "slo": {"p95_latency_s": slo_s}, "pools": ["local"],
                      "workload": {"peak_rps": 1.0}}],
        "reward": {"cost_scale": 0.001},
    }
    scenario: Scenario = parse_model(Scenario, data, "local calibration skeleton")
    return scenario


def _rss_gib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / (1024 * 1024)
    except OSError:
        pass
    return math.nan


def measure(
    settings: LocalSettings,
    workers: int = 2,
    level_s: float = 6.0,
    run_dir: Path | None = None,
    slo_s: float = 0.2,
) -> dict[str, Any]:
    """Run the measurements on a fresh local cluster; returns the numbers (see the module docstring)."""
    settings = replace(settings, interval_s=settings.interval_s or 5.0)
    sc = skeleton(settings, settings.interval_s or 5.0, settings.max_workers, slo_s)
    window = f"{int(level_s * 1000) - 1000}ms"
    with open_local_cluster(sc, run_dir, settings, initial_replicas=[1], timeout_s=90) as cluster:
        cluster.apply(Action(replicas=np.array([[workers]]), rebalance=np.zeros(1, dtype=np.int64)))
        if not cluster.wait_for(lambda c: c.ready.get("api", 0) >= workers, 60.0):
            raise RuntimeError(f"calibration: {workers} workers did not become ready (logs in {cluster.run_dir}/logs)")
        time.sleep(2 * settings.scrape_s)
        clients = 4 * workers * settings.concurrency
        ok, failed, wall = closed_loop(cluster.url(), clients, level_s)
        end = time.time() - 0.5 * settings.scrape_s
        time.sleep(2.0 * settings.scrape_s)
        served = cluster.prom.scalar(f"sum(rate(rlscale_worker_requests_total[{window}]))", at=end)
        cpu = cluster.prom.scalar(f"sum(rate(rlscale_worker_cpu_seconds_total[{window}]))", at=end)
        client_rps = ok / wall
        capacity_rps = client_rps / workers
        rss = max(_rss_gib(pid) for pid in cluster.worker_pids().values())
        hot = [_hot_spot(cluster)]
        levels = []
        for fraction in (0.5, 0.7, 0.9):
            rate = fraction * capacity_rps * workers
            p = Plan(rates=np.full(1, rate), interval_s=level_s, source=f"constant {rate:.1f} rps",
                     trace_step_s=level_s, speedup=1.0, duration_s=level_s)
            result = replay(p, cluster.url(), seed=int(fraction * 100))
            summary = result.summary()
            levels.append({"utilisation": fraction, "rps": rate, "p50_s": summary["latency_p50_s"],
                           "p95_s": summary["latency_p95_s"], "failed": summary["failed"]})
            hot.append(_hot_spot(cluster))
        cold = list(cluster.counters.cold_starts_s)
    return {
        "settings": {k: getattr(settings, k) for k in ("cpu_s", "wait_s", "concurrency", "warmup_s", "interval_s",
                                                          "scrape_s", "max_workers", "queue_timeout_s")},
        "workers": workers,
        "cold_start_s": float(np.median(cold)),
        "cold_starts_s": cold,
        "capacity_rps_per_worker": capacity_rps,
        "client_rps": client_rps,
        "prometheus_rps": served,
        "failed_at_saturation": failed,
        "cpu_s_per_request": cpu / served if served > 0 else math.nan,
        "cores_per_busy_worker": cpu / workers,
        "service_time_s": settings.concurrency / capacity_rps,
        "worker_rss_gib": rss,
        "latency_under_load": levels,
        "hot_spot_samples": [h for h in hot if h == h],
        "measured_at_unix": time.time(),
    }


def _hot_spot(cluster: Any) -> float:
    """The backend's own ``hot_spot`` reading of the last interval (NaN without Prometheus' numbers)."""
    sample = cluster.read_metrics()
    if sample is None or sample.degraded:
        return math.nan
    return float(np.asarray(sample.metrics.hot_spot).reshape(-1)[0])


def speed_noise(m: dict[str, Any]) -> float:
    """Per-interval node-speed noise (sigma of the log speed) that gives the simulator the measured ``hot_spot``.

    With two workers whose log speeds differ by independent noise of sigma s,
    the slowest one's service time over the mean is about ``|d1 - d2| / 2``,
    whose mean is ``s / sqrt(pi)``; so ``s = sqrt(pi) * mean(hot_spot)``.
    Older measurements without samples give 0 (no noise).
    """
    samples = [float(h) for h in m.get("hot_spot_samples", []) if h == h and h >= 0]
    if not samples or int(m.get("workers", 2)) < 2:
        return 0.0
    return float(min(0.2, math.sqrt(math.pi) * float(np.mean(samples))))


def diurnal_trace(speedup: float, step_s: float) -> tuple[np.ndarray, np.ndarray]:
    """web-diurnal's Monday shape (no noise, peak 1), compressed ``speedup`` times, one row per ``step_s``.

    Rows are step means of the per-minute shape, so the simulator (which
    resamples to ``step_s``) sees exactly what a local interval averages, and
    the timestamps are exact multiples of ``step_s`` (the trace's period must
    be exactly the compressed day).
    """
    spec = load_scenario("web-diurnal").services[0].workload.model_copy(update={"noise": 0.0})
    minutes = generate(spec, int(DAY_S // 60), 60.0, np.random.default_rng(0), start_s=0.0)
    rows = max(2, int(round(DAY_S / speedup / step_s)))
    edges = np.linspace(0, minutes.size, rows + 1).astype(int)
    shape = np.array([minutes[a:b].mean() for a, b in zip(edges[:-1], edges[1:])])
    return np.arange(rows) * step_s, shape / shape.max()


def write_scenario(
    m: dict[str, Any],
    out: Path,
    speedup: float = 240.0,
    price_per_worker_hour: float = 0.05,
    slo_s: float = 0.25,
    load_factor: float = 0.6,
    min_replicas: int = 2,
) -> Scenario:
    """Write ``out`` (YAML), its trace CSV and calibration JSON; returns the validated scenario."""
    s = m["settings"]
    max_workers = int(s["max_workers"])
    capacity = float(m["capacity_rps_per_worker"])
    step_s = float(s["interval_s"])
    mem = max(0.05, math.ceil((m["worker_rss_gib"] if m["worker_rss_gib"] == m["worker_rss_gib"] else 0.05) * 20) / 20)
    noise = speed_noise(m)
    trace_path = out.with_name(f"{out.stem}-diurnal.csv")
    ts, shape = diurnal_trace(speedup, step_s)
    rows = ["timestamp,value"] + [f"{t:g},{v:.6f}" for t, v in zip(ts, shape)]
    write_text(trace_path, "\n".join(rows) + "\n")
    data = {
        "name": out.stem,
        "description": (
            f"The local cluster (worker processes behind HAProxy on this machine), as measured by "
            f"`rlscale calibrate`: {capacity:.1f} requests/s per worker, {m['cpu_s_per_request'] * 1000:.1f} ms CPU per "
            f"request, cold start {m['cold_start_s']:.2f} s. One node = the slice one worker gets. Time is real "
            f"seconds; the workload is web-diurnal's day compressed {speedup:g}x ({DAY_S / speedup:.0f} s), as "
            f"`rlscale loadgen --speedup {speedup:g}` replays it."
        ),
        "step_s": step_s,
        "substeps": 5,
        "episode_steps": max(2, int(round(DAY_S / speedup / step_s))),
        "pools": [{
            "name": "local", "vcpu": int(s["concurrency"]), "memory_gib": mem, "price_per_hour": price_per_worker_hour,
            "provision_delay_s": 0, "min_nodes": 0, "max_nodes": max_workers, "idle_release_s": 0,
        }],
        "services": [{
            "name": "api", "kind": "online",
            "work_s": round(float(m["service_time_s"]), 5),
            "replica": {"cpu": int(s["concurrency"]), "memory_gib": mem},
            "cold_start_s": round(float(m["cold_start_s"]), 2),
            "min_replicas": min_replicas, "max_replicas": max_workers,
            "queue_limit": round(capacity * max_workers * float(s["queue_timeout_s"])),
            "slo": {"p95_latency_s": slo_s},
            "pools": ["local"],
            "workload": {"peak_rps": round(load_factor * capacity * max_workers, 1), "noise": 0.05,
                         "trace": trace_path.name},
        }],
        "actions": {"max_step": 2},
        "reward": {"cost_scale": round(price_per_worker_hour * max_workers * step_s / 3600 / 2, 8),
                   "w_slo": 10.0, "w_drop": 50.0, "w_churn": 0.002},
        "imbalance": {"drift_sigma": round(noise, 5), "drift_reversion": 1.0 if noise > 0 else 0.0, "contention": 0.0},
        "randomisation": {"scale": [0.7, 1.2], "phase_h": [0.0, 0.0], "noise": [0.02, 0.08]},
    }
    levels = ", ".join(f"{lv['utilisation']:.0%}: p95 {lv['p95_s'] * 1000:.0f} ms" for lv in m["latency_under_load"])
    header = (
        "# Written by `rlscale calibrate --cluster local`; edit by re-running it.\n"
        f"# Measured: capacity {capacity:.2f} req/s/worker, CPU {m['cpu_s_per_request'] * 1000:.2f} ms/request, "
        f"cold start {m['cold_start_s']:.2f} s, worker RSS {m['worker_rss_gib'] * 1024:.0f} MiB\n"
        f"# Latency under load ({m['workers']} workers): {levels}\n"
        f"# Hot-spot noise (slowest worker over the median - 1, per interval): {_fmt_hot(m)}\n"
        f"# Worker settings: {json.dumps(s)}\n"
    )
    write_text(out, header + yaml.safe_dump(data, sort_keys=False, width=100))
    write_json(out.with_suffix(".calibration.json"), m)
    try:
        scenario = load_scenario(out)
        generate(scenario.services[0].workload, 2, scenario.step_s, np.random.default_rng(0))
    except ConfigError as err:
        raise RuntimeError(f"calibration wrote a scenario that does not load: {err}") from None
    return scenario


def _fmt_hot(m: dict[str, Any]) -> str:
    samples = [float(h) for h in m.get("hot_spot_samples", []) if h == h]
    if not samples:
        return "not measured; no node-speed noise"
    return f"mean {np.mean(samples):.4f} over {len(samples)} intervals -> drift_sigma {speed_noise(m):.5f}, drift_reversion 1"


def calibrate(
    out: str | Path,
    settings: LocalSettings | None = None,
    workers: int = 2,
    level_s: float = 6.0,
    speedup: float = 240.0,
    price_per_worker_hour: float = 0.05,
    slo_s: float = 0.25,
    run_dir: str | Path | None = None,
) -> tuple[Scenario, dict[str, Any]]:
    """Measure (``measure``) and write the scenario (``write_scenario``)."""
    path = Path(out)
    if path.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"--out {out}: expected a .yaml path, e.g. envs/local.yaml")
    s = settings or LocalSettings(interval_s=5.0)
    if workers < 1 or workers > s.max_workers:
        raise ConfigError(f"--workers {workers}: expected 1..{s.max_workers}")
    m = measure(s, workers=workers, level_s=level_s, run_dir=Path(run_dir) if run_dir else None, slo_s=slo_s)
    scenario = write_scenario(m, path, speedup=speedup, price_per_worker_hour=price_per_worker_hour, slo_s=slo_s)
    return scenario, m
