"""A real history to assess: the local process cluster under ``rlscale loadgen``, with HPA acting.

``LocalHistory`` starts the local cluster (worker processes, HAProxy,
Prometheus; ``rlscale.clusters.local``), replays a compressed day of traffic
against it with the load generator (a child process, open loop), and runs the
controller's own loop with the HPA rule (``scaled_policy("hpa")``) acting on
it, in a thread, until ``close``. Prometheus then holds what a user's
Prometheus would: request rates, latency histograms, busy time, the workers
that came and went. ``envs/services/local-api.yaml`` is the matching
``service.yaml``. Used by the end-to-end test and by
``python -m rlscale.assess.generate`` (docs/ASSESS.md).
"""

from __future__ import annotations

import argparse
import math
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rlscale.clusters.local import LocalCluster, LocalSettings, open_local_cluster
from rlscale.clusters.local.baselines import scaled_policy
from rlscale.config import Scenario, load_scenario
from rlscale.controller import AuditLog, ControlLoop, Decider, GuardConfig


class LocalHistory:
    """Cluster + load + acting HPA; a context manager. ``started_unix`` is when the load began."""

    def __init__(self, scenario: Scenario | str = "local", *, interval_s: float = 5.0, speedup: float = 240.0,
                 seconds: float = 360.0, peak_rps: float = 90.0, seed: int = 0, run_dir: Path | None = None,
                 trace: str = "web-diurnal", initial_replicas: int = 2, measure_capacity_s: float = 0.0) -> None:
        sc = load_scenario(scenario)
        self.scenario = sc.model_copy(update={"step_s": interval_s}) if sc.step_s != interval_s else sc
        self.settings = LocalSettings(interval_s=interval_s)
        self.speedup, self.seconds, self.peak_rps, self.seed, self.trace = speedup, seconds, peak_rps, seed, trace
        self.run_dir = run_dir
        self.initial = initial_replicas
        self.cluster: LocalCluster | None = None
        self.loadgen: subprocess.Popen[bytes] | None = None
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.loop: ControlLoop | None = None
        self.started_unix = math.nan
        self.audit: AuditLog | None = None
        self.measure_capacity_s = measure_capacity_s
        self.capacity_rps_per_worker = math.nan

    def __enter__(self) -> "LocalHistory":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def prometheus_url(self) -> str:
        assert self.cluster is not None
        return self.cluster.prometheus_url

    def start(self) -> None:
        self.cluster = open_local_cluster(self.scenario, self.run_dir, self.settings, initial_replicas=[self.initial])
        try:
            if self.measure_capacity_s > 0:
                self.capacity_rps_per_worker = self.measure_capacity(self.measure_capacity_s)
            sc = self.scenario
            config = GuardConfig.from_scenario(sc, sc.step_s, max_step_change=max(s.max_replicas for s in sc.services))
            decider = Decider(sc, scaled_policy("hpa", sc), config, fallback=scaled_policy("hpa", sc))
            self.audit = AuditLog(self.cluster.run_dir / "hpa-audit.jsonl")
            self.loop = ControlLoop(self.cluster, decider, self.audit, interval_s=sc.step_s, stop=self.stop)
            self.started_unix = time.time()
            self.loadgen = subprocess.Popen([
                sys.executable, "-m", "rlscale.cli", "loadgen", "--trace", self.trace, "--speedup", f"{self.speedup:g}",
                "--duration", f"{self.seconds:g}", "--peak-rps", f"{self.peak_rps:g}", "--target", self.cluster.url(),
                "--seed", str(self.seed), "--timeout", "10",
            ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.thread = threading.Thread(target=self.loop.run, name="rlscale-history-hpa", daemon=True)
            self.thread.start()
        except BaseException:
            self.close()
            raise

    def measure_capacity(self, seconds: float) -> float:
        """Requests/s per worker with the ready workers saturated, as ``rlscale calibrate`` measures it.

        Closed-loop clients (four per worker slot) for ``seconds``: the same
        method as calibration, on the same machine at the same moment, so a
        fitted capacity can be held against it while the machine's load is
        what it is now. Run it before the load starts or after
        ``stop_load``: the saturation must not be part of the history.
        """
        from rlscale.clusters.local.loadgen import closed_loop

        assert self.cluster is not None
        service = self.scenario.services[0].name
        # a scale-up or drain the HPA began must end first: a half-started worker is not capacity
        self.cluster.wait_for(lambda c: not c.starting.get(service) and not c.draining.get(service), 30.0)
        workers = max(1, self.cluster.census().ready.get(service, self.initial))
        ok, _, wall = closed_loop(self.cluster.url(), 4 * workers * self.settings.concurrency, seconds)
        # the saturation must leave every rate window before a history starts
        time.sleep((self.settings.interval_s or self.scenario.step_s) + 2 * self.settings.scrape_s)
        return ok / wall / workers

    def wait(self, until_unix: float) -> None:
        """Sleep until ``until_unix`` (or until the load generator ends)."""
        while time.time() < until_unix and self.loadgen is not None and self.loadgen.poll() is None:
            time.sleep(min(0.5, max(0.0, until_unix - time.time())))

    def close(self) -> None:
        """Stop the load generator, the HPA loop and the cluster (every process it started)."""
        self.stop_load()
        if self.audit is not None:
            self.audit.close()
        if self.cluster is not None:
            self.cluster.close()

    def stop_load(self) -> None:
        """Stop the load generator and the HPA loop; the cluster stays up with the workers it has."""
        self.stop.set()
        if self.loadgen is not None and self.loadgen.poll() is None:
            self.loadgen.terminate()
            try:
                self.loadgen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.loadgen.kill()
                self.loadgen.wait()
        if self.thread is not None:
            self.thread.join(timeout=30)

    def summary(self) -> dict[str, Any]:
        return {"started_unix": self.started_unix, "prometheus": self.prometheus_url if self.cluster else None,
                "decisions": self.loop.decisions if self.loop else 0, "capacity_rps_per_worker": self.capacity_rps_per_worker}


def main(argv: list[str] | None = None) -> int:
    """Run the history generator and keep the cluster up until Ctrl-C, printing where Prometheus is."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", default="local")
    p.add_argument("--interval", type=float, default=5.0)
    p.add_argument("--speedup", type=float, default=240.0)
    p.add_argument("--seconds", type=float, default=720.0, help="real seconds of load (720 at 240x: two compressed days)")
    p.add_argument("--peak-rps", type=float, default=90.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-dir", default=None)
    args = p.parse_args(argv)
    history = LocalHistory(args.scenario, interval_s=args.interval, speedup=args.speedup, seconds=args.seconds,
                           peak_rps=args.peak_rps, seed=args.seed, run_dir=Path(args.run_dir).resolve() if args.run_dir else None)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with history:
        print(f"prometheus {history.prometheus_url}; load on {history.cluster.url() if history.cluster else '?'}; "
              f"started {history.started_unix:.0f}; HPA acting; Ctrl-C stops everything", flush=True)
        while not stop.is_set() and history.loadgen is not None and history.loadgen.poll() is None:
            stop.wait(1.0)
        if not stop.is_set():
            print("load done; cluster and Prometheus stay up until Ctrl-C", flush=True)
        stop.wait()
    print("stopped: load generator, HPA loop, cluster", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
