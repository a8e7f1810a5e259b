"""The local cluster's data plane outlives its controller (``rlscale cluster up|down|status``), and its metrics are true.

One real cluster for the module (HAProxy, Prometheus, workers under the
supervisor that ``rlscale cluster up`` starts), one load run against it:
``rlscale serve --cluster local`` attaches, decides for a while, and is
killed with SIGKILL; the load goes on for 30 s. The tests then read that
run: how many requests failed after the kill, whether the replicas stayed
put, whether Prometheus' p95 and utilisation (as the controller reads them)
agree with what the load generator itself measured and with the known load
over capacity, whether a restarted controller re-attaches, and whether
``down`` leaves no process behind.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from rlscale.clusters.local import LocalSettings
from rlscale.clusters.local.procs import pid_running, pids_with_arg
from rlscale.clusters.local.supervisor import attach, read_state, status
from rlscale.config import load_scenario
from rlscale.clusters.local.loadgen import replay

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_local_cluster import REAL_CLUSTER, _constant_plan, _scenario_file, needs_binaries  # noqa: E402

pytestmark = [pytest.mark.slow, needs_binaries, REAL_CLUSTER]
RATE = 24.0  # requests/s
BEFORE_KILL_S, AFTER_KILL_S = 6.0, 30.0


def rlscale(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rlscale.cli", *args], capture_output=True, text=True, timeout=timeout)


def serve(tmp_path: Path, scenario: Path, run_dir: Path, name: str) -> tuple[subprocess.Popen, Path]:
    audit = tmp_path / f"{name}.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlscale.cli", "serve", "--cluster", "local", "--scenario", str(scenario), "--policy", "hpa",
         "--run-dir", str(run_dir), "--port", "0", "--audit-log", str(audit), "--summary", str(tmp_path / f"{name}.json")],
        stdout=open(tmp_path / f"{name}.out", "w"), stderr=open(tmp_path / f"{name}.err", "w"),
    )
    return proc, audit


def decisions(audit: Path) -> list[dict]:
    if not audit.exists():
        return []
    return [d for d in (json.loads(line) for line in audit.read_text().splitlines() if line.strip()) if d["kind"] == "decision"]


def wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.fixture(scope="module")
def kill_run(tmp_path_factory):
    """Cluster up, a controller attached under load, SIGKILL, 30 s more load; Prometheus sampled the controller's way."""
    tmp = tmp_path_factory.mktemp("supervised")
    scenario = _scenario_file(tmp / "local-test.yaml", step_s=3.0, max_workers=4, initial=2)
    run_dir = tmp / "cluster"
    up = rlscale("cluster", "up", "--scenario", str(scenario), "--run-dir", str(run_dir))
    assert up.returncode == 0, up.stderr
    state = read_state(run_dir.resolve())
    assert state is not None
    run: dict = {"tmp": tmp, "scenario": scenario, "run_dir": run_dir, "state": state}
    try:
        proc, audit = serve(tmp, scenario, run_dir, "serve1")
        wait(lambda: len(decisions(audit)) >= 2, 60, "the controller attached and decided")
        load: dict = {}
        plan = _constant_plan(RATE, BEFORE_KILL_S + AFTER_KILL_S)
        sender = threading.Thread(target=lambda: load.update(result=replay(plan, state["services"]["api"]), t0=t0))
        t0 = time.time()
        sender.start()
        time.sleep(BEFORE_KILL_S)
        cluster = attach(run_dir, load_scenario(scenario))
        assert cluster is not None
        before = cluster.live()
        proc.kill()  # SIGKILL: no clean-up runs in the controller
        proc.wait()
        run["killed_at"] = time.time() - t0
        run["desired_at_kill"] = before["desired"]
        run["last_decision"] = decisions(audit)[-1]
        samples = []
        while time.time() - t0 < BEFORE_KILL_S + AFTER_KILL_S - 1.0:
            time.sleep(3.0)
            sample = cluster.read_metrics()
            live = cluster.live()
            samples.append({"at": time.time() - t0, "sample": sample, "ready": live["ready"]["api"], "desired": live["desired"]["api"]})
        sender.join(30)
        run["load"], run["samples"], run["after"] = load["result"], samples, cluster.live()
        yield run
    finally:
        rlscale("cluster", "down", "--run-dir", str(run_dir))


def test_killing_the_controller_fails_at_most_1_percent_of_requests_in_the_30_s_after(kill_run):
    result = kill_run["load"]
    after = (result.send_s >= kill_run["killed_at"]) & (result.send_s < kill_run["killed_at"] + AFTER_KILL_S)
    failed = (~result.ok[after]).sum()
    print(f"after the kill: {after.sum()} requests, {failed} failed")
    assert after.sum() >= 0.8 * RATE * (AFTER_KILL_S - 1)
    assert failed <= 0.01 * after.sum()
    assert result.summary()["failed_fraction"] <= 0.01


