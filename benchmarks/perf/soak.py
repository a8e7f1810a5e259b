"""Soak: the controller and the local cluster for a long run, with one fault every minute (not in CI).

No anchor: a reliability record (failed requests, lost audit lines, crashes, memory over time).

Usage::

    .venv/bin/python benchmarks/perf/soak.py --minutes 30 --out docs/data/soak.json

What runs, all real processes on 127.0.0.1:

* the data plane: ``rlscale cluster up`` (supervisor, HAProxy, Prometheus,
  workers; one service, 1..6 workers of 25 requests/s);
* the controllers: two ``rlscale serve --cluster local --policy hpa --run-dir
  --standby`` attached to it, each on its own port and audit log (rotated at
  4 MiB); one holds the run directory's lock and decides, the other stands
  by (``--no-standby``: one controller, restarted after its kill, as before);
* traffic: web-diurnal's Monday compressed into the run (Poisson arrivals,
  peak ``--peak-rps``) through HAProxy;
* decide-API load: ``--decide-rps`` ``POST /v1/decide`` per second from a
  client thread, to the first controller and, when it does not answer, the
  other (a standby answers ``/v1/decide`` too);
* faults, one a minute, in turn: a worker killed (SIGKILL), HAProxy killed,
  Prometheus paused (SIGSTOP for 15 s), the deciding controller killed
  (SIGKILL): the standby takes over (the time to its ``/healthz`` saying
  ``leader`` is reported) and the killed one is restarted as the new
  standby at once (without a standby: restarted 3 s later).

Reported: loop decisions made and fallbacks (from the audit logs), failed
requests inside and outside fault windows (each fault's window runs from
the fault until the fault is repaired plus ``--grace`` seconds), decide-API
answers and audit lines lost (an answered decide request whose audit line
is missing, or a gap in a run's sequence numbers), controller crashes (a
controller that exited without being killed), the standby's take-over
times and whether two controllers ever decided at once (two incarnations
whose loop decisions overlap in time), and the resident memory of the
supervisor and of each controller over time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rlscale.atomic import write_json  # noqa: E402
from rlscale.clusters.local import LocalSettings  # noqa: E402
from rlscale.clusters.local.calibrate import skeleton  # noqa: E402
from rlscale.clusters.local.procs import free_port, pids_with_arg  # noqa: E402
from rlscale.clusters.local.supervisor import read_state, status  # noqa: E402
from rlscale.clusters.local.loadgen import plan, replay  # noqa: E402

FAULTS = ("worker_kill", "haproxy_kill", "prometheus_pause", "controller_kill")


def rss_mib(pid: int | None) -> float:
    if not pid:
        return math.nan
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def rlscale(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rlscale.cli", *args], capture_output=True, text=True, timeout=180)


class Controller:
    """``rlscale serve`` attached to the cluster; restarted on the same port and audit log."""

    def __init__(self, work: Path, scenario: Path, run_dir: Path, port: int, name: str = "serve", standby: bool = False) -> None:
        self.work, self.scenario, self.run_dir, self.port = work, scenario, run_dir, port
        self.name, self.standby = name, standby
        self.audit = work / ("audit.jsonl" if name == "serve" else f"audit-{name}.jsonl")
        self.proc: subprocess.Popen[bytes] | None = None
        self.incarnations: list[dict] = []

    def start(self) -> None:
        n = len(self.incarnations)
        out = open(self.work / f"{self.name}-{n}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rlscale.cli", "serve", "--cluster", "local", "--scenario", str(self.scenario),
             "--policy", "hpa", "--run-dir", str(self.run_dir), "--port", str(self.port), "--audit-log", str(self.audit),
             "--audit-max-bytes", str(4 << 20), "--audit-keep", "50", "--summary", str(self.work / f"summary-{self.name}-{n}.json")]
            + (["--standby"] if self.standby else []),
            stdout=out, stderr=subprocess.STDOUT,
        )
        self.incarnations.append({"pid": self.proc.pid, "started": time.time(), "killed": False, "exit": None, "rss_mib": []})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited at start: {(self.work / f'{self.name}-{n}.log').read_text()[-500:]}")
            time.sleep(0.2)
        raise RuntimeError("serve did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.incarnations[-1]["killed"] = True
        self.proc.kill()
        self.incarnations[-1]["exit"] = self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.incarnations[-1]["exit"] = self.proc.wait(timeout=60)

    def lease(self) -> str | None:
        """``leader``, ``standby`` or None (not answering), from ``/healthz``."""
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).json().get("lease")
        except (httpx.HTTPError, ValueError):
            return None

    def check(self) -> None:
        """A controller that exited without being killed is a crash."""
        if self.proc is not None and self.proc.poll() is not None and self.incarnations[-1]["exit"] is None:
            self.incarnations[-1]["exit"] = self.proc.returncode
            self.incarnations[-1]["crashed"] = True
            self.start()


def decide_load(ports: list[int], rps: float, stop: threading.Event, record: list[tuple[float, int]]) -> None:
    """``POST /v1/decide`` at ``rps``, to the first port that answers (a standby answers the API as well)."""
    body = {"desired": [2], "arrivals_rps": [30.0], "utilisation": [0.6], "ready": [2], "latency_p95_s": [0.08]}
    period = 1.0 / rps
    with httpx.Client(timeout=2.0) as client:
        nxt = time.monotonic()
        while not stop.is_set():
            t = time.time()
            code = -1
            for port in ports:
                try:
                    code = client.post(f"http://127.0.0.1:{port}/v1/decide", json=body).status_code
                    break
                except httpx.HTTPError:
                    code = -1
            record.append((t, code))
            nxt += period
            stop.wait(max(0.0, nxt - time.monotonic()))


def leader_overlaps(records: list[dict]) -> int:
    """Pairs of controller runs whose loop decisions overlap in time: two controllers deciding at once."""
    spans: dict[str, list[float]] = {}
    for r in records:
        if r.get("kind") == "decision" and r.get("source") == "loop":
            span = spans.setdefault(r.get("run", ""), [r["wall_time"], r["wall_time"]])
            span[0], span[1] = min(span[0], r["wall_time"]), max(span[1], r["wall_time"])
    ordered = sorted(spans.values())
    return sum(1 for i, a in enumerate(ordered) for b in ordered[i + 1:] if b[0] < a[1])


def audit_records(audit: Path) -> list[dict]:
    files = sorted(audit.parent.glob(audit.name + ".*"), key=lambda p: -int(p.suffix[1:])) + [audit]
    out = []
    for f in files:
        for line in f.read_text().splitlines():
            if line.strip():
                out.append(json.loads(line))
    return out


def read_interval(controllers: list[Controller]) -> float | None:
    """The decision interval the controllers ran at (from a start event of the audit logs)."""
    for c in controllers:
        for r in audit_records(c.audit):
            if r.get("event") == "start":
                return float((r.get("guards") or {}).get("interval_s") or 0) or None
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--peak-rps", type=float, default=60.0)
    ap.add_argument("--decide-rps", type=float, default=10.0)
    ap.add_argument("--fault-every", type=float, default=60.0)
    ap.add_argument("--grace", type=float, default=10.0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--work", default=None, help="keep audit logs and process logs here")
    ap.add_argument("--no-standby", action="store_true", help="one controller, restarted 3 s after its kill (the soak before the lease)")
    args = ap.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="rlscale-soak-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = skeleton(LocalSettings(), 3.0, 6, 0.25).model_dump(mode="json", exclude_none=True)
    data["name"] = "soak"
    data["services"][0]["initial_replicas"] = 2
    scenario = work / "soak.yaml"
    scenario.write_text(yaml.safe_dump(data, sort_keys=False))
    run_dir = work / "cluster"
    up = rlscale("cluster", "up", "--scenario", str(scenario), "--run-dir", str(run_dir))
    if up.returncode != 0:
        print(up.stderr, file=sys.stderr)
        return 1
    supervisor_pid = int(read_state(run_dir)["pid"])
    ctl = Controller(work, scenario, run_dir, free_port(), standby=not args.no_standby)
    ctl.start()
    controllers = [ctl]
    if not args.no_standby:
        spare = Controller(work, scenario, run_dir, free_port(), name="standby", standby=True)
        spare.start()
        controllers.append(spare)
    takeovers: list[float] = []
    duration = args.minutes * 60.0
    url = read_state(run_dir)["services"]["api"]
    day = plan("web-diurnal", 86_400 / duration, duration, peak_rps=args.peak_rps, seed=1)
    load: dict = {}
    t0 = time.time()
    traffic = threading.Thread(target=lambda: load.update(result=replay(day, url, max_requests=500_000, timeout_s=10.0),
                                                          ended=time.time()))
    traffic.start()
    stop = threading.Event()
    decides: list[tuple[float, int]] = []
    api = threading.Thread(target=decide_load, args=([c.port for c in controllers], args.decide_rps, stop, decides))
    api.start()

    windows: list[dict] = []
    memory: list[dict] = []
    next_fault, k, paused = t0 + args.fault_every, 0, None
    while time.time() - t0 < duration:
        time.sleep(1.0)
        now = time.time()
        for c in controllers:
            c.check()
        if paused is not None and now >= paused["resume_at"]:
            os.kill(paused["pid"], signal.SIGCONT)
            paused["window"]["repaired"] = now - t0
            paused = None
        if int(now - t0) % 10 == 0:
            s = status(run_dir)
            for c in controllers:
                memory.append({"t": now - t0, "supervisor_mib": rss_mib(supervisor_pid), "controller_mib": rss_mib(c.proc.pid if c.proc else None),
                               "controller_pid": c.proc.pid if c.proc else None, "controller": c.name,
                               "haproxy_mib": rss_mib(s.get("haproxy_pid")), "prometheus_mib": rss_mib(s.get("prometheus_pid")),
                               "ready": s.get("ready"), "desired": s.get("desired")})
        if now < next_fault or now - t0 > duration - 20:
            continue
        kind = FAULTS[k % len(FAULTS)]
        k += 1
        next_fault += args.fault_every
        window = {"kind": kind, "start": now - t0}
        s = status(run_dir)
        if kind == "worker_kill" and s.get("worker_pids"):
            os.kill(sorted(s["worker_pids"].values())[0], signal.SIGKILL)
            window["repaired"] = now - t0 + 5.0
        elif kind == "haproxy_kill" and s.get("haproxy_pid"):
            os.kill(s["haproxy_pid"], signal.SIGKILL)
            deadline = time.time() + 30
            while time.time() < deadline and status(run_dir).get("haproxy_pid") in (None, s["haproxy_pid"]):
                time.sleep(0.2)
            window["repaired"] = time.time() - t0
        elif kind == "prometheus_pause" and s.get("prometheus_pid"):
            os.kill(s["prometheus_pid"], signal.SIGSTOP)
            paused = {"pid": s["prometheus_pid"], "resume_at": now + 15.0, "window": window}
            window["repaired"] = now - t0 + 15.0
        elif kind == "controller_kill" and len(controllers) == 1:
            ctl.kill()
            time.sleep(3.0)
            ctl.start()
            window["repaired"] = time.time() - t0
        elif kind == "controller_kill":
            leader = next((c for c in controllers if c.lease() == "leader"), controllers[0])
            other = next(c for c in controllers if c is not leader)
            leader.kill()
            killed = time.time()
            deadline = killed + 60
            while other.lease() != "leader" and time.time() < deadline:
                time.sleep(0.05)
            window["repaired"] = time.time() - t0
            window["takeover_s"] = round(time.time() - killed, 3)
            takeovers.append(window["takeover_s"])
            leader.start()  # the killed one comes back as the standby

        windows.append(window)
        print(f"{now - t0:7.1f}s {kind}", flush=True)

    if paused is not None:
        os.kill(paused["pid"], signal.SIGCONT)
    traffic.join(60)
    stop.set()
    api.join(10)
    for c in controllers:
        c.stop()
    final_exit = [c.incarnations[-1]["exit"] for c in controllers]
    down = rlscale("cluster", "down", "--run-dir", str(run_dir))
    leftovers = pids_with_arg(str(run_dir))

    result = load["result"]
    # the load generator's clock starts when its event loop does, a fraction of a second after t0: put its send times on ours
    offset = (load["ended"] - result.wall_s) - t0
    sent_at = result.send_s + offset
    in_window = np.zeros(result.send_s.size, dtype=bool)
    for w in windows:
        in_window |= (sent_at >= w["start"]) & (sent_at < w.get("repaired", w["start"]) + args.grace)
    failed = ~result.ok
    by_fault = {kind: int(sum(failed[(sent_at >= w["start"]) & (sent_at < w.get("repaired", w["start"]) + args.grace)].sum()
                              for w in windows if w["kind"] == kind)) for kind in FAULTS}

    records = [r for c in controllers for r in audit_records(c.audit)]
    loop = [r for r in records if r.get("kind") == "decision" and r.get("source") == "loop"]
    api_lines = sum(1 for r in records if r.get("kind") == "decision" and r.get("source") == "api")
    api_ok = sum(1 for _, code in decides if code == 200)
    gaps = 0
    by_run: dict[str, list[int]] = {}
    for r in records:
        by_run.setdefault(r.get("run", ""), []).append(int(r["seq"]))
    for seqs in by_run.values():
        gaps += (max(seqs) - min(seqs) + 1) - len(seqs)
    decide_failed = [(t - t0) for t, code in decides if code != 200]
    decide_failed_outside = [t for t in decide_failed if not any(w["start"] <= t < w.get("repaired", w["start"]) + args.grace for w in windows)]

    def growth(series: list[float]) -> float:
        values = [v for v in series if v == v]
        if len(values) < 6:
            return math.nan
        head = float(np.median(values[len(values) // 10: len(values) // 10 + 3]))
        tail = float(np.median(values[-3:]))
        return tail / head - 1.0

    controller_growth = []
    for inc in [inc for c in controllers for inc in c.incarnations]:
        series = [m["controller_mib"] for m in memory if m["controller_pid"] == inc["pid"]]
        if len(series) >= 6:
            controller_growth.append(growth(series))
    summary = {
        "minutes": args.minutes,
        "faults": {kind: sum(w["kind"] == kind for w in windows) for kind in FAULTS},
        "requests": int(result.status.size),
        "failed_requests": int(failed.sum()),
        "failed_inside_fault_windows": int(failed[in_window].sum()),
        "failed_outside_fault_windows": int(failed[~in_window].sum()),
        "failed_by_fault": by_fault,
        "failed_outside_examples": [[round(float(t), 2), int(c)] for t, c in
                                    zip(sent_at[failed & ~in_window][:20], result.status[failed & ~in_window][:20])],
        "loadgen_clock_offset_s": round(offset, 3),
        "latency_p95_s": result.summary()["latency_p95_s"],
        "loop_decisions": len(loop),
        "loop_fallbacks": sum(1 for r in loop if r.get("fallback")),
        "loop_fallback_reasons": {k2: sum(1 for r in loop if (r.get("fallback") or {}).get("reason") == k2)
                                  for k2 in sorted({(r.get("fallback") or {}).get("reason") for r in loop} - {None})},
        "decide_requests": len(decides),
        "decide_answered": api_ok,
        "decide_failed_outside_fault_windows": len(decide_failed_outside),
        "api_audit_lines": api_lines,
        "audit_lines_lost": max(0, api_ok - api_lines) + gaps,
        "audit_seq_gaps": gaps,
        "audit_files": len(list(work.glob("audit*.jsonl*"))),
        "controller_incarnations": sum(len(c.incarnations) for c in controllers),
        "controller_crashes": sum(1 for c in controllers for inc in c.incarnations if inc.get("crashed")),
        "controller_final_exit": final_exit,
        "standby": len(controllers) > 1,
        "takeover_s": takeovers,
        "takeover_s_max": max(takeovers) if takeovers else None,
        "interval_s": read_interval(controllers),
        "two_controllers_deciding_at_once": leader_overlaps(records),
        "supervisor_rss_mib_first_last": [memory[len(memory) // 10]["supervisor_mib"], memory[-1]["supervisor_mib"]] if memory else None,
        "supervisor_rss_growth": growth([m["supervisor_mib"] for m in memory]),
        "controller_rss_growth_per_incarnation_max": max(controller_growth) if controller_growth else math.nan,
        "cluster_down_exit": down.returncode,
        "leftover_processes": leftovers,
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        failures = [[round(float(t), 3), int(c)] for t, c in zip(sent_at[failed], result.status[failed])]
        write_json(Path(args.out), {"summary": summary, "fault_windows": windows, "memory": memory, "failed_requests": failures,
                                    "decide_failures": [[round(t - t0, 3), c] for t, c in decides if c != 200], "work": str(work)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
