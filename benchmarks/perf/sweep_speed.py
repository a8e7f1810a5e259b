"""Sweep speed: 4 trainings one after another vs the same 4 as a Ray Tune sweep at 2 concurrent, in one run
(and, between them, the same 4 in 2 plain processes: what the machine gives two trainings without Ray);
and what Ray costs on its own (start-up time, memory of its processes).

    python benchmarks/perf/sweep_speed.py                 # train/sweeps/web-diurnal-500k.yaml: 4 seeds x 500k steps
    python benchmarks/perf/sweep_speed.py --ray-only      # just Ray's start-up and memory (seconds, not minutes)

Sequential: each trial's ``TrainConfig`` (from the sweep's own plan) through ``rlscale.learn.train.train`` in this
process, one after another. Sweep: ``rlscale.learn.sweep.run_sweep`` on a private local Ray with 2 trials at
once; its time runs from before Ray starts to after Ray has shut down (the export of the best trial is timed
apart: the sequential side exports nothing). Both sides train the same configs, so the ratio is the speed-up
that concurrency buys minus what Ray costs. The machine's load averages are printed with every number: on a
2-core machine shared with other jobs, 2 concurrent trials cannot get 2 free cores.

Anchor: the same 4 trainings run one after another in the same run (target: sweep <= 0.65x sequential);
Ray's start-up and memory are absolute.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the project root: benchmarks.* and rlscale

from benchmarks.perf.machine import cpu_model  # noqa: E402

CONFIG = "train/sweeps/web-diurnal-500k.yaml"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
                parents[int(proc.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB; PSS splits shared pages (libraries, Ray's shared memory) between the processes using them."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def total_memory(include_self: bool) -> tuple[int, int, int]:
    pids = descendants(os.getpid()) + ([os.getpid()] if include_self else [])
    rss = pss = 0
    for pid in pids:
        r, p = memory_kib(pid)
        rss, pss = rss + r, pss + p
    return len(pids), rss, pss


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


class Sampler:
    """Every second: the PSS of this process and all its descendants (keeps the peak), and each descendant's CPU time.

    CPU seconds over wall seconds is how many cores a side actually got: on an idle 2-core machine about 1
    for one training at a time and about 2 for two, less when other jobs take their share.
    """

    def __init__(self) -> None:
        self.peak_pss = 0
        self.peak_rss = 0
        self.child_cpu: dict[int, float] = {}
        self._self_cpu = time.process_time()
        self.cpu_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            _, rss, pss = total_memory(include_self=True)
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
            for pid in descendants(os.getpid()):
                self.child_cpu[pid] = max(self.child_cpu.get(pid, 0.0), cpu_seconds(pid))

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu_s = time.process_time() - self._self_cpu + sum(self.child_cpu.values())


def ray_overhead(runs: int) -> dict:
    """Start a private local Ray (as ``rlscale sweep`` does) with no trials: time to ready, its processes' memory, shutdown."""
    from rlscale.learn.sweep import _ray_environment

    _ray_environment(local=True)
    before_import = time.monotonic()
    from rlscale.learn import sweep_ray  # imports ray and ray.tune

    import_s = time.monotonic() - before_import
    samples = []
    for _ in range(runs):
        self_rss_before = memory_kib(os.getpid())[0]
        started = time.monotonic()
        with sweep_ray.ray_session(None, echo=lambda line: None):
            ready = time.monotonic() - started
            time.sleep(3.0)  # let the prestarted idle workers finish importing
            count, rss, pss = total_memory(include_self=False)
            processes = sorted(((Path(f"/proc/{pid}/comm").read_text().strip(), round(memory_kib(pid)[1] / 1024))
                                for pid in descendants(os.getpid()) if Path(f"/proc/{pid}/comm").exists()),
                               key=lambda item: -item[1])
            self_rss = memory_kib(os.getpid())[0]
            stopping = time.monotonic()
        stop_s = time.monotonic() - stopping
        left = len(descendants(os.getpid()))
        samples.append({"ready_s": round(ready, 2), "shutdown_s": round(stop_s, 2), "processes": count,
                        "rss_mib": round(rss / 1024), "pss_mib": round(pss / 1024),
                        "driver_rss_growth_mib": round((self_rss - self_rss_before) / 1024), "left_after_shutdown": left,
                        "pss_mib_by_process": processes,
                        "load": load()})
    return {
        "import_ray_tune_s": round(import_s, 2),
        "runs": samples,
        "ready_s_median": statistics.median(s["ready_s"] for s in samples),
        "pss_mib_median": statistics.median(s["pss_mib"] for s in samples),
        "rss_mib_median": statistics.median(s["rss_mib"] for s in samples),
    }


def sequential(config: str, root: Path) -> dict:
    from rlscale.config import TrainConfig
    from rlscale.learn.sweep import load_sweep, plan_trials
    from rlscale.learn.train import train

    trials = plan_trials(load_sweep(config), config)
    load_before = load()
    started = time.monotonic()
    per_trial = []
    with Sampler() as mem:
        for t in trials:
            t0 = time.monotonic()
            outcome = train(TrainConfig.model_validate(t.config), root / t.name, progress_bar=False,
                            command=f"benchmarks/perf/sweep_speed.py sequential {t.name}")
            per_trial.append({"trial": t.name, "wall_s": round(time.monotonic() - t0, 1), "timesteps": outcome.timesteps,
                              "best_score": round(outcome.best_score, 4)})
            print(f"  sequential {t.name}: {per_trial[-1]['wall_s']} s, load {load()}", flush=True)
    wall = time.monotonic() - started
    return {"wall_s": round(wall, 1), "trials": per_trial, "load_before": load_before,
            "load_after": load(), "peak_rss_mib": round(mem.peak_rss / 1024), "peak_pss_mib": round(mem.peak_pss / 1024),
            "cpu_s": round(mem.cpu_s, 1), "cores_used": round(mem.cpu_s / wall, 2)}