def test_a_dead_controller_leaves_the_replicas_at_their_last_count(kill_run):
    last = kill_run["last_decision"]["final_action"]["replicas"][0]
    assert kill_run["desired_at_kill"]["api"] == last
    assert all(s["desired"] == last for s in kill_run["samples"])
    assert kill_run["after"]["desired"]["api"] == last == kill_run["after"]["ready"]["api"]


def test_prometheus_p95_and_utilisation_agree_with_the_load_generator_and_the_load_over_capacity(kill_run):
    """While nothing scales (the controller is dead) the load and the capacity are known exactly."""
    result = kill_run["load"]
    window = LocalSettings(interval_s=3.0).resolved(3.0).window_s
    settings = LocalSettings()
    rows = []
    for s in kill_run["samples"]:
        if s["at"] < kill_run["killed_at"] + window + 2 or s["sample"] is None or s["ready"] != s["desired"]:
            continue
        m = s["sample"].metrics
        assert s["sample"].source == "prometheus" and not s["sample"].degraded
        sent = (result.send_s >= s["at"] - window) & (result.send_s < s["at"]) & result.ok
        capacity = s["ready"] * settings.worker_rps
        rows.append((float(m.arrivals_rps[0, 0]), float(m.utilisation[0, 0]), float(m.latency_p95_s[0, 0]),
                     sent.sum() / window, float(np.quantile(result.latency_s[sent], 0.95)), RATE / capacity))
    assert len(rows) >= 4
    prom_rps, prom_util, prom_p95, load_rps, load_p95, known_util = (np.array(c) for c in zip(*rows))
    print("prometheus rps/util/p95 vs loadgen rps/p95 and known utilisation:")
    print("\n".join(" ".join(f"{v:7.3f}" for v in row) for row in rows))
    assert np.mean(prom_rps) == pytest.approx(np.mean(load_rps), rel=0.1)
    assert np.mean(prom_util) == pytest.approx(np.mean(known_util), abs=0.1)
    # the workers' histogram is bucketed (40, 50, 60, 80, 100 ms ...): p95 agrees within about one bucket
    assert np.median(prom_p95) == pytest.approx(np.median(load_p95), rel=0.3)


def test_a_restarted_controller_reattaches_and_starts_from_the_clusters_replicas(kill_run, tmp_path):
    proc, audit = serve(tmp_path, kill_run["scenario"], kill_run["run_dir"], "serve2")
    try:
        wait(lambda: len(decisions(audit)) >= 2, 60, "the restarted controller attached and decided")
        first = decisions(audit)[0]
        assert first["inputs"]["current_replicas"] == [kill_run["after"]["desired"]["api"]]
        assert first["inputs"]["metrics_source"] == "prometheus"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    shown = rlscale("cluster", "status", "--run-dir", str(kill_run["run_dir"]), "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["answering"] is True, "a stopped controller leaves the cluster up"


def test_down_leaves_no_process_and_status_says_so(kill_run):
    pids = status(kill_run["run_dir"])["started_pids"] + [kill_run["state"]["pid"]]
    assert len(pids) >= 5
    down = rlscale("cluster", "down", "--run-dir", str(kill_run["run_dir"]))
    assert down.returncode == 0, down.stderr
    assert [p for p in pids if pid_running(p)] == [] and pids_with_arg(str(kill_run["run_dir"].resolve())) == []
    after = rlscale("cluster", "status", "--run-dir", str(kill_run["run_dir"]))
    assert after.returncode == 3 and "local cluster not running in" in after.stdout


def test_status_and_down_where_nothing_runs_say_not_running_and_exit_3(tmp_path):
    shown = rlscale("cluster", "status", "--run-dir", str(tmp_path))
    assert shown.returncode == 3 and shown.stdout.strip() == f"local cluster not running in {tmp_path.resolve()}"
    down = rlscale("cluster", "down", "--run-dir", str(tmp_path))
    assert down.returncode == 3 and down.stdout.strip() == f"local cluster not running in {tmp_path.resolve()}: nothing to stop"


def test_down_of_a_mistyped_run_dir_is_a_one_line_error_and_exit_2(tmp_path):
    down = rlscale("cluster", "down", "--run-dir", str(tmp_path / "nope"))
    assert down.returncode == 2 and down.stdout == ""
    assert down.stderr.strip() == (f"error: --run-dir {tmp_path / 'nope'}: no such directory; expected the run directory "
                                   "given to `rlscale cluster up`")
