"""``LocalCluster``: real worker processes behind HAProxy, observed through Prometheus.

The controller sees the ``Cluster`` protocol; underneath, one supervisor
thread owns every process and reconciles, every ``tick_s`` (0.2 s):

* **desired count** (``apply``): start workers (``worker.py``) until enough
  are running; when there are too many, stop the ones still starting, then
  drain ready ones (``set server ... state drain``) and, once their
  in-flight requests are done, ``maint`` + ``del server`` and stop them;
* **readiness**: a worker is registered in HAProxy (``add server`` with its
  ``maxconn``, ``enable health``, ``state ready``) only after its own
  ``/healthz`` answers, so ``ready`` counts workers that can take traffic and
  their cold start is measured;
* **faults**: a worker that exits (or that HAProxy's health check reports
  DOWN for ``down_timeout_s``) is removed from HAProxy and replaced at the next
  tick; a dead HAProxy or Prometheus is restarted with back-off (HAProxy's
  dynamic servers are then registered again); runtime API errors are retried
  with back-off and never stop the loop;
* **rebalance**: ``spread`` sets server weights inversely to each worker's
  measured service time; ``consolidate`` does nothing: each worker is its
  own node (``envs/local.yaml`` has one replica per node), so there is
  nothing to pack and no node to free, which is also what the simulator does
  with one-replica nodes.

``read_metrics`` queries Prometheus (rates over one interval). When
Prometheus cannot answer it falls back to HAProxy's own ``show stat``
counters, sampled by the supervisor every tick: arrivals, queue, drops and
utilisation (slot occupancy) are still measured, p95 latency is NaN, and the
sample says ``source="haproxy-stats"``, ``degraded=True`` so the controller
applies the HPA rule. Both unreachable: ``None``.
"""

from __future__ import annotations

import atexit
import logging
import math
import socket
import sys
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from rlscale.clusters.base import MetricsSample, virtual_nodes
from rlscale.clusters.local import haproxy as hap
from rlscale.clusters.local import prometheus as prom
from rlscale.clusters.local.procs import Child, ProcessTable, free_port, require_binary
from rlscale.clusters.local.settings import LocalSettings
from rlscale.config import ConfigError, Scenario, load_scenario
from rlscale.spaces import REBALANCE_SPREAD, Action, Metrics

log = logging.getLogger("rlscale.clusters.local")

WORKER_SCRIPT = Path(__file__).resolve().parent / "worker.py"
STARTING, READY, DRAINING = "starting", "ready", "draining"


@dataclass
class Worker:
    service: str
    name: str
    port: int
    child: Child
    created: float
    state: str = STARTING
    ready_at: float | None = None
    drain_since: float | None = None
    registered: bool = False
    down_since: float | None = None
    retry_at: float = 0.0


@dataclass(frozen=True)
class StatPoint:
    """One tick's HAProxy counters per service, for the fallback and the census."""

    t: float
    req_tot: dict[str, int]
    hrsp_5xx: dict[str, int]
    qcur: dict[str, int]
    busy_slots: dict[str, int]
    ready: dict[str, int]
    ttime_ms: dict[str, int]


@dataclass
class Census:
    """What the supervisor last saw; replaced whole each tick, never mutated after."""

    t: float = 0.0
    starting: dict[str, int] = field(default_factory=dict)
    ready: dict[str, int] = field(default_factory=dict)
    draining: dict[str, int] = field(default_factory=dict)
    rebalancing: bool = False
    ready_names: dict[str, frozenset[str]] = field(default_factory=dict)


@dataclass
class Counters:
    """Totals since start, for tests, calibration and benchmarks."""

    worker_deaths: int = 0
    workers_started: int = 0
    workers_stopped: int = 0
    haproxy_restarts: int = 0
    prometheus_restarts: int = 0
    haproxy_errors: int = 0
    fallback_samples: int = 0
    servers_left_in_maint: int = 0
    worker_seconds: float = 0.0
    cold_starts_s: list[float] = field(default_factory=list)


