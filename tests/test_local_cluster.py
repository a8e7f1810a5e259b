"""The local cluster: real workers behind HAProxy, metrics from Prometheus, load from a replayed trace.

Fast tests pin down the pieces (configs, parsing, the load generator against
one real worker); the slow ones run the whole thing on 127.0.0.1, driven by
the controller (``rlscale serve --cluster local`` as a real process, or its
``ControlLoop`` in-process where a test needs the cluster object), and check
scaling, faults and that no process outlives the cluster.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from rlscale.clusters.base import Cluster
from rlscale.clusters.local import LocalSettings, open_local_cluster
from rlscale.clusters.local import haproxy as hap
from rlscale.clusters.local.baselines import scaled_policy
from rlscale.clusters.local.calibrate import skeleton
from rlscale.clusters.local.procs import ProcessTable, free_port, pid_running, pids_with_arg
from rlscale.clusters.local.prometheus import PrometheusClient
from rlscale.config import ConfigError, load_scenario
from rlscale.controller import ControlLoop, Decider, GuardConfig
from rlscale.clusters.local.loadgen import Plan, check_target, plan, replay, schedule
from rlscale.policies import make_policy
from rlscale.spaces import Metrics

WORKER = Path(__file__).resolve().parents[1] / "rlscale" / "clusters" / "local" / "worker.py"
HAVE_BINARIES = all(
    any(os.access(os.path.join(d, b), os.X_OK) for d in os.environ.get("PATH", "").split(os.pathsep))
    for b in ("haproxy", "prometheus")
)
needs_binaries = pytest.mark.skipif(not HAVE_BINARIES, reason="haproxy and prometheus are not installed (.ci/run installs them)")
REAL_CLUSTER = pytest.mark.xdist_group("real-cluster")
"""Timed real-cluster tests share one pytest-xdist worker (``--dist loadgroup``): never two such clusters on 2 cores at once."""
pytestmark = REAL_CLUSTER


def _constant_plan(rate: float, seconds: float) -> Plan:
    return Plan(rates=np.full(1, rate), interval_s=seconds, source="constant", trace_step_s=seconds, speedup=1.0, duration_s=seconds)


def _no_leftovers(pids: list[int], run_dir: Path) -> list[int]:
    return [p for p in pids if pid_running(p)] + pids_with_arg(str(run_dir))


def _scenario_file(path: Path, step_s: float, max_workers: int, initial: int) -> Path:
    """The calibration skeleton (SLO p95 0.2 s, 1..max_workers workers) as a YAML file ``rlscale serve`` can load."""
    data = skeleton(LocalSettings(), step_s, max_workers, 0.2).model_dump(mode="json", exclude_none=True)
    data["name"] = "local-test"
    data["services"][0]["initial_replicas"] = initial
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Served:
    """``rlscale serve --cluster local --policy hpa`` as a real process, with its audit log, summary and output files."""

    def __init__(self, tmp_path: Path, scenario: Path, interval_s: float) -> None:
        self.run_dir = tmp_path / "run"
        self.audit = tmp_path / "audit.jsonl"
        self.summary = tmp_path / "summary.json"
        self.out, self.err = tmp_path / "serve.out", tmp_path / "serve.err"
        cmd = [
            sys.executable, "-m", "rlscale.cli", "serve", "--cluster", "local", "--scenario", str(scenario), "--policy", "hpa",
            "--interval", str(interval_s), "--run-dir", str(self.run_dir), "--port", "0", "--audit-log", str(self.audit),
            "--summary", str(self.summary),
        ]
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        deadline = time.monotonic() + 90
        while "local cluster:" not in self.out.read_text():
            assert self.proc.poll() is None and time.monotonic() < deadline, f"serve did not start: {self.err.read_text()[-2000:]}"
            time.sleep(0.1)
        self.cluster = json.loads((self.run_dir / "cluster.json").read_text())
        self.url = self.cluster["services"]["api"]
        self.prom = PrometheusClient(self.cluster["prometheus"])

    def pid_of(self, binary: str) -> int:
        """The PID of the cluster's ``binary`` process (found by its run directory in /proc)."""
        for pid in pids_with_arg(str(self.run_dir)):
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            if Path(argv0).name == binary:
                return pid
        raise AssertionError(f"no {binary} process for {self.run_dir}")

    def decisions(self) -> list[dict]:
        lines = [json.loads(line) for line in self.audit.read_text().splitlines() if line.strip()]
        return [line for line in lines if line["kind"] == "decision"]

    def stop(self) -> dict:
        """SIGTERM, as an operator would; returns the summary written at exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=60) == 0, self.err.read_text()[-2000:]
        return json.loads(self.summary.read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def _metrics(replicas: float, utilisation: float) -> Metrics:
    one = np.ones((1, 1))
    return Metrics(
        time_s=np.zeros(1), arrivals_rps=one * 10, ready=one * replicas, desired=one * replicas, utilisation=one * utilisation,
        latency_p95_s=one * 0.1, backlog=0 * one, dropped=0 * one, nodes_ready=one * replicas, nodes_provisioning=0 * one,
        packing=one, cost_rate_usd_h=np.zeros(1), hot_spot=np.zeros(1), rebalancing=np.zeros(1),
    )


# --------------------------------------------------------------------------- fast: the pieces


def test_haproxy_config_has_a_frontend_and_backend_per_service_and_the_exporter(tmp_path):
    text = hap.render_config(tmp_path / "h.sock", {"api": 18001, "batch": 18002}, 18003, queue_timeout_s=2.5)
    assert "frontend api\n    bind 127.0.0.1:18001" in text
    assert "backend batch" in text
    assert "level admin expose-fd listeners" in text
    assert "timeout queue 2500ms" in text
    assert "use-service prometheus-exporter" in text
    assert "X-Request-Start %[date(0,us)]" in text


def test_service_names_that_haproxy_cannot_take_are_a_one_line_config_error():
    with pytest.raises(ConfigError, match="letters, digits"):
        hap.check_name("my service")


def test_show_stat_csv_is_parsed_into_frontend_backend_and_server_rows():
    text = (
        "# pxname,svname,qcur,qmax,scur,smax,slim,stot,status,weight,hrsp_5xx,req_tot,ttime,rtime\n"
        "api,FRONTEND,,,3,9,8192,120,OPEN,,2,118,,\n"
        "api,w1,0,0,1,1,1,60,UP,100,0,,41,40\n"
        "api,BACKEND,4,9,3,9,800,120,UP,200,2,118,55,40\n"
    )
    rows = {r.name: r for r in hap.parse_show_stat(text)}
    assert rows["FRONTEND"].req_tot == 118 and rows["FRONTEND"].hrsp_5xx == 2
    assert rows["w1"].kind == "server" and rows["w1"].status == "UP" and rows["w1"].slim == 1
    assert rows["BACKEND"].qcur == 4 and rows["BACKEND"].ttime_ms == 55


def test_runtime_api_errors_are_retried_then_raised_as_haproxy_error(tmp_path):
    admin = hap.HAProxyAdmin(tmp_path / "absent.sock", retries=2, backoff_s=0.01)
    with pytest.raises(hap.HAProxyError, match="runtime API"):
        admin.raw("show info")
    assert admin.ping() is False


def test_a_missing_binary_is_a_one_line_error_saying_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match=r"haproxy: not found on PATH.*apt-get install -y haproxy"):
        open_local_cluster(skeleton(LocalSettings(), 3.0, 4, 0.2), tmp_path / "run", LocalSettings(interval_s=3))


def test_settings_out_of_range_are_a_config_error():
    with pytest.raises(ConfigError, match="max_workers"):
        LocalSettings(max_workers=0)
    with pytest.raises(ConfigError, match="loopback"):
        LocalSettings(host="0.0.0.0")


def test_worker_defaults_give_linear_capacity_within_one_core_for_eight_workers():
    s = LocalSettings()
    assert s.worker_rps == pytest.approx(25.0)
    assert 8 * s.worker_cores <= 1.0


def test_loadgen_compresses_a_scenario_day_into_the_requested_real_time():
    p = plan("web-diurnal", speedup=1440.0, duration_s=60.0, peak_rps=50.0)
    assert p.interval_s == pytest.approx(60.0 / 1440.0)
    assert p.rates.size == 1440 and p.duration_s == pytest.approx(60.0)
    assert p.rates.max() == pytest.approx(50.0)
    assert p.rates[14 * 60] > 3 * p.rates[3 * 60]  # afternoon busier than night


def test_loadgen_replays_a_csv_trace_from_its_first_row(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("timestamp,value\n0,10\n10,20\n20,40\n")
    p = plan(str(csv), speedup=10.0, duration_s=3.0)
    assert p.interval_s == pytest.approx(1.0)
    assert p.rates.tolist() == [10.0, 20.0, 40.0]


def test_poisson_schedule_matches_the_planned_rate_and_respects_the_caps():
    p = Plan(rates=np.array([100.0, 0.0, 300.0]), interval_s=2.0, source="t", trace_step_s=2.0, speedup=1.0, duration_s=6.0)
    t = schedule(p, np.random.default_rng(0), max_requests=10_000)
    assert np.all(np.diff(t) >= 0) and t[-1] < 6.0
    counts = np.histogram(t, bins=[0, 2, 4, 6])[0]
    assert abs(counts[0] - 200) < 4 * math.sqrt(200)
    assert counts[1] == 0
    assert abs(counts[2] - 600) < 4 * math.sqrt(600)
    assert schedule(p, np.random.default_rng(0), max_requests=50).size == 50


def test_loadgen_only_targets_loopback():
    with pytest.raises(ConfigError, match="loopback"):
        check_target("http://example.com/work")
    assert check_target("http://127.0.0.1:8080/work")


def test_loadgen_measures_every_request_against_a_real_worker(tmp_path):
    port = free_port()
    procs = ProcessTable()
    argv = [sys.executable, str(WORKER), "--port", str(port), "--cpu-s", "0.001", "--wait-s", "0.004"]
    procs.spawn("worker", argv, tmp_path / "w.log")
    try:
        deadline = time.monotonic() + 10
        url = f"http://127.0.0.1:{port}/work"
        while time.monotonic() < deadline:
            try:
                import urllib.request

                urllib.request.urlopen(url, timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        result = replay(_constant_plan(40.0, 1.5), url, seed=3)
        s = result.summary()
        assert s["requests"] > 20 and s["failed"] == 0
        assert 0.004 < s["latency_p50_s"] < 1.0
        data = result.to_dict()
        assert len(data["per_request"]["latency_s"]) == s["requests"]
        json.dumps(data, allow_nan=False)
    finally:
        procs.stop_all()
    assert not any(pid_running(p) for p in procs.started_pids)


def _worker_counters(port: int) -> dict[str, float]:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    names = ("rlscale_worker_requests_total", "rlscale_worker_busy_seconds_total", "rlscale_worker_overruns_total")
    return {line.split("{")[0]: float(line.split()[-1]) for line in text.splitlines() if line.startswith(names)}


def _slot_on_a_crowded_core(tmp_path: Path, cpu_s: float, wait_s: float, requests: int) -> dict[str, float]:
    """Busy seconds and overruns per request of one worker sharing one core with three busy loops (sequential requests)."""
    import urllib.request

    core = min(os.sched_getaffinity(0))
    port = free_port()
    procs = ProcessTable()
    hogs = []
    worker = procs.spawn("worker", [sys.executable, str(WORKER), "--port", str(port), "--cpu-s", str(cpu_s),
                                    "--wait-s", str(wait_s)], tmp_path / f"w{port}.log")
    try:
        os.sched_setaffinity(worker.popen.pid, {core})
        for _ in range(3):
            hogs.append(subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{core}}})\nwhile True: pass"]))
        url = f"http://127.0.0.1:{port}/work"
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(url, timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        first = _worker_counters(port)
        for _ in range(requests):
            urllib.request.urlopen(url, timeout=5).read()
        last = _worker_counters(port)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        procs.stop_all()
    n = last["rlscale_worker_requests_total"] - first["rlscale_worker_requests_total"]
    return {"busy_s": (last["rlscale_worker_busy_seconds_total"] - first["rlscale_worker_busy_seconds_total"]) / n,
            "overrun_share": (last["rlscale_worker_overruns_total"] - first["rlscale_worker_overruns_total"]) / n}


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="pins processes to one core (Linux)")
def test_a_worker_holds_its_slot_for_its_service_time_on_a_crowded_core_and_counts_overruns_beyond_it(tmp_path):
    # 10 ms of CPU in a 120 ms slot: on a core shared with three busy loops the burn takes several times as long,
    # which the waiting part absorbs, so the worker's capacity is the one it was given
    held = _slot_on_a_crowded_core(tmp_path, cpu_s=0.01, wait_s=0.11, requests=15)
    assert 0.12 <= held["busy_s"] <= 0.12 * 1.15
    assert held["overrun_share"] <= 0.25
    # 30 ms of CPU in a 32 ms slot needs 94% of the core, which three busy loops do not leave: the slot overruns,
    # and the worker says so
    overrun = _slot_on_a_crowded_core(tmp_path, cpu_s=0.03, wait_s=0.002, requests=10)
    assert overrun["overrun_share"] >= 0.8
    assert overrun["busy_s"] > 0.032


def test_scaled_baselines_keep_hpas_scale_down_window_in_decisions_not_seconds():
    sc = skeleton(LocalSettings(), 5.0, 8, 0.2)

    def decisions_until_scale_down(policy) -> int:
        policy.reset(1)
        policy.act(_metrics(4, 0.7))
        for i in range(1, 80):
            if policy.act(_metrics(4, 0.1)).replicas[0, 0] < 4:
                return i
        return 80

    assert decisions_until_scale_down(scaled_policy("hpa", sc)) == 5, "300 s at 60 s intervals = 5 decisions"
    assert decisions_until_scale_down(make_policy("hpa", sc)) == 60, "300 s at 5 s intervals = 60 decisions"
    assert scaled_policy("static", sc).name == make_policy("static", sc).name


def test_serving_the_local_cluster_at_a_shorter_interval_than_two_scrapes_is_a_one_line_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "rlscale.cli", "serve", "--cluster", "local", "--scenario", "envs/local.yaml", "--policy", "hpa",
         "--interval", "1", "--port", "0", "--audit-log", str(tmp_path / "audit.jsonl")],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--interval 1" in lines[0] and "2 s" in lines[0]
    assert not (tmp_path / "audit.jsonl").exists() or "decision" not in (tmp_path / "audit.jsonl").read_text()


def test_calibration_writes_a_scenario_the_simulator_loads_with_the_measured_capacity(tmp_path):
    from rlscale.clusters.local.calibrate import write_scenario
    from rlscale.policies import make_policy
    from rlscale.rollout import run_policy

    measured = {
        "settings": {"cpu_s": 0.005, "wait_s": 0.035, "concurrency": 1, "warmup_s": 1.0, "interval_s": 5.0,
                     "scrape_s": 1.0, "max_workers": 8, "queue_timeout_s": 10.0},
        "workers": 2, "cold_start_s": 1.2, "capacity_rps_per_worker": 22.0, "cpu_s_per_request": 0.0065,
        "service_time_s": 1 / 22.0, "worker_rss_gib": 0.02,
        "latency_under_load": [{"utilisation": 0.5, "rps": 22.0, "p50_s": 0.05, "p95_s": 0.09, "failed": 0}],
    }
    sc = write_scenario(measured, tmp_path / "local.yaml", speedup=720.0, price_per_worker_hour=0.05)
    assert [p.name for p in sc.pools] == ["local"] and sc.pools[0].price_per_hour == 0.05
    assert sc.step_s == 5.0 and sc.services[0].cold_start_s == 1.2
    assert sc.services[0].replica_rps == pytest.approx(22.0, rel=1e-3)
    assert (tmp_path / "local-diurnal.csv").exists() and (tmp_path / "local.calibration.json").exists()
    result = run_policy(sc, make_policy("hpa", sc), [0], steps=24)
    assert result.mean()["cost_usd"] > 0


def _measured(**extra):
    return {
        "settings": {"cpu_s": 0.005, "wait_s": 0.035, "concurrency": 1, "warmup_s": 1.0, "interval_s": 5.0,
                     "scrape_s": 1.0, "max_workers": 8, "queue_timeout_s": 10.0},
        "workers": 2, "cold_start_s": 1.2, "capacity_rps_per_worker": 22.0, "cpu_s_per_request": 0.0065,
        "service_time_s": 1 / 22.0, "worker_rss_gib": 0.02,
        "latency_under_load": [{"utilisation": 0.5, "rps": 22.0, "p50_s": 0.05, "p95_s": 0.09, "failed": 0}],
        **extra,
    }


def test_calibration_writes_the_measured_hot_spot_noise_as_independent_per_interval_node_speed_noise(tmp_path):
    from rlscale.clusters.local.calibrate import write_scenario

    noisy = write_scenario(_measured(hot_spot_samples=[0.001, 0.002, 0.003, 0.002]), tmp_path / "noisy.yaml")
    assert noisy.imbalance.drift_sigma == pytest.approx(math.sqrt(math.pi) * 0.002, abs=1e-5)
    assert noisy.imbalance.drift_reversion == 1.0 and noisy.imbalance.contention == 0.0
    quiet = write_scenario(_measured(), tmp_path / "quiet.yaml")
    assert quiet.imbalance.drift_sigma == 0.0 and quiet.imbalance.drift_reversion == 0.0


def test_the_simulators_hot_spot_on_a_calibrated_scenario_is_the_measured_one_not_a_constant(tmp_path):
    from rlscale.clusters.local.calibrate import write_scenario
    from rlscale.episode import ClusterEpisodes

    sc = write_scenario(_measured(hot_spot_samples=[0.002] * 4), tmp_path / "local.yaml")
    engine = ClusterEpisodes(sc, 8)
    for i in range(8):
        engine.seed(i, i)
        engine.reset(i)
    readings = []
    for _ in range(12):
        engine.step_action(engine.decoder.decode(np.full((8, 2), [2, 0]), np.full((8, 1), 2)))
        readings.append(engine.metrics().hot_spot.copy())
    assert np.mean(readings) == pytest.approx(0.002, rel=0.3)


def test_the_like_for_like_prediction_replays_the_load_generators_own_day_per_interval():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.quality.local_cluster import replayed_day

    sc = skeleton(LocalSettings(), 5.0, 8, 0.25)
    p = plan("web-diurnal", 240.0, 360.0, 100.0, seed=0)
    trace = replayed_day(sc, 240.0, 360.0, 100.0, 0)
    assert trace.shape == (73, 1)
    assert trace[:72, 0].mean() * 72 * 5.0 == pytest.approx(p.rates.sum() * p.interval_s, rel=1e-9)
    assert trace.max() < 100.0 and p.rates.max() == pytest.approx(100.0)


def test_the_replayed_day_reports_the_room_any_policy_has_on_it():
    """A worker-seconds target must be checked against the oracle on the same rates, not taken on faith."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.quality.local_cluster import replay_prediction

    sc = load_scenario(str(Path(__file__).resolve().parents[1] / "envs" / "local.yaml"))
    out = replay_prediction(sc, ["hpa", "static"], 240.0, 360.0, 100.0, 0)
    assert list(out) == ["hpa", "static", "oracle", "oracle floor"]
    oracle, floor = out["oracle"], out["oracle floor"]["worker_seconds"]
    assert oracle["slo_violation_rate"] == 0.0 and oracle["dropped_fraction"] == 0.0
    # the floor bounds every run that met the SLO everywhere; min_replicas (2 workers for 360 s) bounds the floor
    assert 2 * 360.0 <= floor <= oracle["worker_seconds"] <= out["static"]["worker_seconds"]
    assert oracle["worker_seconds"] == pytest.approx(oracle["cost_usd"] / sc.pools[0].price_per_hour * 3600.0)


