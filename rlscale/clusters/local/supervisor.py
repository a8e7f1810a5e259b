"""The local cluster's data plane under its own supervisor, so it outlives the controller (DESIGN.md section 12).

In Kubernetes a dead autoscaler leaves the pods running at their last count.
Here, ``rlscale serve --cluster local`` used to own HAProxy, Prometheus and
every worker, so ``kill -9`` of the controller took all traffic down with it
(1,081 failed requests in one run). Now:

* ``rlscale cluster up`` starts a detached supervisor process (its own
  session, not a child that dies with the shell) that runs a ``LocalCluster``
  (HAProxy, Prometheus, workers, reconciled every tick) and answers on a
  Unix socket in the run directory (``control.sock``, mode 0600), one JSON
  line per request: ``state``, ``metrics``, ``apply``;
* ``rlscale serve --cluster local --run-dir DIR`` finds ``DIR/supervisor.json``
  and *attaches* (``AttachedCluster``): it reads metrics and sets desired
  counts through the socket. When the controller dies, the supervisor keeps
  the last desired count and traffic keeps flowing; a restarted controller
  attaches again and reads the current counts as its starting point;
* ``rlscale cluster down`` asks the supervisor to stop (SIGTERM: it stops
  every worker, HAProxy and Prometheus and removes its socket and state
  file), then kills anything still running with the run directory on its
  command line, so nothing is left behind; ``status`` reports what runs.

The supervisor's children still die with the supervisor (``procs.py``), so
a crashed supervisor leaves no orphan either.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from rlscale.atomic import write_json
from rlscale.clusters.base import MetricsSample
from rlscale.clusters.local.backend import Counters
from rlscale.clusters.local.procs import pid_running, pids_with_arg
from rlscale.clusters.local.settings import LocalSettings
from rlscale.config import ConfigError, Scenario, load_scenario
from rlscale.spaces import Action, Metrics

STATE_FILE = "supervisor.json"
SOCKET_FILE = "control.sock"
MAX_LINE = 1 << 20
log = logging.getLogger("rlscale.clusters.local.supervisor")


# --------------------------------------------------------------------------- the wire format


def metrics_to_json(m: Metrics) -> dict[str, Any]:
    return {k: None if v is None else np.asarray(v, dtype=np.float64).tolist() for k, v in m.__dict__.items()}


def metrics_from_json(d: dict[str, Any]) -> Metrics:
    return Metrics(**{k: None if v is None else np.asarray(v, dtype=np.float64) for k, v in d.items()})


def _send(sock_path: Path, request: dict[str, Any], timeout_s: float = 5.0) -> dict[str, Any]:
    """One request, one answer; raises OSError (unreachable) or RuntimeError (the supervisor said no)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(str(sock_path))
        s.sendall(json.dumps(request).encode() + b"\n")
        chunks, size = [], 0
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if chunk.endswith(b"\n") or size > MAX_LINE:
                break
    answer = json.loads(b"".join(chunks) or b"{}")
    if "error" in answer:
        raise RuntimeError(str(answer["error"]))
    return dict(answer)


# --------------------------------------------------------------------------- the supervisor process


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline(MAX_LINE)
        try:
            request = json.loads(line)
            answer = self.server.supervisor.answer(request)  # type: ignore[attr-defined]
        except Exception as err:  # noqa: BLE001 - a bad request must not stop the supervisor
            answer = {"error": f"{type(err).__name__}: {str(err)[:200]}"}
        self.wfile.write(json.dumps(answer).encode() + b"\n")


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