class LocalCluster:
    """The ``Cluster`` protocol over real processes on 127.0.0.1; use ``open_local_cluster``."""

    def __init__(self, scenario: Scenario, run_dir: Path, settings: LocalSettings, initial: Sequence[int]) -> None:
        self.scenario = scenario
        self.settings = settings.resolved(scenario.step_s)
        self.run_dir = run_dir
        self._names = [hap.check_name(s.name) for s in scenario.services]
        self._lo = np.array([s.min_replicas for s in scenario.services], dtype=np.int64)
        self._hi = np.array([min(s.max_replicas, self.settings.max_workers) for s in scenario.services], dtype=np.int64)
        self._desired = {n: int(np.clip(r, lo, hi)) for n, r, lo, hi in zip(self._names, initial, self._lo, self._hi)}
        self._pool_of = [scenario.pool_index(s.pools[0]) for s in scenario.services]
        self._procs = ProcessTable()
        self._workers: dict[str, list[Worker]] = {n: [] for n in self._names}
        self._serial = 0
        self._lock = threading.Lock()
        self._requests: deque[int] = deque()
        self._history: deque[StatPoint] = deque(maxlen=max(8, int(3 * self.settings.window_s / self.settings.tick_s)))
        self._census = Census()
        self._service_time: dict[tuple[str, str], float] = {}
        self._stop = threading.Event()
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._closed = False
        self._degraded_logged = False
        self._t0 = time.monotonic()
        self._last_tick = self._t0
        self._targets_written: frozenset[tuple[str, str, int]] | None = None
        self._retry = {"haproxy": 0.0, "prometheus": 0.0}
        self._backoff = {"haproxy": 1.0, "prometheus": 1.0}
        self.counters = Counters()

        self.haproxy_bin = require_binary("haproxy")
        self.prometheus_bin = require_binary("prometheus")
        host = self.settings.host
        self.ports = {n: free_port(host) for n in self._names}
        self.exporter_port = free_port(host)
        self.prometheus_port = free_port(host)
        self.socket_path = run_dir / "haproxy.sock"
        self.targets_file = run_dir / "workers.json"
        self.admin = hap.HAProxyAdmin(self.socket_path)
        self.prom = prom.PrometheusClient(f"http://{host}:{self.prometheus_port}")
        self._haproxy: Child | None = None
        self._prometheus: Child | None = None
        self._thread = threading.Thread(target=self._run, name="rlscale-local-supervisor", daemon=True)

    # ------------------------------------------------------------------ the Cluster protocol

    def services(self) -> list[str]:
        return list(self._names)

    def now(self) -> float:
        return self.settings.start_s + time.monotonic() - self._t0

    def url(self, service: str | None = None, path: str = "/work") -> str:
        """Where a client sends requests for ``service`` (the first one by default)."""
        name = service or self._names[0]
        return f"http://{self.settings.host}:{self.ports[name]}{path}"

    @property
    def prometheus_url(self) -> str:
        return self.prom.base_url

    def apply(self, action: Action) -> None:
        replicas = np.asarray(action.replicas, dtype=np.int64).reshape(-1)
        if replicas.shape[0] != len(self._names):
            raise ValueError(f"action has {replicas.shape[0]} services, the local cluster runs {len(self._names)}")
        clipped = np.clip(replicas, self._lo, self._hi)
        rebalance = int(np.asarray(action.rebalance).reshape(-1)[0]) if np.size(action.rebalance) else 0
        with self._lock:
            for name, value in zip(self._names, clipped):
                self._desired[name] = int(value)
            if rebalance == REBALANCE_SPREAD:
                self._requests.append(rebalance)

    def desired(self) -> dict[str, int]:
        with self._lock:
            return dict(self._desired)

    def census(self) -> Census:
        return self._census

    def read_metrics(self) -> MetricsSample | None:
        if self._closed:
            return None
        try:
            sample = self._from_prometheus()
            if self._degraded_logged:
                log.info("prometheus answers again: metrics from prometheus")
                self._degraded_logged = False
            return sample
        except prom.PrometheusError as err:
            reason = str(err)
        except Exception as err:  # noqa: BLE001 - an odd answer must not stop the controller
            reason = f"unexpected answer from prometheus ({type(err).__name__}: {err})"
        sample = self._from_haproxy_stats()
        self.counters.fallback_samples += 1
        if not self._degraded_logged:
            what = "HAProxy stats (arrivals, queue, drops, utilisation; p95 unknown)" if sample else "nothing"
            log.warning("metrics: %s; falling back to %s", reason, what)
            self._degraded_logged = True
        return sample

    def close(self) -> None:
        """Stop the supervisor, every worker, HAProxy and Prometheus; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=30.0)
        self._procs.stop_all()

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def started_pids(self) -> list[int]:
        """Every PID this cluster ever started (for the no-orphans check)."""
        return list(self._procs.started_pids)

    def worker_pids(self, service: str | None = None) -> dict[str, int]:
        """Running workers' PIDs by worker name (a snapshot; the supervisor may change it next tick)."""
        names = [service] if service else self._names
        return {w.name: w.child.pid for n in names for w in list(self._workers[n]) if w.child.alive()}

    @property
    def haproxy_pid(self) -> int | None:
        return self._haproxy.pid if self._haproxy else None

    @property
    def prometheus_pid(self) -> int | None:
        return self._prometheus.pid if self._prometheus else None

    # ------------------------------------------------------------------ start-up

    def start(self, wait_ready: bool, timeout_s: float) -> None:
        self._thread.start()
        if not self._started.wait(timeout=timeout_s):
            self.close()
            raise RuntimeError(f"local cluster: HAProxy and Prometheus did not start within {timeout_s:.0f} s (logs in {self.run_dir})")
        if self._start_error is not None:
            self.close()
            raise self._start_error
        if not wait_ready:
            return
        if not self.wait_for(lambda c: all(c.ready.get(n, 0) >= d for n, d in self.desired().items()), timeout_s):
            self.close()
            raise RuntimeError(f"local cluster: initial workers not ready within {timeout_s:.0f} s (logs in {self.run_dir}/logs)")
        self._wait_for_scrapes(min(timeout_s, 10 * self.settings.scrape_s))

    def _wait_for_scrapes(self, timeout_s: float) -> None:
        """Until Prometheus holds two scrapes of HAProxy, rates are undefined and samples would be degraded."""
        query = f'count_over_time(haproxy_frontend_http_requests_total{{proxy="{self._names[0]}"}}[{prom.window(self.settings.window_s)}])'
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.prom.scalar(query, default=0.0) >= 2:
                    return
            except prom.PrometheusError:
                pass
            time.sleep(self.settings.scrape_s / 2)

    def wait_for(self, predicate, timeout_s: float) -> bool:  # type: ignore[no-untyped-def]
        """Wait until ``predicate(census)`` holds (checked every tick); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._census.t > 0 and predicate(self._census):
                return True
            time.sleep(self.settings.tick_s / 2)
        return False

    def _start_infra(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs").mkdir(exist_ok=True)
        cfg = self.run_dir / "haproxy.cfg"
        cfg.write_text(hap.render_config(self.socket_path, self.ports, self.exporter_port, self.settings.queue_timeout_s,
                                         self.settings.host, self.settings.health_inter_ms))
        prom.write_targets(self.targets_file, [])
        self._targets_written = frozenset()
        (self.run_dir / "prometheus.yml").write_text(
            prom.render_config(f"{self.settings.host}:{self.exporter_port}", self.targets_file, self.settings.scrape_s)
        )
        self._haproxy = self._spawn_haproxy()
        self._prometheus = self._spawn_prometheus()

    def _spawn_haproxy(self) -> Child:
        if self.socket_path.exists():
            self.socket_path.unlink()
        child = self._procs.spawn("haproxy", [self.haproxy_bin, "-db", "-f", str(self.run_dir / "haproxy.cfg")],
                                  self.run_dir / "logs" / "haproxy.log")
        return _wait_started(child, "haproxy", self.admin.ping, 10.0, 0.05, "open its admin socket")

    def _spawn_prometheus(self) -> Child:
        argv = [
            self.prometheus_bin,
            f"--config.file={self.run_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.run_dir / 'prometheus-data'}",
            f"--web.listen-address={self.settings.host}:{self.prometheus_port}",
            "--storage.tsdb.retention.time=1d",
            "--log.level=warn",
        ]
        child = self._procs.spawn("prometheus", argv, self.run_dir / "logs" / "prometheus.log")
        return _wait_started(child, "prometheus", self.prom.ready, 30.0, 0.1, "become ready")

    # ------------------------------------------------------------------ the supervisor

    def _run(self) -> None:
        try:
            self._start_infra()
        except BaseException as err:  # noqa: BLE001 - handed to the caller of start()
            self._start_error = err
            self._procs.stop_all()
            self._started.set()
            return
        self._started.set()
        last_error = 0.0
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # noqa: BLE001 - the loop must survive anything one tick does
                if time.monotonic() - last_error > 10.0:
                    log.exception("local cluster: supervisor tick failed; continuing")
                    last_error = time.monotonic()
            self._stop.wait(self.settings.tick_s)
        self._procs.stop_all()

    def _tick(self) -> None:
        t = time.monotonic()
        dt, self._last_tick = t - self._last_tick, t
        self._keep_infra(t)
        stats = self._read_stats()
        self._reap(t, stats)
        self._promote(t)
        self._rebalance()
        self._scale(t, stats)
        self._finish_drains(t, stats)
        self._write_targets()
        census = Census(
            t=self.now(),
            starting={n: sum(w.state == STARTING for w in ws) for n, ws in self._workers.items()},
            ready={n: sum(w.state == READY for w in ws) for n, ws in self._workers.items()},
            draining={n: sum(w.state == DRAINING for w in ws) for n, ws in self._workers.items()},
            rebalancing=False,
            ready_names={n: frozenset(w.name for w in ws if w.state == READY) for n, ws in self._workers.items()},
        )
        self.counters.worker_seconds += dt * sum(len(ws) for ws in self._workers.values())
        if stats is not None:
            point = self._stat_point(t, stats, census)
            with self._lock:
                self._history.append(point)
        self._census = census

    def _keep_infra(self, t: float) -> None:
        if not self.settings.restart_infra:
            return
        if self._haproxy is not None and not self._haproxy.alive() and t >= self._retry["haproxy"]:
            log.warning("haproxy exited (code %s); restarting it", self._haproxy.exit_code())
            self._procs.stop(self._haproxy)
            try:
                self._haproxy = self._spawn_haproxy()
                self.counters.haproxy_restarts += 1
                self._backoff["haproxy"] = 1.0
                for ws in self._workers.values():
                    for w in ws:
                        w.registered = False
                        if w.state == READY:
                            w.state = STARTING
            except RuntimeError as err:
                log.error("haproxy restart failed: %s; retrying in %.0f s", err, self._backoff["haproxy"])
                self._retry["haproxy"] = t + self._backoff["haproxy"]
                self._backoff["haproxy"] = min(30.0, 2 * self._backoff["haproxy"])
        if self._prometheus is not None and not self._prometheus.alive() and t >= self._retry["prometheus"]:
            self._retry["prometheus"] = t + self._backoff["prometheus"]
            self._backoff["prometheus"] = min(60.0, 2 * self._backoff["prometheus"])
            log.warning("prometheus exited (code %s); restarting it", self._prometheus.exit_code())
            self._procs.stop(self._prometheus)
            try:
                self._prometheus = self._spawn_prometheus()
                self.counters.prometheus_restarts += 1
                self._backoff["prometheus"] = 1.0
            except RuntimeError as err:
                log.error("prometheus restart failed: %s", err)

    def _read_stats(self) -> list[hap.ServerStat] | None:
        try:
            return self.admin.stats()
        except hap.HAProxyError as err:
            self.counters.haproxy_errors += 1
            log.debug("show stat failed: %s", err)
            return None

    def _reap(self, t: float, stats: list[hap.ServerStat] | None) -> None:
        """Notice dead or hung workers, take them out of HAProxy; ``_scale`` replaces them."""
        status = {(s.proxy, s.name): s.status for s in stats or [] if s.kind == "server"}
        for name, ws in self._workers.items():
            for w in list(ws):
                if w.child.alive():
                    st = status.get((name, w.name), "")
                    if w.state == READY and w.registered and st.startswith("DOWN"):
                        w.down_since = w.down_since or t
                        if t - w.down_since < self.settings.down_timeout_s:
                            continue
                        log.warning("worker %s/%s fails its health checks for %.1f s; replacing it",
                                    name, w.name, t - w.down_since)
                    else:
                        w.down_since = None
                        continue
                else:
                    log.warning("worker %s/%s (pid %d) died (exit code %s); replacing it",
                                name, w.name, w.child.pid, w.child.exit_code())
                self.counters.worker_deaths += 1
                self._retire(w, ws)

    def _retire(self, w: Worker, ws: list[Worker]) -> None:
        """Stop a worker and take it out of HAProxy.

        HAProxy 2.6.12 crashes (SIGSEGV) when a server is deleted after it
        was the last usable one of its backend, even once new servers were
        added. Such a server is only put in maintenance (no traffic, no
        checks) and left there; a restart of HAProxy clears it.
        """
        if w.registered:
            others = any(o is not w and o.registered and o.state in (READY, DRAINING) for o in ws)
            try:
                if others:
                    self.admin.remove_server(w.service, w.name)
                else:
                    self.admin.raw(f"set server {w.service}/{w.name} state maint")
                    self.counters.servers_left_in_maint += 1
            except hap.HAProxyError as err:
                self.counters.servers_left_in_maint += 1
                if "connections attached" not in str(err):
                    self.counters.haproxy_errors += 1
                log.info("%s/%s left in maintenance in haproxy (%s)", w.service, w.name, err)
        self._procs.stop(w.child, grace_s=1.0)
        self.counters.workers_stopped += 1
        ws.remove(w)

    def _promote(self, t: float) -> None:
        """Register workers whose /healthz answers; give up on those that never start."""
        for name, ws in self._workers.items():
            for w in list(ws):
                if w.state != STARTING or t < w.retry_at:
                    continue
                if not _healthy(self.settings.host, w.port):
                    if t - w.created > self.settings.startup_timeout_s:
                        log.warning("worker %s/%s not ready after %.0f s: %s", name, w.name, t - w.created, w.child.log_tail())
                        self._retire(w, ws)
                    continue
                try:
                    if not w.registered:
                        self.admin.add_server(name, w.name, self.settings.host, w.port, self.settings.concurrency,
                                              inter_ms=self.settings.health_inter_ms)
                        w.registered = True
                except hap.HAProxyError as err:
                    self.counters.haproxy_errors += 1
                    w.retry_at = t + 0.5
                    log.warning("registering %s/%s in haproxy failed (%s); retrying", name, w.name, err)
                    continue
                w.state = READY
                if w.ready_at is None:
                    w.ready_at = t
                    self.counters.cold_starts_s.append(t - w.created)

    def _rebalance(self) -> None:
        with self._lock:
            requests = list(self._requests)
            self._requests.clear()
        for verb in requests:
            if verb == REBALANCE_SPREAD:
                self._spread()

    def _spread(self) -> None:
        """Weights inversely proportional to each worker's measured service time (100 = average)."""
        for name, ws in self._workers.items():
            ready = [w for w in ws if w.state == READY]
            times = {w.name: self._service_time.get((name, w.name), math.nan) for w in ready}
            known = [v for v in times.values() if v > 0]
            ref = float(np.median(known)) if known else math.nan
            for w in ready:
                v = times[w.name]
                weight = int(np.clip(round(100 * ref / v), 10, 256)) if v > 0 and ref > 0 else 100
                try:
                    self.admin.set_weight(name, w.name, weight)
                except hap.HAProxyError as err:
                    self.counters.haproxy_errors += 1
                    log.warning("set weight %s/%s failed: %s", name, w.name, err)

    def _scale(self, t: float, stats: list[hap.ServerStat] | None) -> None:
        desired = self.desired()
        sessions = {(s.proxy, s.name): s.scur for s in stats or [] if s.kind == "server"}
        for name, ws in self._workers.items():
            live = [w for w in ws if w.state in (STARTING, READY)]
            want = desired[name]
            for _ in range(want - len(live)):
                self._spawn_worker(name)
            if len(live) <= want:
                continue
            surplus = len(live) - want
            starting = sorted((w for w in live if w.state == STARTING), key=lambda w: -w.created)
            for w in starting[:surplus]:
                self._retire(w, ws)
                surplus -= 1
            ready = sorted((w for w in live if w.state == READY),
                           key=lambda w: (sessions.get((name, w.name), 0), -(w.ready_at or 0.0)))
            for w in ready[:surplus]:
                self._drain(w)

    def _drain(self, w: Worker) -> None:
        w.state, w.drain_since = DRAINING, time.monotonic()
        if not w.registered:
            return
        try:
            self.admin.drain(w.service, w.name)
        except hap.HAProxyError as err:
            self.counters.haproxy_errors += 1
            log.warning("drain %s/%s failed (%s); it is removed when its drain times out", w.service, w.name, err)

    def _finish_drains(self, t: float, stats: list[hap.ServerStat] | None) -> None:
        sessions = {(s.proxy, s.name): s.scur + s.qcur for s in stats or [] if s.kind == "server"}
        for name, ws in self._workers.items():
            for w in list(ws):
                if w.state != DRAINING or w.drain_since is None:
                    continue
                busy = sessions.get((name, w.name), 0 if stats is not None else 1)
                if busy == 0 or t - w.drain_since > self.settings.drain_timeout_s:
                    self._retire(w, ws)

    def _spawn_worker(self, service: str) -> Worker:
        self._serial += 1
        name = f"w{self._serial}"
        port = free_port(self.settings.host)
        s = self.settings
        argv = [
            sys.executable, "-I", "-S", str(WORKER_SCRIPT), "--port", str(port), "--host", s.host,
            "--service", service, "--name", name, "--cpu-s", repr(s.cpu_s), "--wait-s", repr(s.wait_s),
            "--warmup-s", repr(s.warmup_s), "--concurrency", str(s.concurrency), "--tag", str(self.run_dir),
        ]
        child = self._procs.spawn(f"{service}/{name}", argv, self.run_dir / "logs" / f"{service}-{name}.log")
        w = Worker(service, name, port, child, created=time.monotonic())
        self._workers[service].append(w)
        self.counters.workers_started += 1
        return w

    def _write_targets(self) -> None:
        current = frozenset(
            (w.service, w.name, w.port) for ws in self._workers.values() for w in ws if w.state in (READY, DRAINING)
        )
        if current == self._targets_written:
            return
        targets = [prom.worker_target(self.settings.host, port, svc, name) for svc, name, port in sorted(current)]
        prom.write_targets(self.targets_file, targets)
        self._targets_written = current

    def _stat_point(self, t: float, stats: list[hap.ServerStat], census: Census) -> StatPoint:
        front = {s.proxy: s for s in stats if s.kind == "FRONTEND"}
        back = {s.proxy: s for s in stats if s.kind == "BACKEND"}
        ready_names = {(w.service, w.name) for ws in self._workers.values() for w in ws if w.state == READY}
        busy = {n: 0 for n in self._names}
        for s in stats:
            if s.kind == "server" and (s.proxy, s.name) in ready_names:
                busy[s.proxy] += s.scur
        return StatPoint(
            t=t,
            req_tot={n: front[n].req_tot if n in front else 0 for n in self._names},
            hrsp_5xx={n: front[n].hrsp_5xx if n in front else 0 for n in self._names},
            qcur={n: back[n].qcur if n in back else 0 for n in self._names},
            busy_slots=busy,
            ready=dict(census.ready),
            ttime_ms={n: back[n].ttime_ms if n in back else 0 for n in self._names},
        )

    # ------------------------------------------------------------------ metrics

    def _metrics(self, arrivals: list[float], util: list[float], p95: list[float], backlog: list[float],
                 dropped: list[float], hot_spot: float) -> Metrics:
        census = self._census
        S = len(self._names)
        ready = np.array([[census.ready.get(n, 0) for n in self._names]], dtype=np.float64)
        virtual = virtual_nodes(self.scenario, self._pool_of,
                                [census.ready.get(n, 0) + census.draining.get(n, 0) for n in self._names],
                                [census.starting.get(n, 0) for n in self._names])
        desired = self.desired()
        return Metrics(
            time_s=np.array([self.now()]),
            arrivals_rps=np.array([arrivals], dtype=np.float64).reshape(1, S),
            ready=ready,
            desired=np.array([[desired[n] for n in self._names]], dtype=np.float64),
            utilisation=np.array([util], dtype=np.float64).reshape(1, S),
            latency_p95_s=np.array([p95], dtype=np.float64).reshape(1, S),
            backlog=np.array([backlog], dtype=np.float64).reshape(1, S),
            dropped=np.array([dropped], dtype=np.float64).reshape(1, S),
            nodes_ready=virtual.ready[None],
            nodes_provisioning=virtual.provisioning[None],
            packing=virtual.packing[None],
            cost_rate_usd_h=np.array([virtual.cost_rate_usd_h]),
            hot_spot=np.array([hot_spot]),
            rebalancing=np.array([1.0 if census.rebalancing else 0.0]),
        )

    def _utilisation(self, name: str, rows: list[tuple[str, float]], ready: frozenset[str], since: float) -> float:
        """Mean busy fraction of the ready workers that Prometheus has a rate for (HPA's "pods with metrics").

        A worker that became ready inside the window has no rate until its
        second scrape; averaging per worker keeps it from diluting the
        utilisation right after a scale-up, when it matters most. With no
        such worker, total busy time over the mean ready count.
        """
        c = self.settings.concurrency
        per_worker = [v / c for worker, v in rows if worker in ready and v == v]
        if per_worker:
            return float(np.clip(np.mean(per_worker), 0.0, 1.0))
        mean_ready = self._mean_ready(name, since)
        total = sum(v for _, v in rows if v == v)
        return float(np.clip(total / (c * mean_ready), 0.0, 1.0)) if mean_ready > 0 else math.nan

    def _mean_ready(self, name: str, since: float) -> float:
        points = [p.ready.get(name, 0) for p in self._history_copy() if p.t >= since]
        return float(np.mean(points)) if points else float(self._census.ready.get(name, 0))

    def _from_prometheus(self) -> MetricsSample:
        w = prom.window(self.settings.window_s)
        sel = "|".join(self._names)
        q = self.prom
        arrivals = q.by_label(f'sum by (proxy) (rate(haproxy_frontend_http_requests_total{{proxy=~"{sel}"}}[{w}]))', "proxy")
        missing = [n for n in self._names if n not in arrivals]
        if missing:
            raise prom.PrometheusError(f"prometheus has no HAProxy samples yet for {missing}")
        errors = q.by_label(f'sum by (proxy) (increase(haproxy_frontend_http_responses_total{{proxy=~"{sel}",code="5xx"}}[{w}]))', "proxy")
        queue = q.by_label(f'sum by (proxy) (haproxy_backend_current_queue{{proxy=~"{sel}"}})', "proxy")
        p95 = q.by_label(
            f'histogram_quantile(0.95, sum by (service, le) (rate(rlscale_worker_request_duration_seconds_bucket{{service=~"{sel}"}}[{w}])))',
            "service",
        )
        busy = q.query(f'rate(rlscale_worker_busy_seconds_total{{service=~"{sel}"}}[{w}])')
        served = q.query(f'rate(rlscale_worker_requests_total{{service=~"{sel}"}}[{w}])')
        served_by = {(m.get("service", ""), m.get("worker", "")): v for m, v in served}
        since = time.monotonic() - self.settings.window_s
        util, latency, hot = [], [], 0.0
        ready_names = self._census.ready_names
        for name in self._names:
            rows = [(m.get("worker", ""), v) for m, v in busy if m.get("service") == name]
            util.append(self._utilisation(name, rows, ready_names.get(name, frozenset()), since))
            times = {}
            for worker, b in rows:
                r = served_by.get((name, worker), 0.0)
                if r > 0 and b == b:
                    times[worker] = b / r
                    self._service_time[(name, worker)] = b / r
            if len(times) >= 2:
                hot = max(hot, max(times.values()) / float(np.median(list(times.values()))) - 1.0)
            value = p95.get(name, math.nan)
            latency.append(0.0 if math.isnan(value) and arrivals[name] <= 0 else value)
        metrics = self._metrics(
            [arrivals[n] for n in self._names], util, latency,
            [queue.get(n, 0.0) for n in self._names], [errors.get(n, 0.0) for n in self._names],
            float(np.clip(hot, 0.0, 10.0)),
        )
        return MetricsSample(metrics, observed_at=self.now(), source="prometheus")

    def _history_copy(self) -> list[StatPoint]:
        with self._lock:
            return list(self._history)

    def _from_haproxy_stats(self) -> MetricsSample | None:
        history = self._history_copy()
        if len(history) < 2 or time.monotonic() - history[-1].t > 3 * self.settings.tick_s + 2.0:
            return None
        last = history[-1]
        first = next((p for p in history if p.t >= last.t - self.settings.window_s), history[0])
        if last.t - first.t <= 0:
            first = history[0]
        span = last.t - first.t
        if span <= 0:
            return None
        window = [p for p in history if p.t >= first.t]
        arrivals, util, backlog, dropped, extra = [], [], [], [], {}
        for name in self._names:
            arrivals.append(max(0, last.req_tot[name] - first.req_tot[name]) / span)
            dropped.append(float(max(0, last.hrsp_5xx[name] - first.hrsp_5xx[name])))
            backlog.append(float(last.qcur[name]))
            occupancy = [p.busy_slots[name] / (self.settings.concurrency * p.ready[name]) for p in window if p.ready.get(name, 0) > 0]
            util.append(float(np.clip(np.mean(occupancy), 0.0, 1.0)) if occupancy else math.nan)
            extra[f"haproxy_ttime_avg_s:{name}"] = last.ttime_ms[name] / 1000.0
        metrics = self._metrics(arrivals, util, [math.nan] * len(self._names), backlog, dropped, 0.0)
        return MetricsSample(metrics, observed_at=self.now(), source="haproxy-stats", degraded=True, extra=extra)