# --------------------------------------------------------------------------- slow: the whole cluster


def _spike_trace(path: Path) -> Path:
    """15 s at 15 req/s, a 6 s ramp to 60 req/s held for 20 s, then 29 s at 15 req/s (one row per second)."""
    rates = [15.0] * 15 + [25.0, 35.0, 45.0, 55.0, 60.0, 60.0] + [60.0] * 20 + [15.0] * 29
    path.write_text("timestamp,value\n" + "".join(f"{i},{r}\n" for i, r in enumerate(rates)))
    return path


@pytest.mark.slow
@needs_binaries
def test_rlscale_serve_with_hpa_scales_the_local_cluster_up_under_a_spike_and_down_after_it_and_leaves_no_process(tmp_path):
    scenario = _scenario_file(tmp_path / "local-test.yaml", step_s=3.0, max_workers=6, initial=2)
    served = Served(tmp_path, scenario, interval_s=3.0)
    try:
        trace = _spike_trace(tmp_path / "spike.csv")
        out = tmp_path / "load.json"
        t0 = time.time()
        loadgen = subprocess.Popen([
            sys.executable, "-m", "rlscale.cli", "loadgen", "--trace", str(trace), "--speedup", "1",
            "--duration", "70", "--target", served.url, "--out", str(out), "--timeout", "10",
        ])
        assert loadgen.wait(timeout=120) == 0
        time.sleep(max(0.0, t0 + 72.0 - time.time()))
        result = json.loads(out.read_text())
        served_2xx = served.prom.scalar('sum(haproxy_frontend_http_responses_total{proxy="api",code="2xx"})')
        peak = served.prom.scalar('max_over_time(count(up{job="workers"} == 1)[80s:1s])')
        summary = served.stop()
    finally:
        served.kill()
    rows = [d for d in served.decisions() if d["inputs"]["metrics"] is not None]
    t = np.array([d["wall_time"] - t0 for d in rows])
    ready = np.array([d["inputs"]["metrics"]["ready"][0] for d in rows])
    print("\n".join(f"{d['wall_time'] - t0:5.1f}s {d['inputs']['metrics_source']} rps {d['inputs']['metrics']['arrivals_rps'][0]:5.1f} "
                    f"util {d['inputs']['metrics']['utilisation'][0]} p95 {d['inputs']['metrics']['latency_p95_s'][0]} "
                    f"ready {d['inputs']['metrics']['ready'][0]:.0f} -> {d['final_action']} {d['fallback']}" for d in rows))
    assert ready[(t > 25) & (t < 45)].max() >= 4, "scaled up under the spike"
    assert ready[t > 64].min() <= 2, "scaled down after the spike"
    assert all(d["acted_by"] in ("policy", "fallback:hpa") and d["applied"] for d in rows)
    assert sum(d["fallback"] is None for d in rows) >= 0.8 * len(rows), "decided by the served HPA on Prometheus' metrics"
    assert served_2xx >= 0.97 * result["summary"]["ok"] > 0
    assert peak >= 4
    assert result["summary"]["failed_fraction"] < 0.02
    pids = summary["local"]["started_pids"]
    assert summary["decisions"] == len(served.decisions()) >= 20 and summary["errors"] == {}
    assert len(pids) >= 6
    assert _no_leftovers(pids, served.run_dir) == []


