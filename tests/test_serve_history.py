"""Serving a policy that reads history: loaded at start from a CSV or a real Prometheus, appended every interval,
and a service with less than a day of it served history-free, said in /v1/status, the gauge and the audit log."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from rlscale.config import ConfigError, GeneralSpec
from rlscale.controller.history import on_grid, read_history_csv
from rlscale.learn.general_eval import card_range
from rlscale.policies.network import PolicyWeights, write_exported
from rlscale.policies.relative import n_features, nvec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_serve import read_jsonl, serve_cmd, start, wait_for  # noqa: E402
from helpers import general_card  # noqa: E402


def history_weights(seed: int = 0) -> PolicyWeights:
    rng = np.random.default_rng(seed)
    sizes = [n_features(True), 16, 16]
    layers = tuple((rng.normal(0, 0.5, (o, i)).astype(np.float32), rng.normal(0, 0.1, o).astype(np.float32))
                   for i, o in zip(sizes[:-1], sizes[1:]))
    k = int(nvec(True).sum())
    return PolicyWeights(layers=layers, action_w=rng.normal(0, 1, (k, 16)).astype(np.float32),
                         action_b=np.zeros(k, np.float32), obs_mean=np.zeros(sizes[0]), obs_var=np.ones(sizes[0]),
                         obs_clip=10.0, obs_eps=1e-8, activation="tanh")


@pytest.fixture(scope="module")
def history_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "general-history"
    write_exported(out, history_weights(), general_card(card_range(GeneralSpec()), {"days": 7.0, "min_days": 1.0}))
    return out


def test_a_history_csv_is_read_onto_the_decision_grid_with_gaps_left_as_gaps(tmp_path: Path) -> None:
    csv = tmp_path / "h.csv"
    rows = ["timestamp,api"] + [f"{t},{10.0 + (t // 60) % 3}" for t in range(0, 3 * 86_400, 30) if not 3600 <= t < 7200]
    csv.write_text("\n".join(rows) + "\n")
    got = read_history_csv(csv, ("api",), 60.0, 3.0)
    assert got.series.shape == (3 * 1440, 1)
    assert np.isnan(got.series[60:120, 0]).all()  # the hour with no samples stays a gap, not zero demand
    assert np.nanmin(got.series) >= 10.0 and np.nanmax(got.series) <= 12.0


@pytest.mark.parametrize("text, expected", [
    ("time,api\n0,1\n", "first column must be 'timestamp'"),
    ("timestamp,web\n0,1\n60,1\n", "expected a column per service (api) or a 'value' column"),
    ("timestamp,api\n0,1\n60,abc\n", "line 3: expected numbers"),
    ("timestamp,api\n0,1\n60,-5\n", "line 3: a request rate must be finite and >= 0"),
])
def test_a_bad_history_csv_is_one_line_naming_the_problem(tmp_path: Path, text: str, expected: str) -> None:
    csv = tmp_path / "h.csv"
    csv.write_text(text)
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        read_history_csv(csv, ("api",), 60.0, 7.0)


def test_samples_become_means_of_the_intervals_they_close() -> None:
    """A sample at t covers (t - step, t], as a Prometheus rate over one step does."""
    ts = np.array([0.0, 30.0, 60.0, 90.0, 120.0])
    out, end = on_grid(ts, np.array([1.0, 3.0, 5.0, 7.0, 9.0]), 60.0, 180.0 / 86_400.0)
    assert end == 120.0
    assert out.tolist() == [1.0, 4.0, 8.0]


def _status(url: str) -> dict:
    return httpx.get(f"{url}/v1/status", timeout=10).json()


def _serve_on_csv_history(tmp_path: Path, model: Path, days: int, steps: int) -> tuple[subprocess.Popen, str, Path]:
    """``rlscale serve`` of ``model`` with ``days`` of a daily sine's one-minute history from a CSV; (process, url, audit log)."""
    t = np.arange(0, days * 86_400, 60)
    csv = tmp_path / "api.csv"
    csv.write_text("timestamp,value\n" + "\n".join(f"{x},{300 + 150 * np.sin(2 * np.pi * x / 86_400):.3f}" for x in t) + "\n")
    audit = tmp_path / "audit.jsonl"
    proc, url = start(serve_cmd("--policy", f"ppo:{model}", "--history", str(csv), "--history-days", str(days),
                                "--port", "0", "--speedup", "600", "--steps", str(steps), "--keep-serving",
                                "--audit-log", str(audit)), tmp_path)
    return proc, url, audit


def test_serve_loads_a_csv_history_and_reports_it_in_status_gauge_and_audit(tmp_path: Path, history_model: Path) -> None:
    proc, url, audit = _serve_on_csv_history(tmp_path, history_model, days=3, steps=20)
    try:
        wait_for(lambda: _status(url).get("loop") == "done")
        status = _status(url)["history"]
        assert status["mode"] == "history" and status["history_free"] == []
        assert 3.0 <= status["days"]["api"] <= 3.1  # three days loaded, and the intervals served appended
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert 'rlscale_history_days{service="api"} 3.0' in metrics
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    events = [r for r in read_jsonl(audit) if r.get("event") == "history"]
    assert events and events[0]["days"]["api"] == 3.0