def _train_one(job: tuple[dict, str, str]) -> dict:
    """One training in a fresh process (``parallel``): what a Ray worker does, without Ray."""
    import torch

    from rlscale.config import TrainConfig
    from rlscale.learn.train import train

    torch.set_num_threads(1)
    config, run_dir, name = job
    t0 = time.monotonic()
    outcome = train(TrainConfig.model_validate(config), Path(run_dir), progress_bar=False,
                    command=f"benchmarks/perf/sweep_speed.py parallel {name}")
    return {"trial": name, "wall_s": round(time.monotonic() - t0, 1), "best_score": round(outcome.best_score, 4)}


def parallel(config: str, root: Path, concurrent: int) -> dict:
    """The same trainings in ``concurrent`` plain processes (spawned, so each imports torch as a Ray worker does).

    What this machine gives two trainings at once right now, without Ray: the sweep's ratio to this is Ray's cost,
    this one's ratio to the sequential run is the machine's (its free cores, or how far two busy vCPUs slow each other).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from rlscale.learn.sweep import load_sweep, plan_trials

    trials = plan_trials(load_sweep(config), config)
    jobs = [(t.config, str(root / t.name), t.name) for t in trials]
    load_before = load()
    started = time.monotonic()
    with Sampler() as mem, ProcessPoolExecutor(concurrent, mp_context=multiprocessing.get_context("spawn")) as pool:
        per_trial = list(pool.map(_train_one, jobs))
    wall = time.monotonic() - started
    return {"wall_s": round(wall, 1), "trials": per_trial, "load_before": load_before, "load_after": load(),
            "peak_pss_mib": round(mem.peak_pss / 1024), "cpu_s": round(mem.cpu_s, 1), "cores_used": round(mem.cpu_s / wall, 2)}


def swept(config: str, root: Path, concurrent: int) -> dict:
    from rlscale.learn.sweep import run_sweep

    load_before = load()
    started = time.monotonic()
    with Sampler() as mem:
        outcome = run_sweep(config, max_concurrent=concurrent, logdir=root, command="benchmarks/perf/sweep_speed.py",
                            echo=lambda line: print(f"  {line}", flush=True))
    total = time.monotonic() - started
    trials_s = float(outcome.ray["trials_s"])
    return {"wall_s_trials": round(trials_s, 1), "wall_s_total_with_export": round(total, 1),
            "ray_ready_s": outcome.ray.get("startup_s"), "finished": sum(r.status == "finished" for r in outcome.rows),
            "best": outcome.best.trial.name if outcome.best else None,
            "scores": {r.trial.name: round(r.score, 4) for r in outcome.rows},
            "load_before": load_before, "load_after": load(),
            "peak_rss_mib": round(mem.peak_rss / 1024), "peak_pss_mib": round(mem.peak_pss / 1024),
            "cpu_s": round(mem.cpu_s, 1), "cores_used": round(mem.cpu_s / total, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--ray-runs", type=int, default=3, help="local Ray start-ups to time")
    parser.add_argument("--ray-only", action="store_true")
    parser.add_argument("--no-parallel", action="store_true", help="skip the plain-process parallel side")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()
    result: dict = {"machine": f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                    "config": args.config, "concurrent": args.concurrent}
    print(f"machine: {result['machine']}; load {load()}", flush=True)
    if not args.ray_only:
        root = Path(tempfile.mkdtemp(prefix="rlscale-sweep-speed-"))
        print("sequential: 4 trainings one after another in this process", flush=True)
        result["sequential"] = sequential(args.config, root / "sequential")
        if not args.no_parallel:
            print(f"parallel: the same trainings in {args.concurrent} plain processes (no Ray)", flush=True)
            result["parallel"] = parallel(args.config, root / "parallel", args.concurrent)
            result["ratio_parallel_no_ray"] = round(result["parallel"]["wall_s"] / result["sequential"]["wall_s"], 3)
        print(f"sweep: the same trainings on Ray Tune, {args.concurrent} at once", flush=True)
        result["sweep"] = swept(args.config, root / "sweeps", args.concurrent)
        result["ratio_trials"] = round(result["sweep"]["wall_s_trials"] / result["sequential"]["wall_s"], 3)
        if "parallel" in result:
            result["ratio_sweep_to_parallel"] = round(result["sweep"]["wall_s_trials"] / result["parallel"]["wall_s"], 3)
        result["ratio_with_export"] = round(result["sweep"]["wall_s_total_with_export"] / result["sequential"]["wall_s"], 3)
        result["output"] = str(root)
    result["ray"] = ray_overhead(args.ray_runs)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    if "ratio_trials" in result:
        print(f"\nsweep / sequential wall time: {result['ratio_trials']:.3f} (target <= 0.65); "
              f"{result['ratio_with_export']:.3f} counting the sweep's export of the best trial; cores used: sequential "
              f"{result['sequential']['cores_used']}, sweep {result['sweep']['cores_used']}")
        if "parallel" in result:
            print(f"plain processes / sequential: {result['ratio_parallel_no_ray']:.3f} (cores used "
                  f"{result['parallel']['cores_used']}); sweep / plain processes: {result['ratio_sweep_to_parallel']:.3f}")


if __name__ == "__main__":
    main()