def _healthy(host: str, port: int, timeout_s: float = 0.3) -> bool:
    """True if the worker answers ``GET /healthz`` with 200 (a raw socket: this runs every tick)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.sendall(b"GET /healthz HTTP/1.0\r\nHost: worker\r\n\r\n")
            head = s.recv(64)
    except OSError:
        return False
    return head.startswith(b"HTTP/1.") and head.split(b" ", 2)[1:2] == [b"200"]


_open: "weakref.WeakSet[LocalCluster]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for cluster in list(_open):
        cluster.close()


def _wait_started(child: Child, name: str, ready: Callable[[], bool], timeout_s: float, poll_s: float, what: str) -> Child:
    """Wait until a freshly spawned daemon answers ``ready()``; a clear error if it exits or times out first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{name} exited at start (code {child.exit_code()}): {child.log_tail()}")
        if ready():
            return child
        time.sleep(poll_s)
    raise RuntimeError(f"{name} did not {what} within {timeout_s:g} s: {child.log_tail()}")


def open_local_cluster(
    scenario: Scenario | str,
    run_dir: str | Path | None = None,
    settings: LocalSettings | None = None,
    initial_replicas: Sequence[int] | None = None,
    wait_ready: bool = True,
    timeout_s: float = 60.0,
) -> LocalCluster:
    """Start a local cluster for ``scenario`` and return it (call ``close()``, or use it as a context manager).

    ``run_dir`` holds the generated configs, logs and Prometheus' data (a new
    temporary directory when None). ``initial_replicas`` per service defaults
    to each service's ``initial_replicas`` or ``min_replicas`` (at least 1).
    With ``wait_ready`` it returns once HAProxy, Prometheus and the initial
    workers are up. Raises ConfigError (one line) when haproxy or prometheus
    is not installed.
    """
    sc = load_scenario(scenario)
    if initial_replicas is None:
        initial = [max(1, s.initial_replicas if s.initial_replicas is not None else s.min_replicas) for s in sc.services]
    else:
        initial = [int(r) for r in initial_replicas]
        if len(initial) != len(sc.services):
            raise ConfigError(f"initial_replicas: expected {len(sc.services)} values (one per service), got {len(initial)}")
    path = Path(run_dir).resolve() if run_dir is not None else Path(tempfile.mkdtemp(prefix="rlscale-local-"))
    cluster = LocalCluster(sc, path, settings or LocalSettings(), initial)
    _open.add(cluster)
    cluster.start(wait_ready=wait_ready, timeout_s=timeout_s)
    return cluster