@pytest.mark.slow
@needs_binaries
def test_a_killed_worker_is_replaced_within_one_interval_and_a_killed_haproxy_is_restarted(tmp_path):
    settings = LocalSettings(interval_s=3.0, max_workers=4, warmup_s=0.3)
    sc = skeleton(settings, 3.0, 4, 0.2)
    with open_local_cluster(sc, tmp_path / "run", settings, initial_replicas=[3]) as cluster:
        assert isinstance(cluster, Cluster)
        load = threading.Thread(target=replay, args=(_constant_plan(30.0, 20.0), cluster.url()))
        load.start()
        events: dict[str, object] = {}
        decider = Decider(sc, scaled_policy("hpa", sc), GuardConfig.from_scenario(sc, 3.0), fallback=scaled_policy("hpa", sc))
        loop = ControlLoop(cluster, decider, interval_s=3.0, dry_run=True)  # watch the faults; the replicas stay at 3
        decisions = []
        for step in range(6):
            started = time.monotonic()
            decisions.append(loop.step())
            if step == 1:
                name, pid = sorted(cluster.worker_pids().items())[0]
                events["victim"] = pid
                os.kill(pid, signal.SIGKILL)
            if step == 2:
                events["replaced"] = cluster.counters.worker_deaths == 1 and events["victim"] not in cluster.worker_pids().values()
            if step == 3:
                assert cluster.haproxy_pid is not None
                os.kill(cluster.haproxy_pid, signal.SIGKILL)
            time.sleep(max(0.0, started + 3.0 - time.monotonic()))
        load.join()
        assert events["replaced"] is True
        assert cluster.counters.haproxy_restarts == 1
        assert cluster.wait_for(lambda c: c.ready.get("api", 0) == cluster.desired()["api"] == 3 and c.starting["api"] == 0, 10.0)
        assert all(d.metrics is not None and d.metrics_source for d in decisions[-2:])
        import urllib.request

        assert urllib.request.urlopen(cluster.url(), timeout=5).status == 200


