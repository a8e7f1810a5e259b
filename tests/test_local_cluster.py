"""The local cluster: real workers behind HAProxy, metrics from Prometheus, load from a replayed trace.

Fast tests pin down the pieces (configs, parsing, the load generator against
one real worker); the slow ones run the whole thing on 127.0.0.1 and check
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

from rlscale.clusters.base import Cluster
from rlscale.clusters.drive import drive, scaled_policy
from rlscale.clusters.local import LocalSettings, open_local_cluster
from rlscale.clusters.local import haproxy as hap
from rlscale.clusters.local.calibrate import skeleton
from rlscale.clusters.local.procs import ProcessTable, free_port, pid_running, pids_with_arg
from rlscale.config import ConfigError
from rlscale.loadgen import Plan, check_target, plan, replay, schedule

WORKER = Path(__file__).resolve().parents[1] / "rlscale" / "clusters" / "local" / "worker.py"
HAVE_BINARIES = all(
    any(os.access(os.path.join(d, b), os.X_OK) for d in os.environ.get("PATH", "").split(os.pathsep))
    for b in ("haproxy", "prometheus")
)
needs_binaries = pytest.mark.skipif(not HAVE_BINARIES, reason="haproxy and prometheus are not installed (.ci/run installs them)")


def _constant_plan(rate: float, seconds: float) -> Plan:
    return Plan(rates=np.full(1, rate), interval_s=seconds, source="constant", trace_step_s=seconds, speedup=1.0, duration_s=seconds)


class Hold:
    """A policy that keeps the replicas as they are (to watch faults without scaling)."""

    name = "hold"

    def reset(self, n: int = 1) -> None:
        pass

    def act(self, metrics):
        from rlscale.spaces import Action

        return Action(replicas=np.rint(metrics.desired).astype(np.int64), rebalance=np.zeros(metrics.n, dtype=np.int64))


def _no_leftovers(pids: list[int], run_dir: Path) -> list[int]:
    return [p for p in pids if pid_running(p)] + pids_with_arg(str(run_dir))


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


# --------------------------------------------------------------------------- slow: the whole cluster


def _spike_trace(path: Path) -> Path:
    """15 s at 15 req/s, a 6 s ramp to 60 req/s held for 20 s, then 29 s at 15 req/s (one row per second)."""
    rates = [15.0] * 15 + [25.0, 35.0, 45.0, 55.0, 60.0, 60.0] + [60.0] * 20 + [15.0] * 29
    path.write_text("timestamp,value\n" + "".join(f"{i},{r}\n" for i, r in enumerate(rates)))
    return path


@pytest.mark.slow
@needs_binaries
def test_hpa_on_the_local_cluster_scales_up_under_a_spike_and_down_after_it_and_leaves_no_process(tmp_path):
    settings = LocalSettings(interval_s=3.0, max_workers=6, warmup_s=0.5)
    sc = skeleton(settings, 3.0, 6, 0.2)
    run_dir = tmp_path / "run"
    cluster = open_local_cluster(sc, run_dir, settings, initial_replicas=[2])
    try:
        assert isinstance(cluster, Cluster)
        trace = _spike_trace(tmp_path / "spike.csv")
        out = tmp_path / "load.json"
        loadgen = subprocess.Popen([
            sys.executable, "-m", "rlscale.cli", "loadgen", "--trace", str(trace), "--speedup", "1",
            "--duration", "70", "--target", cluster.url(), "--out", str(out), "--timeout", "10",
        ])
        try:
            log = drive(cluster, scaled_policy("hpa", sc), duration_s=72.0, interval_s=3.0, scenario=sc)
        finally:
            assert loadgen.wait(timeout=30) == 0
        result = json.loads(out.read_text())
        ready, t = log.column("ready"), log.column("t")
        print("\n".join(f"{r['t']:5.1f}s {r['source']} rps {r.get('arrivals_rps', 0):5.1f} util {r.get('utilisation', 0):.2f} "
                        f"p95 {r.get('latency_p95_s', 0):.3f} ready {r.get('ready')} -> {r.get('desired')}" for r in log.rows))
        assert ready[(t > 25) & (t < 45)].max() >= 4, "scaled up under the spike"
        assert ready[t > 64].min() <= 2, "scaled down after the spike"
        served = cluster.prom.scalar('sum(haproxy_frontend_http_responses_total{proxy="api",code="2xx"})')
        assert served >= 0.97 * result["summary"]["ok"] > 0
        peak = cluster.prom.scalar('max_over_time(count(up{job="workers"} == 1)[80s:1s])')
        assert peak >= 4
        assert result["summary"]["failed_fraction"] < 0.02
        pids = cluster.started_pids()
    finally:
        cluster.close()
    assert len(pids) >= 6
    assert _no_leftovers(pids, run_dir) == []


@pytest.mark.slow
@needs_binaries
def test_a_killed_worker_is_replaced_within_one_interval_and_a_killed_haproxy_is_restarted(tmp_path):
    settings = LocalSettings(interval_s=3.0, max_workers=4, warmup_s=0.3)
    sc = skeleton(settings, 3.0, 4, 0.2)
    with open_local_cluster(sc, tmp_path / "run", settings, initial_replicas=[3]) as cluster:
        load = threading.Thread(target=replay, args=(_constant_plan(30.0, 20.0), cluster.url()))
        load.start()
        events: dict[str, object] = {}

        def faults(step: int, sample: object) -> None:
            if step == 1:
                name, pid = sorted(cluster.worker_pids().items())[0]
                events["victim"] = pid
                os.kill(pid, signal.SIGKILL)
                events["killed_at"] = time.monotonic()
            if step == 2:
                events["replaced"] = cluster.counters.worker_deaths == 1 and events["victim"] not in cluster.worker_pids().values()
            if step == 3:
                assert cluster.haproxy_pid is not None
                os.kill(cluster.haproxy_pid, signal.SIGKILL)

        log = drive(cluster, Hold(), duration_s=18.0, interval_s=3.0, scenario=sc, on_step=faults)
        load.join()
        assert events["replaced"] is True
        assert cluster.counters.haproxy_restarts == 1
        assert cluster.wait_for(lambda c: c.ready.get("api", 0) == cluster.desired()["api"] == 3 and c.starting["api"] == 0, 10.0)
        assert len(log.rows) >= 5 and all(r["source"] for r in log.rows[-2:])
        import urllib.request

        assert urllib.request.urlopen(cluster.url(), timeout=5).status == 200


@pytest.mark.slow
@needs_binaries
def test_with_prometheus_stopped_metrics_fall_back_to_haproxy_stats_and_the_loop_keeps_scaling(tmp_path, caplog):
    settings = LocalSettings(interval_s=3.0, max_workers=4, warmup_s=0.3, restart_infra=False)
    sc = skeleton(settings, 3.0, 4, 0.2)
    with open_local_cluster(sc, tmp_path / "run", settings, initial_replicas=[1]) as cluster:
        load = threading.Thread(target=replay, args=(_constant_plan(40.0, 16.0), cluster.url()))
        load.start()
        time.sleep(1.0)
        assert cluster.prometheus_pid is not None
        os.kill(cluster.prometheus_pid, signal.SIGTERM)
        with caplog.at_level("WARNING", logger="rlscale.clusters.local"):
            log = drive(cluster, scaled_policy("hpa", sc), duration_s=14.0, interval_s=3.0, scenario=sc)
        load.join()
        sample = cluster.read_metrics()
        assert sample is not None and sample.source == "haproxy-stats" and sample.degraded
        assert math.isnan(sample.metrics.latency_p95_s[0, 0])
        assert 0.0 <= sample.metrics.utilisation[0, 0] <= 1.0
        later = [r for r in log.rows if r["t"] > 4]
        assert all(r["source"] == "haproxy-stats" for r in later)
        assert any(25 < r["arrivals_rps"] < 55 for r in later)
        assert max(r["ready"] for r in log.rows) >= 2, "the HPA rule scaled up on HAProxy's utilisation"
        assert any("falling back to HAProxy stats" in rec.message for rec in caplog.records)


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
