"""``rlscale serve``: one process running the control loop (main thread) and the HTTP API (a uvicorn thread).

The main thread owns the signals: SIGTERM/SIGINT set a stop event that the
loop checks between decisions, so the decision in progress is finished,
applied and logged; then the server is stopped, the cluster is closed (for
``--cluster local``: every process it started), the audit log is flushed
and closed, the summary is written, and the process exits 0. The handlers
are in place before a cluster is opened, so a signal during start-up stops
the run as soon as the cluster is up, and it is closed all the same.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rlscale.atomic import check_output_file, finite, write_json, write_output_json
from rlscale.config import ConfigError, Scenario, load_scenario
from rlscale.controller.audit import KEEP as AUDIT_KEEP
from rlscale.controller.audit import MAX_BYTES as AUDIT_MAX_BYTES
from rlscale.controller.audit import AuditLog
from rlscale.controller.decision import Decider
from rlscale.controller.guards import GuardConfig
from rlscale.controller.lease import open_lease, refuse_if_held, wait_for
from rlscale.controller.limits import is_loopback
from rlscale.controller.telemetry import Telemetry

CLUSTERS = ("sim", "local", "kubernetes", "none")
SUMMARY_FORMAT = "rlscale-serve-summary/1"


@dataclass
class ServeOptions:
    """Every ``rlscale serve`` flag, one field each (see ``rlscale serve --help``)."""

    model: str | None = None
    policy: str | None = None
    cluster: str = "sim"
    scenario: str = "web-diurnal"
    speedup: float = 60.0
    interval: float | None = None
    seed: int = 0
    steps: int | None = None
    dry_run: bool = False
    audit_log: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    summary: str | None = None
    keep_serving: bool = False
    max_step_change: int | None = None
    max_change_per_minute: int | None = None
    scale_down_cooldown: float = 0.0
    stale_after: float | None = None
    run_dir: str | None = None
    cluster_config: str | None = None
    take_over: bool = False
    standby: bool = False
    keda_grpc: str | None = None
    keda_tls: str | None = None
    token_file: str | None = None
    fallback_only: bool = False
    audit_max_bytes: int = AUDIT_MAX_BYTES
    audit_keep: int = AUDIT_KEEP
    force: bool = False
    history: str | None = None
    history_days: float = 7.0
    history_services: tuple[str, ...] = ()


TOKEN_FILE_LIMIT = 4096


def resolve_token(token: str | None, token_file: str | None) -> str | None:
    """The bearer token from ``--token``/``RLSCALE_TOKEN`` or ``--token-file`` (one of them), stripped; never echoed."""
    if token is not None and token_file is not None:
        raise ConfigError("--token and --token-file: give one of them, not both")
    if token_file is not None:
        path = Path(token_file)
        try:
            if not path.is_file():
                raise ConfigError(f"--token-file {token_file}: not a regular file")
            if path.stat().st_size > TOKEN_FILE_LIMIT:
                raise ConfigError(f"--token-file {token_file}: over {TOKEN_FILE_LIMIT} bytes; expected one token")
            token = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"--token-file {token_file}: cannot read ({err.strerror})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"--token-file {token_file}: not UTF-8 text") from None
        token = token.strip()
        if not token or any(c.isspace() or not c.isprintable() for c in token):
            raise ConfigError(f"--token-file {token_file}: expected one token of printable characters without spaces")
        return token
    if token is not None and not token.strip():
        raise ConfigError("--token: expected a non-empty token")
    return None if token is None else token.strip()


def check_bind(host: str, token: str | None) -> None:
    """Only loopback without a token: anything reachable from elsewhere must authenticate its callers."""
    if not is_loopback(host) and not token:
        raise ConfigError(f"--host {host}: binding a non-loopback address needs --token (or RLSCALE_TOKEN)")


@dataclass
class LoadedPolicy:
    name: str
    version: str
    make: Any  # () -> a fresh Policy instance


def load_policy(
    model: str | None, policy: str | None, scenario: Scenario, baseline: Callable[[str, Scenario], Any] | None = None
) -> LoadedPolicy:
    """``--policy SPEC``, the one front door (``--model DIR`` is its alias for ``--policy ppo:DIR``).

    ``baseline`` builds a baseline from its spec (default ``make_policy``; the
    local cluster passes ``scaled_policy``).
    """
    from rlscale.policies import make_policy, parse_spec, policy_builder

    if model and policy:
        raise ConfigError("--model and --policy: give one of them, not both (--model DIR is --policy ppo:DIR)")
    if model:
        policy = f"ppo:{model}"
    if not policy:
        raise ConfigError("serve: give --policy ppo:models/NAME (an exported policy) or --policy hpa|static|target_tracking|predictive")
    spec = parse_spec(policy)
    if spec.is_model:
        from rlscale.policies.network import resolve_model_dir

        exported, build = policy_builder(spec, scenario, name=spec.text)
        root = resolve_model_dir(str(spec.path))
        version = str(exported.card.get("version") or exported.card.get("policy_sha256") or _sha256(root / "policy.npz"))
        build()  # a generalist outside its trained range: refuse now, not at the first decision
        return LoadedPolicy(spec.text, version[:16], build)
    from rlscale import __version__

    make = baseline or make_policy
    make(spec.text, scenario)
    return LoadedPolicy(spec.text, __version__, lambda: make(spec.text, scenario))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bind_socket(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as err:
        raise ConfigError(f"--host {host} --port {port}: cannot listen ({err.strerror or err})") from None
    return sock


class _Server:
    """uvicorn in a thread, on a socket we bound ourselves (so a busy port is a one-line error)."""

    def __init__(self, app: Any, sock: socket.socket, reject: Any = None, limits: Any = None) -> None:
        import uvicorn

        from rlscale.controller.limits import HttpLimits, RejectLog, limited_protocol

        protocol = limited_protocol(limits or HttpLimits(), reject or RejectLog())
        # proxy_headers off: the API is served directly, so the client is the socket's peer, never a header's claim
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=5,
                                http=protocol, proxy_headers=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, name="rlscale-http", daemon=True)

    def start(self, timeout: float = 30.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError("serve: the HTTP server did not start (see the messages above)")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def local_settings(interval: float) -> Any:
    """``LocalSettings`` for ``--interval``, with a one-line error naming the flag when the interval is too short."""
    from rlscale.clusters.local import LocalSettings

    floor = 2 * LocalSettings.scrape_s
    if not interval >= floor:
        raise ConfigError(f"--interval {interval:g}: the local cluster needs at least {floor:g} s (two Prometheus scrapes per interval)")
    return LocalSettings(interval_s=interval)


def open_cluster(opts: ServeOptions, scenario: Scenario, interval: float, history_days: float = 0.0) -> Any:
    """The cluster the loop drives (None for ``--cluster none``); the local one is running and ready when this returns.

    ``history_days``: the simulated cluster's episode carries that many days before it (a policy that reads history).
    """
    if opts.cluster == "sim":
        from rlscale.clusters.simulated import SimulatedCluster

        return SimulatedCluster(scenario, seed=opts.seed, steps=opts.steps, speedup=opts.speedup, history_days=history_days)
    if opts.cluster == "local":
        from rlscale.clusters.local import open_local_cluster
        from rlscale.clusters.local.supervisor import attach

        attached = None if opts.run_dir is None else attach(opts.run_dir, scenario)
        if attached is not None:  # `rlscale cluster up` runs the data plane: drive it, leave it running at exit
            return attached
        try:
            run_dir = None if opts.run_dir is None else Path(opts.run_dir).resolve()  # HAProxy needs an absolute socket path
            return open_local_cluster(scenario, run_dir, local_settings(interval))
        except RuntimeError as err:
            raise ConfigError(f"--cluster local: {err}") from None
    if opts.cluster == "kubernetes":
        from rlscale.clusters.kubernetes import load_settings
        from rlscale.clusters.kubernetes.backend import open_kubernetes_cluster

        cluster, hpas = open_kubernetes_cluster(scenario, load_settings(opts.cluster_config), dry_run=opts.dry_run, take_over=opts.take_over)
        cluster.taken_over = hpas
        return cluster
    return None


def served_history(opts: ServeOptions, scenario: Scenario, interval: float, policy: Any, cluster: Any) -> dict[str, Any]:
    """Hand a policy that reads history its past (``--history``, or the simulator's own warm-up days) and say
    what it has: the status ``/v1/status``, the gauge and the audit log report (DESIGN.md section 15)."""
    from rlscale.controller import history as served

    services = tuple(s.name for s in scenario.services)
    from rlscale.policies.history import days_wanted

    if not days_wanted(policy) or not callable(getattr(policy, "load_history", None)):
        if opts.history:
            raise ConfigError(f"--history: the policy {opts.policy or opts.model!r} reads no history")
        return served.history_status(None, services)
    if not 0 < opts.history_days <= 14:
        raise ConfigError(f"--history-days {opts.history_days:g}: expected more than 0 and at most 14")
    now = float(cluster.now()) if cluster is not None else time.time()
    past: tuple[np.ndarray, float] | None = None
    if opts.history and opts.history.startswith("prometheus="):
        from rlscale.assess.service import load_service

        queries = {}
        for path in opts.history_services:
            svc = load_service(path)
            queries[svc.service] = svc.queries.arrivals_rps
        missing = [s for s in services if s not in queries]
        if missing:
            raise ConfigError(f"--history prometheus: no --history-service file for service(s) {', '.join(missing)}")
        got = served.fetch_history_prometheus(opts.history.partition("=")[2], queries, services, interval,
                                              opts.history_days, now)
        past = (got.series, now - interval)
    elif opts.history:
        got = served.read_history_csv(opts.history, services, interval, opts.history_days)
        past = (got.series, now - interval)
    elif cluster is not None and callable(getattr(cluster, "past", None)):
        past = cluster.past()
    if past is not None:
        policy.load_history(0, past[0], past[1])
    status = served.history_status(policy.history_days(), services)
    if getattr(policy, "calibration", None) is not None:
        from rlscale.rollout import calibrate

        calibrate(policy, scenario)
        status["calibrated_level"] = float(policy.base[0])
    return status


def recalibrate(loop: Any, policy: Any, api_policy: Any, scenario: Scenario, interval: float,
                history_state: dict[str, Any], audit: Any) -> None:
    """The HTTP API's policy takes the start's calibration; both follow the daily recalibration
    (``history.Recalibration``), which ``/v1/status`` and the audit log's ``recalibrated`` event report."""
    from rlscale.controller.history import Recalibration

    if history_state.get("calibrated_level") is not None and callable(getattr(api_policy, "settle", None)):
        api_policy.settle(policy.base)

    def changed(level: float) -> None:
        history_state["calibrated_level"] = level
        audit.write({"kind": "event", "event": "recalibrated", "calibrated_level": level,
                     "days": round(float(np.max(policy.history_days())), 3)})

    also = (api_policy,) if callable(getattr(api_policy, "settle", None)) else ()
    loop.listeners.append(Recalibration(policy, scenario, interval, also=also, on_change=changed))


def describe_local(cluster: Any) -> dict[str, Any]:
    """Where to reach a local cluster: one URL per service, Prometheus, the run directory (also ``<run-dir>/cluster.json``)."""
    return {
        "services": {name: cluster.url(name) for name in cluster.services()},
        "prometheus": cluster.prometheus_url,
        "run_dir": str(cluster.run_dir),
        "serve_pid": os.getpid(),
    }


def serve(opts: ServeOptions) -> int:
    """Run ``rlscale serve`` until done or signalled; returns the exit code."""
    if opts.cluster not in CLUSTERS:
        raise ConfigError(f"--cluster {opts.cluster}: expected one of {', '.join(CLUSTERS)}")
    token = resolve_token(opts.token, opts.token_file)
    check_bind(opts.host, token)
    if opts.summary:  # at start, not after hours of serving
        check_output_file(opts.summary, "--summary", ours=SUMMARY_FORMAT, force=opts.force)
    scenario = load_scenario(opts.scenario)
    if opts.cluster == "kubernetes":  # the cluster config's min/max replicas are the bounds the guard rails enforce
        from rlscale.clusters.kubernetes import load_settings

        scenario = load_settings(opts.cluster_config).bounded(scenario)
    if opts.keda_grpc and opts.cluster == "none":
        raise ConfigError("--keda-grpc serves the control loop's decisions: it needs --cluster sim, local or kubernetes")
    interval = float(opts.interval if opts.interval is not None else scenario.step_s)
    if opts.cluster == "local" and opts.interval is None and opts.run_dir is not None:
        from rlscale.clusters.local.supervisor import read_state

        running = read_state(Path(opts.run_dir).resolve())  # attaching: decide at the interval its rates are measured over
        interval = float(running.get("interval_s") or interval) if running is not None else interval
    if opts.cluster == "sim" and interval != scenario.step_s:
        raise ConfigError(f"--interval {interval:g}: the simulated cluster of {scenario.name!r} steps every {scenario.step_s:g} s; expected that")
    config = GuardConfig.from_scenario(
        scenario, interval, opts.max_step_change, opts.max_change_per_minute, opts.scale_down_cooldown, opts.stale_after
    )
    baseline: Callable[[str, Scenario], Any] | None = None
    if opts.cluster == "local":
        from rlscale.clusters.local.baselines import scaled_policy

        local_settings(interval)
        baseline = scaled_policy
    loaded = load_policy(opts.model, opts.policy, scenario, baseline)

    def fallback() -> Any:
        """The HPA a decider falls back to: rescaled like the baselines on the local cluster, Decider's default elsewhere."""
        return None if baseline is None else baseline("hpa", scenario)

    loop_decider = Decider(scenario, loaded.make(), config, fallback=fallback())
    api_decider = Decider(scenario, loaded.make(), config, fallback=fallback())
    if loop_decider.mismatch and not opts.fallback_only:
        raise ConfigError(
            f"{loaded.name}: {loop_decider.mismatch}; pass --fallback-only to serve the HPA rule with it anyway"
        )
    loop_decider.warm_up()
    api_decider.warm_up()
    telemetry = Telemetry(config.services, loaded.name, loaded.version, opts.dry_run)
    from rlscale.policies.history import days_wanted

    sim_days = opts.history_days if days_wanted(loop_decider.policy) and not opts.history else 0.0
    cluster: Any = open_cluster(opts, scenario, interval, sim_days) if opts.cluster == "sim" else None

    lease = open_lease(opts)  # one deciding controller per cluster: refuse here, before anything is opened
    leading = refuse_if_held(lease, opts.standby)
    run_id = uuid.uuid4().hex[:12]
    audit_path = audit_log_path(opts.audit_log)
    appending = audit_path.is_file() and audit_path.stat().st_size > 0
    try:
        audit = AuditLog(audit_path, run=run_id, max_bytes=opts.audit_max_bytes, keep=opts.audit_keep,
                         on_error=telemetry.audit_write_errors.inc)
        try:
            sock = bind_socket(opts.host, opts.port)
        except ConfigError:
            audit.close()
            raise
    except ConfigError:
        if lease is not None:
            lease.release()
        raise
    if audit.repaired_bytes:
        print(f"audit log {audit_path}: removed a torn last line ({audit.repaired_bytes} bytes) left by an earlier crash", file=sys.stderr)
    if loop_decider.mismatch:
        print(f"warning: {loaded.name}: {loop_decider.mismatch}; --fallback-only: every decision falls back to the HPA rule", file=sys.stderr)

    stop = threading.Event()
    loop: Any = None
    keda: Any = None
    server: _Server | None = None

    role = {"lease": "leader" if leading else "standby"}
    history_state: dict[str, Any] = {}

    def status() -> dict[str, Any]:
        held: dict[str, Any] = {} if lease is None else {"lease": role["lease"]}
        days = getattr(loop_decider.policy, "history_days", None)
        if callable(days) and history_state.get("reads_history"):
            from rlscale.controller.history import history_status

            history_state.update(history_status(days(), config.services))
        if history_state:
            held["history"] = dict(history_state)
        if loop is None:
            return {"loop": "standby" if role["lease"] == "standby" else "off", **held}
        state = "lease_lost" if loop.lease_lost else "done" if loop.completed else "stopping" if stop.is_set() else "running"
        return {"loop": state, "decisions": loop.decisions, **held}

    def start_server() -> _Server:
        from rlscale.controller.api import create_app
        from rlscale.controller.limits import RejectLog

        reject = RejectLog(lambda code: telemetry.http_rejected.labels(str(code)).inc())
        app = create_app(api_decider, telemetry, audit, token=token, status=status, policy_name=loaded.name, reject=reject)
        started = _Server(app, sock, reject)
        started.start()
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        print(f"rlscale serve: {loaded.name} on cluster {opts.cluster} ({scenario.name}); listening on http://{shown}:{port}", flush=True)
        return started

    audit.write({
        "kind": "event", "event": "start", "policy": loaded.name, "version": loaded.version,
        "cluster": opts.cluster, "scenario": scenario.name, "seed": opts.seed, "dry_run": opts.dry_run,
        "guards": config.to_dict(), "model_mismatch": loop_decider.mismatch, "repaired_torn_line_bytes": audit.repaired_bytes,
    })
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if lease is not None and not leading:  # the standby answers /healthz and /v1/decide while it waits
            server = start_server()
            print(f"standing by: {lease.what} is held ({lease.holder() or 'holder unknown'}); taking over when it is free", flush=True)
            audit.write({"kind": "event", "event": "lease_standby", "lease": lease.what, "holder": lease.holder()})
            waited = wait_for(lease, stop)
            leading = waited is not None
            if leading:
                role["lease"] = "leader"
                print(f"took over: {lease.what} after {waited:.1f} s on standby", flush=True)
                audit.write({"kind": "event", "event": "lease_acquired", "lease": lease.what, "waited_s": round(float(waited or 0.0), 3)})
        if opts.cluster in ("local", "kubernetes") and leading:
            if not logging.getLogger().handlers:  # the backend's warnings (a dead worker, a Prometheus outage), timestamped
                logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            cluster = open_cluster(opts, scenario, interval)
            for hpa in getattr(cluster, "taken_over", []):
                print(f"warning: --take-over: {hpa}; delete it or the two will fight", file=sys.stderr)
                audit.write({"kind": "event", "event": "take_over", "hpa": hpa})
        history_state.update(served_history(opts, scenario, interval, loop_decider.policy, cluster))
        if history_state.get("reads_history"):
            for name, d in history_state["days"].items():
                telemetry.history_days.labels(name).set(d)
            audit.write({"kind": "event", "event": "history", **history_state})
            if history_state["history_free"]:
                print(f"note: {', '.join(history_state['history_free'])}: less than {history_state['min_days']:g} day of "
                      "demand history; served history-free until a day has been seen", file=sys.stderr)
        if cluster is not None:
            from rlscale.controller.loop import ControlLoop

            loop = ControlLoop(
                cluster, loop_decider, audit, telemetry, interval_s=interval, speedup=getattr(cluster, "speedup", 1.0),
                steps=opts.steps, dry_run=opts.dry_run, stop=stop, may_act=None if lease is None else lease.held,
            )
        if server is None:
            server = start_server()
        if opts.cluster == "local" and cluster is not None:
            where = describe_local(cluster)
            write_json(Path(where["run_dir"]) / "cluster.json", where)
            urls = ", ".join(f"{name} {url}" for name, url in where["services"].items())
            print(f"local cluster: {urls}; prometheus {where['prometheus']}; run dir {where['run_dir']}", flush=True)
        if loop is not None and getattr(loop_decider.policy, "calibration", None) is not None:
            recalibrate(loop, loop_decider.policy, api_decider.policy, scenario, interval, history_state, audit)
        if opts.keda_grpc and loop is not None:
            from rlscale.controller.keda import DecisionBoard, KedaServer

            board = DecisionBoard(config.services)
            keda = KedaServer(board, opts.keda_grpc, max_age_s=max(10.0, 5 * interval / loop.speedup), tls_dir=opts.keda_tls).start()
            loop.listeners.append(board.publish)
            print(f"keda external scaler: grpc on {keda.host}:{keda.port}", flush=True)
        print(f"audit log: {audit_path}" + (f" (appended to: earlier runs' lines are in it too; this run is {run_id})"
                                            if appending else ""), flush=True)
        # Everything start-up made lives as long as the process: keep it out of the collector's full passes, which
        # otherwise walk every imported module's objects (~100 ms, stalling the HTTP and gRPC threads with the GIL)
        gc.collect()
        gc.freeze()
        if loop is not None and not stop.is_set():
            loop.run()
        if loop is not None and loop.lease_lost and lease is not None:
            role["lease"] = "lost"
            print(f"error: {lease.what}: lost the lease; stopped acting (another controller may be deciding)", file=sys.stderr, flush=True)
            audit.write({"kind": "event", "event": "lease_lost", "lease": lease.what})
        elif loop is None or opts.keep_serving:
            stop.wait()
    finally:
        if keda is not None:
            keda.stop()
        if server is not None:
            server.stop()
        else:
            sock.close()
        result: dict[str, Any] = {
            "run": run_id, "policy": loaded.name, "version": loaded.version, "cluster": opts.cluster,
            "scenario": scenario.name, "seed": opts.seed, "dry_run": opts.dry_run,
        }
        if loop is not None:
            result.update(loop.summary())
            result["steps"] = getattr(cluster, "steps_taken", loop.decisions)
        totals = getattr(cluster, "totals", None)
        if totals is not None:
            result["metrics"] = totals()
        if cluster is not None:
            try:
                cluster.close()
            except Exception as err:  # noqa: BLE001 - still close the audit log and write the summary
                print(f"error: closing the {opts.cluster} cluster: {type(err).__name__}: {err}", file=sys.stderr)
                result["close_error"] = f"{type(err).__name__}: {str(err)[:200]}"
        if lease is not None:
            lease.release()
            result["lease"] = role["lease"]
        if opts.cluster == "local" and cluster is not None:
            result["local"] = {
                "run_dir": str(cluster.run_dir), "counters": asdict(cluster.counters), "started_pids": cluster.started_pids(),
            }
        if opts.cluster == "kubernetes" and cluster is not None:
            result["kubernetes"] = {"counters": asdict(cluster.counters), "taken_over": list(cluster.taken_over)}
        audit.write({"kind": "event", "event": "stop", "summary": result})
        audit.close()
        result["audit"] = audit.health()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        write_summary(opts.summary, result, force=opts.force)
        print(stop_line(result, audit_path), flush=True)
    return 1 if role["lease"] == "lost" else 0


def audit_log_path(asked: str | None) -> Path:
    """``--audit-log``, or a new file per run under ``runs/serve/`` named by its start time (runs never mix in one log)."""
    if asked:
        path = Path(asked)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path("runs/serve") / f"audit-{stamp}.jsonl"
        n = 1
        while path.exists():
            n += 1
            path = Path("runs/serve") / f"audit-{stamp}-{n}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def stop_line(result: dict[str, Any], audit_path: Path) -> str:
    """What a stopped controller did, in one line: decisions, fallbacks, guard rails that fired, cost so far."""
    if "decisions" not in result:
        return f"rlscale serve stopped: HTTP API only, no control loop; audit log {audit_path}"
    parts = [f"{result['decisions']} decisions" + ("" if result.get("completed") else " (stopped early)")]
    for key, what in (("fallbacks", "fell back to HPA"), ("guard_adjustments", "guard rails fired"), ("errors", "errors")):
        counts = {k: v for k, v in (result.get(key) or {}).items() if v}
        if counts:
            parts.append(f"{what} {sum(counts.values())}x (" + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")")
        else:
            parts.append(f"{what} 0x")
    cost = (result.get("metrics") or {}).get("cost_usd")
    worker_s = ((result.get("local") or {}).get("counters") or {}).get("worker_seconds")
    if isinstance(cost, (int, float)):
        parts.append(f"cost so far ${cost:.4g}")
    elif isinstance(worker_s, (int, float)):
        parts.append(f"{worker_s:.0f} worker-seconds so far")
    else:
        parts.append("cost not measured on this cluster")
    return f"rlscale serve stopped: {'; '.join(parts)}; audit log {audit_path}"


def write_summary(path: str | None, result: dict[str, Any], force: bool = False) -> None:
    """The summary at exit, wherever it can go: ``--summary`` if it can be written, else one JSON line on stderr.

    A full disk must not turn a clean stop into a traceback and a lost summary.
    """
    if path:
        try:
            write_output_json(path, result, "--summary", fmt=SUMMARY_FORMAT, force=force)
            return
        except OSError as err:
            print(f"error: --summary {path}: cannot write ({err.strerror}); the summary follows on stderr", file=sys.stderr)
        except ConfigError as err:  # the path changed while serving: still never clobbered
            print(f"error: {err}; the summary follows on stderr", file=sys.stderr)
    if path or result.get("audit", {}).get("lines_lost") or result.get("audit", {}).get("write_errors"):
        try:
            print(json.dumps(finite(result), separators=(",", ":")), file=sys.stderr, flush=True)
        except OSError:
            pass