@pytest.mark.slow
@needs_binaries
def test_with_prometheus_stopped_serve_decides_on_haproxy_stats_with_metrics_degraded_and_keeps_scaling(tmp_path):
    scenario = _scenario_file(tmp_path / "local-test.yaml", step_s=3.0, max_workers=4, initial=1)
    served = Served(tmp_path, scenario, interval_s=3.0)
    try:
        load = threading.Thread(target=replay, args=(_constant_plan(40.0, 18.0), served.url))
        load.start()
        prometheus = served.pid_of("prometheus")
        os.kill(prometheus, signal.SIGSTOP)  # alive but unreachable: no restart, every query times out
        stopped_at = time.time()
        time.sleep(13.0)
        os.kill(prometheus, signal.SIGCONT)
        resumed_at = time.time()
        deadline = time.monotonic() + 20
        while not any(d["wall_time"] > resumed_at and d["fallback"] is None for d in served.decisions()):
            assert time.monotonic() < deadline, "decisions did not return to Prometheus' metrics"
            time.sleep(0.5)
        load.join()
        summary = served.stop()
    finally:
        served.kill()
    decisions = served.decisions()
    outage = [d for d in decisions if stopped_at + 1.0 < d["wall_time"] < resumed_at]
    assert len(outage) >= 3
    for d in outage:
        assert d["fallback"]["reason"] == "metrics_degraded" and d["acted_by"] == "fallback:hpa" and d["applied"]
        assert d["inputs"]["metrics_source"] == "haproxy-stats" and d["inputs"]["degraded"] is True
        m = d["inputs"]["metrics"]
        assert m["latency_p95_s"] == [None] and 0.0 <= m["utilisation"][0] <= 1.0
    assert any(25 < d["inputs"]["metrics"]["arrivals_rps"][0] < 55 for d in outage)
    assert any(d["final_action"]["replicas"] != d["inputs"]["current_replicas"] for d in outage), "HPA scaled during the outage"
    assert max(d["final_action"]["replicas"][0] for d in outage) >= 2
    assert summary["fallbacks"]["metrics_degraded"] >= len(outage)
    assert summary["local"]["counters"]["prometheus_restarts"] == 0 and summary["local"]["counters"]["fallback_samples"] >= 3
    assert "falling back to HAProxy stats" in served.err.read_text()
    assert _no_leftovers(summary["local"]["started_pids"], served.run_dir) == []


@pytest.mark.slow
@needs_binaries
def test_killing_rlscale_itself_takes_every_child_process_down(tmp_path):
    run_dir = tmp_path / "run"
    script = (
        "import json, sys, time\n"
        "from rlscale.clusters.local import LocalSettings, open_local_cluster\n"
        "from rlscale.clusters.local.calibrate import skeleton\n"
        "s = LocalSettings(interval_s=3.0, warmup_s=0.1)\n"
        f"c = open_local_cluster(skeleton(s, 3.0, 4, 0.2), {str(run_dir)!r}, s, initial_replicas=[2])\n"
        "print(json.dumps(c.started_pids()), flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        pids = json.loads(line)
        assert len(pids) == 4 and all(pid_running(p) for p in pids)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _no_leftovers(pids, run_dir):
        time.sleep(0.1)
    assert _no_leftovers(pids, run_dir) == []