class Supervisor:
    """The process behind ``rlscale cluster up``: one ``LocalCluster`` and its control socket."""

    def __init__(self, scenario: Scenario, scenario_path: str, run_dir: Path, settings: LocalSettings) -> None:
        from rlscale.clusters.local.backend import open_local_cluster

        self.run_dir = run_dir
        self.cluster = open_local_cluster(scenario, run_dir, settings)
        self.socket_path = run_dir / SOCKET_FILE
        self.socket_path.unlink(missing_ok=True)
        self.server = _Server(str(self.socket_path), _Handler)
        os.chmod(self.socket_path, 0o600)
        self.server.supervisor = self  # type: ignore[attr-defined]
        self.state = {
            "pid": os.getpid(),
            "scenario": scenario_path,
            "scenario_name": scenario.name,
            "services": {n: self.cluster.url(n) for n in self.cluster.services()},
            "prometheus": self.cluster.prometheus_url,
            "run_dir": str(run_dir),
            "socket": str(self.socket_path),
            "t0_monotonic": self.cluster._t0,
            "start_s": self.cluster.settings.start_s,
            "interval_s": self.cluster.settings.interval_s,
            "started_at": time.time(),
        }

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        c = self.cluster
        if op == "metrics":
            sample = c.read_metrics()
            if sample is None:
                return {"sample": None}
            return {"sample": {"metrics": metrics_to_json(sample.metrics), "observed_at": sample.observed_at,
                               "source": sample.source, "degraded": sample.degraded, "extra": sample.extra}}
        if op == "apply":
            replicas = np.asarray(request["replicas"], dtype=np.int64)
            c.apply(Action(replicas=replicas[None], rebalance=np.array([int(request.get("rebalance", 0))])))
            return {"desired": c.desired()}
        if op == "state":
            census = c.census()
            return {
                **self.state, "desired": c.desired(), "ready": census.ready, "starting": census.starting,
                "draining": census.draining, "counters": asdict(c.counters), "started_pids": c.started_pids(),
                "haproxy_pid": c.haproxy_pid, "prometheus_pid": c.prometheus_pid, "worker_pids": c.worker_pids(),
            }
        raise ValueError(f"unknown op {op!r}")

    def run(self, stop: threading.Event) -> None:
        thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        thread.start()
        # cluster.json: the shape `serve` writes, so `rlscale loadgen --target RUN_DIR` finds the URL before any controller runs
        write_json(self.run_dir / "cluster.json", {k: self.state[k] for k in ("services", "prometheus", "run_dir")})
        write_json(self.run_dir / STATE_FILE, self.state)
        stop.wait()
        self.server.shutdown()
        self.server.server_close()
        self.cluster.close()
        self.socket_path.unlink(missing_ok=True)
        (self.run_dir / STATE_FILE).unlink(missing_ok=True)
        (self.run_dir / "cluster.json").unlink(missing_ok=True)


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the local cluster's supervisor (started by `rlscale cluster up`)")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--interval", type=float, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run_dir = Path(args.run_dir).resolve()
    scenario = load_scenario(args.scenario)
    try:
        supervisor = Supervisor(scenario, args.scenario, run_dir, LocalSettings(interval_s=args.interval))
    except (ConfigError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    supervisor.run(stop)
    return 0


# --------------------------------------------------------------------------- the commands


def read_state(run_dir: Path) -> dict[str, Any] | None:
    """The running supervisor's state file, or None when none runs there (a stale file is ignored)."""
    try:
        state = json.loads((run_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not pid_running(int(state.get("pid", -1))):
        return None
    return state


def up(scenario: str, run_dir: str | Path, interval: float | None = None, timeout_s: float = 90.0) -> dict[str, Any]:
    """Start the supervisor detached and wait until it answers; returns its state."""
    from rlscale.clusters.local.procs import require_binary

    root = Path(run_dir).resolve()
    if len(str(root / SOCKET_FILE).encode()) > 100:  # AF_UNIX paths end at 108 bytes (HAProxy's socket lives here too)
        raise ConfigError(f"--run-dir {run_dir}: path too long for the cluster's Unix sockets (at most ~90 characters)")
    running = read_state(root)
    if running is not None:
        raise ConfigError(f"--run-dir {run_dir}: a local cluster already runs there (supervisor pid {running['pid']})")
    sc = load_scenario(scenario)  # a bad scenario is one line here, not a dead daemon
    if interval is not None:
        LocalSettings(interval_s=interval)
    require_binary("haproxy")
    require_binary("prometheus")
    (root / "logs").mkdir(parents=True, exist_ok=True)
    (root / STATE_FILE).unlink(missing_ok=True)
    scenario_arg = str(Path(scenario).resolve()) if Path(scenario).exists() else sc.name
    argv = [sys.executable, "-m", "rlscale.clusters.local.supervisor", "--run-dir", str(root), "--scenario", scenario_arg]
    if interval is not None:
        argv += ["--interval", repr(float(interval))]
    with open(root / "logs" / "supervisor.log", "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,  # noqa: S603
                                start_new_session=True, close_fds=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = read_state(root)
        if state is not None and state.get("pid") == proc.pid:
            return state
        if proc.poll() is not None:
            tail = (root / "logs" / "supervisor.log").read_text(errors="replace").strip().splitlines()[-1:]
            raise ConfigError(f"rlscale cluster up: the supervisor exited ({' '.join(tail)[:300]})")
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    down(root)
    raise ConfigError(f"rlscale cluster up: not ready within {timeout_s:.0f} s (logs in {root / 'logs'})")


EXIT_RUNNING, EXIT_NOT_ANSWERING, EXIT_NOT_RUNNING = 0, 1, 3
"""``rlscale cluster status`` exits as an LSB init script's ``status`` does: 0 running (and answering), 1 a
supervisor or processes of the cluster that do not answer, 3 not running; ``cluster down`` exits 3 when
nothing ran there and 2 when the run directory does not exist (a mistyped ``--run-dir``)."""


def status_code(state: dict[str, Any]) -> int:
    """The exit code of ``cluster status`` for ``status``'s answer (see ``EXIT_RUNNING``)."""
    if state["running"]:
        return EXIT_RUNNING if state.get("answering") else EXIT_NOT_ANSWERING
    return EXIT_NOT_ANSWERING if state.get("leftover_pids") else EXIT_NOT_RUNNING


def status(run_dir: str | Path) -> dict[str, Any]:
    """What runs in ``run_dir``: the supervisor's live state, or ``{"running": False}``."""
    root = Path(run_dir).resolve()
    state = read_state(root)
    if state is None:
        return {"running": False, "run_dir": str(root), "leftover_pids": pids_with_arg(str(root))}
    try:
        live = _send(Path(state["socket"]), {"op": "state"})
    except (OSError, RuntimeError, ValueError) as err:
        return {"running": True, "answering": False, "error": str(err)[:200], **state}
    return {"running": True, "answering": True, **live}


def down(run_dir: str | Path, timeout_s: float = 30.0) -> dict[str, Any]:
    """Stop the supervisor and everything it started; then kill whatever still names ``run_dir``; nothing is left."""
    root = Path(run_dir).resolve()
    state = read_state(root)
    stopped: list[int] = []
    if state is not None:
        pid = int(state["pid"])
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout_s
        while pid_running(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_running(pid):
            os.kill(pid, signal.SIGKILL)
        stopped.append(pid)
    leftovers = pids_with_arg(str(root))
    for pid in leftovers:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 10.0
    while pids_with_arg(str(root)) and time.monotonic() < deadline:
        time.sleep(0.1)
    (root / STATE_FILE).unlink(missing_ok=True)
    (root / SOCKET_FILE).unlink(missing_ok=True)
    return {"run_dir": str(root), "supervisor": stopped, "killed_leftovers": leftovers, "remaining": pids_with_arg(str(root))}


# --------------------------------------------------------------------------- the controller's side


class AttachedCluster:
    """The ``Cluster`` protocol over a running supervisor; ``close`` detaches and leaves the data plane running."""

    speedup = 1.0

    def __init__(self, state: dict[str, Any], scenario: Scenario) -> None:
        self.state = state
        self.socket_path = Path(state["socket"])
        self.run_dir = Path(state["run_dir"])
        self._names = list(state["services"])
        wanted = [s.name for s in scenario.services]
        if wanted != self._names:
            raise ConfigError(
                f"--run-dir {self.run_dir}: the running local cluster has services {self._names}, "
                f"the scenario {scenario.name!r} has {wanted}"
            )
        self._t0 = float(state["t0_monotonic"])
        self._start_s = float(state["start_s"])
        self.errors = 0

    def services(self) -> list[str]:
        return list(self._names)

    def now(self) -> float:
        """The supervisor's clock (CLOCK_MONOTONIC is shared by every process): a restarted controller continues it."""
        return self._start_s + time.monotonic() - self._t0

    def url(self, service: str | None = None, path: str = "/work") -> str:
        base = self.state["services"][service or self._names[0]]
        return base.rsplit("/", 1)[0] + path

    @property
    def prometheus_url(self) -> str:
        return str(self.state["prometheus"])

    def read_metrics(self) -> MetricsSample | None:
        answer = _send(self.socket_path, {"op": "metrics"}, timeout_s=10.0)
        s = answer.get("sample")
        if s is None:
            return None
        return MetricsSample(metrics_from_json(s["metrics"]), observed_at=float(s["observed_at"]), source=str(s["source"]),
                             degraded=bool(s["degraded"]), extra={k: float(v) for k, v in s.get("extra", {}).items()
                                                                   if isinstance(v, (int, float)) and not math.isnan(v)})

    def apply(self, action: Action) -> None:
        replicas = np.asarray(action.replicas, dtype=np.int64).reshape(-1).tolist()
        rebalance = int(np.asarray(action.rebalance).reshape(-1)[0]) if np.size(action.rebalance) else 0
        _send(self.socket_path, {"op": "apply", "replicas": replicas, "rebalance": rebalance})

    def live(self) -> dict[str, Any]:
        return _send(self.socket_path, {"op": "state"})

    @property
    def counters(self) -> Counters:
        try:
            return Counters(**self.live()["counters"])
        except (OSError, RuntimeError, ValueError, TypeError):
            return Counters()

    def started_pids(self) -> list[int]:
        try:
            return [int(p) for p in self.live()["started_pids"]]
        except (OSError, RuntimeError, ValueError):
            return []

    def close(self) -> None:
        """Detach: the supervisor keeps the replicas at their last count."""


def attach(run_dir: str | Path, scenario: Scenario) -> AttachedCluster | None:
    """The running cluster in ``run_dir`` (None when there is none)."""
    state = read_state(Path(run_dir).resolve())
    if state is None:
        return None
    cluster = AttachedCluster(state, scenario)
    try:
        cluster.live()
    except (OSError, RuntimeError, ValueError) as err:
        raise ConfigError(f"--run-dir {run_dir}: the local cluster's supervisor (pid {state['pid']}) does not answer ({err})") from None
    return cluster


if __name__ == "__main__":
    sys.exit(_main())