def test_a_new_service_is_served_history_free_and_the_controller_says_so(tmp_path: Path, history_model: Path) -> None:
    csv = tmp_path / "api.csv"
    csv.write_text("timestamp,value\n" + "\n".join(f"{x},100" for x in range(0, 6 * 3600, 60)) + "\n")
    audit = tmp_path / "audit.jsonl"
    proc, url = start(serve_cmd("--policy", f"ppo:{history_model}", "--history", str(csv), "--port", "0",
                                "--speedup", "600", "--steps", "5", "--keep-serving", "--audit-log", str(audit)), tmp_path)
    try:
        wait_for(lambda: _status(url).get("loop") == "done")
        status = _status(url)["history"]
        assert status["mode"] == "history-free" and status["history_free"] == ["api"]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "api: less than 1 day of demand history; served history-free" in err
    assert [r for r in read_jsonl(audit) if r.get("event") == "history"][0]["mode"] == "history-free"


def test_history_for_a_policy_that_reads_none_is_refused_in_one_line(tmp_path: Path) -> None:
    csv = tmp_path / "api.csv"
    csv.write_text("timestamp,value\n0,1\n60,1\n")
    result = subprocess.run(serve_cmd("--policy", "hpa", "--history", str(csv), "--port", "0", "--steps", "1"),
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--history: the policy 'hpa' reads no history" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_serve_reads_history_from_a_real_prometheus(tmp_path: Path, history_model: Path) -> None:
    """A real Prometheus scrapes a real exporter on loopback; serve's query_range reads it back."""
    import shutil

    from rlscale.clusters.local.procs import free_port

    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (.ci/run installs it)")
    from prometheus_client import Counter, CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    requests = Counter("demo_requests", "requests served", registry=registry)
    exporter_port = free_port()
    server, thread = start_http_server(exporter_port, addr="127.0.0.1", registry=registry)
    prom_port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs: [{{job_name: demo, static_configs: [{{targets: ['127.0.0.1:{exporter_port}']}}]}}]\n")
    prom = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            requests.inc(50)
            time.sleep(0.5)
            try:
                r = httpx.get(f"http://127.0.0.1:{prom_port}/api/v1/query",
                              params={"query": "rate(demo_requests_total[5s])"}, timeout=2).json()
                if r["data"]["result"] and time.monotonic() > deadline - 45:
                    break
            except (httpx.HTTPError, KeyError, ValueError):
                continue
        service = tmp_path / "service.yaml"
        service.write_text(json.dumps({
            "service": "api", "queries": {"arrivals_rps": "sum(rate(demo_requests_total[5s]))", "ready": "vector(1)",
                        "latency_p95_s": "vector(0.01)"},
            "slo": {"p95_latency_s": 0.2}, "limits": {"min_replicas": 1, "max_replicas": 20},
            "pool": {"price_per_hour": 0.1}}))
        audit = tmp_path / "audit.jsonl"
        proc, url = start(serve_cmd("--policy", f"ppo:{history_model}", "--history", f"prometheus=http://127.0.0.1:{prom_port}",
                                    "--history-service", str(service), "--port", "0", "--speedup", "600", "--steps", "3",
                                    "--keep-serving", "--audit-log", str(audit)), tmp_path)
        try:
            wait_for(lambda: _status(url).get("loop") == "done")
            status = _status(url)["history"]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        # seconds of real samples: far less than a day, so the service is served history-free, and says so
        assert 0 < status["days"]["api"] < 1 and status["mode"] == "history-free"
    finally:
        prom.terminate()
        prom.wait(timeout=30)
        server.shutdown()


def test_serve_calibrates_the_shipped_generalist_on_the_loaded_history(tmp_path: Path) -> None:
    """``models/general`` reads no history features, but calibrates its base level on the days it is given."""
    model = Path(__file__).resolve().parents[1] / "models" / "general"
    assert json.loads((model / "card.json").read_text()).get("calibration"), "models/general calibrates on history"
    proc, url, audit = _serve_on_csv_history(tmp_path, model, days=3, steps=5)  # the card's min_days: 3, as GCE asks
    try:
        wait_for(lambda: _status(url).get("loop") == "done", timeout=120)
        status = _status(url)["history"]
        assert status["mode"] == "history" and 2.99 <= status["days"]["api"] <= 3.0
        assert status["calibrated_level"] in (0.65, 0.72, 0.78, 0.84, 0.9)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    events = [r for r in read_jsonl(audit) if r.get("event") == "history"]
    assert events and events[0]["calibrated_level"] == status["calibrated_level"]
