"""``rlscale assess`` against Prometheus-shaped answers from a real HTTP server on loopback, and the shadow report.

The faults (an unreachable Prometheus, a metric that is missing, a
10-minute gap) are injected where they happen: in what an HTTP server
answers to ``/api/v1/query_range``. The server speaks Prometheus' wire
format for a history the simulator itself produced, so the fit's answer is
known: a replica of 20 req/s and 50 ms of service.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from helpers import PrometheusStub

from rlscale.assess.fit import fit_service, replay
from rlscale.assess.history import AssessError, History
from rlscale.assess.run import assess
from rlscale.assess.service import load_service
from rlscale.clusters.local.procs import free_port
from rlscale.config import ConfigError, load_scenario

ROOT = Path(__file__).resolve().parents[1]
STEP = 60.0
T0 = 1_790_000_000.0
N = 240  # four hours of one-minute intervals
CAPACITY, WORK_S = 20.0, 0.05


def service_yaml(tmp: Path, **history: object) -> Path:
    data = {
        "service": "api",
        "queries": {"arrivals_rps": "arrivals", "ready": "ready", "latency_p95_s": "p95", "utilisation": "util",
                    "cold_start_s": "cold"},
        "slo": {"p95_latency_s": 0.25},
        "limits": {"min_replicas": 1, "max_replicas": 12},
        "pool": {"name": "nodes", "replicas_per_node": 2, "price_per_hour": 0.2, "provision_delay_s": 30},
        "history": {"step_s": STEP, "scrape_s": 15, "min_intervals": 24, "max_fill_s": 180, "holdout": 0.25, "timeout_s": 3,
                    **history},
    }
    path = tmp / "service.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def synthetic_history(tmp: Path, service_cv: float = 1.0, night_rps: float = 40.0) -> dict[str, np.ndarray]:
    """A day-shaped load served by an HPA-like replica count, measured by replaying it in the simulator."""
    k = np.arange(N)
    rates = night_rps + 60.0 * np.sin(np.pi * k / N) ** 2 + 3.0 * np.sin(k / 3.0)
    ready = np.clip(np.ceil(rates / (0.65 * CAPACITY)), 2, 12)
    config = load_service(service_yaml(tmp))
    r = replay(config, WORK_S, CAPACITY * WORK_S, rates, ready, STEP, service_cv)
    util = rates / (ready * CAPACITY)
    return {"arrivals": rates, "ready": ready, "p95": r.latency_p95_s, "util": util}


class FakePrometheus(PrometheusStub):
    """The history's series behind Prometheus' ``query_range`` (``helpers.PrometheusStub``).

    A series given as a mapping of replica name to values is answered as one series per replica (a ``pod`` label).
    """

    def __init__(self, series: dict[str, Any], cold: dict[str, tuple[int, float]] | None = None) -> None:
        super().__init__()
        self.series = series
        self.cold = cold or {}

    def matrix(self, query: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        grid = np.arange(start, end + 1e-6, step)
        result = []
        if query == "cold":
            for name, (index, seconds) in self.cold.items():
                t = T0 + STEP * (index + 1)
                values = [[float(x), str(seconds)] for x in grid if x >= t]
                if values:
                    result.append({"metric": {"pod": name}, "values": values})
        elif isinstance(self.series.get(query), dict):  # one series per replica, a NaN reading sent as Prometheus does
            for pod, v in self.series[query].items():
                idx = np.rint((grid - T0) / STEP).astype(int) - 1
                values = [[float(x), "NaN" if math.isnan(v[i]) else repr(float(v[i]))] for x, i in zip(grid, idx) if 0 <= i < v.size]
                result.append({"metric": {"pod": pod}, "values": values})
        elif query in self.series:
            v = self.series[query]
            idx = np.rint((grid - T0) / STEP).astype(int) - 1
            values = [[float(x), "NaN" if not math.isfinite(v[i]) else repr(float(v[i]))]
                      for x, i in zip(grid, idx) if 0 <= i < v.size and not np.isnan(v[i])]
            result.append({"metric": {}, "values": values})
        return result


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rlscale.cli", *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    lines = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def days() -> str:
    return f"{N * STEP / 86_400:.8f}"


def end() -> str:
    return f"{T0 + N * STEP:.3f}"


def test_fit_recovers_the_capacity_and_service_time_the_history_was_made_with(tmp_path: Path) -> None:
    series = synthetic_history(tmp_path)
    cold = {"p1": (60, 41.0), "p2": (100, 45.0), "p3": (150, 43.0), "p0": (-5, 99.0)}  # p0 ran before the history
    with FakePrometheus(series, cold) as prom:
        result = assess(prom.url, service_yaml(tmp_path), N * STEP / 86_400, tmp_path / "envs" / "svc.yaml",
                        end=T0 + N * STEP, report=tmp_path / "report", quiet=True)
    fit = result.fit
    assert fit.capacity_from == "utilisation"
    assert fit.capacity_rps == pytest.approx(CAPACITY, rel=0.01)
    assert fit.work_s == pytest.approx(WORK_S, rel=0.05)
    assert fit.errors.latency_p95_median_ape < 0.05 and fit.errors.utilisation_wape < 0.02
    assert fit.scale_up_events == 3 and fit.cold_start_s == pytest.approx(43.0)
    sc = load_scenario(tmp_path / "envs" / "svc.yaml")
    svc, pool = sc.services[0], sc.pools[0]
    assert svc.replica_rps == pytest.approx(fit.capacity_rps, rel=1e-4)
    assert svc.cold_start_s == pytest.approx(43.0) and pool.provision_delay_s == 30
    assert pool.vcpu == pytest.approx(2 * svc.replica.cpu)  # two replicas per node, as service.yaml says
    assert sc.episode_steps == 180 and sc.step_s == STEP  # the first 75% is the training trace
    assert len((tmp_path / "envs" / "svc-holdout.csv").read_text().splitlines()) == 1 + 60
    meta = json.loads((tmp_path / "report" / "fit.json").read_text())
    assert meta["fit"]["errors"]["latency_intervals"] == N
    assert "p95 latency off by" in sc.description


def test_fit_recovers_how_variable_the_service_time_was(tmp_path: Path) -> None:
    """A service whose latency rises gently with load (near-constant service time) is fitted as such, not as M/M/c.

    The history has a quiet night (2 replicas 10-20% busy), where latency is the service time itself: without
    one, a shorter service time with a steeper wait fits a busy day about as well.
    """
    for made_with in (0.3, 1.4):
        series = synthetic_history(tmp_path, service_cv=made_with, night_rps=5.0)
        config = load_service(service_yaml(tmp_path))
        history = History(step_s=STEP, t=T0 + STEP * np.arange(1, N + 1),
                          series={"arrivals_rps": series["arrivals"], "ready": series["ready"],
                                  "latency_p95_s": series["p95"], "utilisation": series["util"]},
                          filled=np.zeros(N, dtype=bool))
        fit = fit_service(config, history)
        assert fit.service_cv == pytest.approx(made_with, abs=0.15), made_with
        assert fit.work_s == pytest.approx(WORK_S, rel=0.05)
        assert fit.errors.latency_p95_median_ape < 0.02


def test_fit_without_a_utilisation_query_uses_latency_alone(tmp_path: Path) -> None:
    series = synthetic_history(tmp_path)
    config = yaml.safe_load(service_yaml(tmp_path).read_text())
    del config["queries"]["utilisation"], config["queries"]["cold_start_s"]
    (tmp_path / "service.yaml").write_text(yaml.safe_dump(config))
    with FakePrometheus(series) as prom:  # the first half of the history: the two-parameter search costs a replay per point
        result = assess(prom.url, tmp_path / "service.yaml", N / 2 * STEP / 86_400, tmp_path / "svc.yaml",
                        end=T0 + N / 2 * STEP, report=tmp_path / "report", quiet=True)
    assert result.fit.capacity_from == "latency"
    assert result.fit.capacity_rps == pytest.approx(CAPACITY, rel=0.25)
    assert result.fit.errors.latency_p95_median_ape < 0.1
    assert any("cold start 0 s" in n for n in result.fit.notes)


def test_unreachable_prometheus_is_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    line = one_line_error(run_cli("assess", "--prometheus", url, "--config", str(service_yaml(tmp_path)), "--days", "1",
                                  "--out", str(tmp_path / "x.yaml")))
    assert "cannot reach prometheus" in line and "queries.arrivals_rps" in line
    assert not (tmp_path / "x.yaml").exists()


def test_a_missing_metric_is_one_line_naming_the_query(tmp_path: Path) -> None:
    series = synthetic_history(tmp_path)
    del series["util"]
    with FakePrometheus(series) as prom:
        line = one_line_error(run_cli("assess", "--prometheus", prom.url, "--config", str(service_yaml(tmp_path)),
                                      "--days", days(), "--end", end(), "--out", str(tmp_path / "x.yaml")))
    assert "queries.utilisation: no series" in line
    assert not (tmp_path / "x.yaml").exists()


def test_a_ten_minute_gap_is_refused_never_zero_filled(tmp_path: Path) -> None:
    series = synthetic_history(tmp_path)
    series["arrivals"] = series["arrivals"].copy()
    series["arrivals"][100:110] = np.nan  # Prometheus has no samples for 10 minutes
    with FakePrometheus(series) as prom:
        line = one_line_error(run_cli("assess", "--prometheus", prom.url, "--config", str(service_yaml(tmp_path)),
                                      "--days", days(), "--end", end(), "--out", str(tmp_path / "x.yaml")))
    assert "queries.arrivals_rps: no samples for 10.0 min" in line and "max_fill_s=180" in line
    assert not (tmp_path / "x.yaml").exists()


def test_a_short_gap_is_interpolated_and_marked(tmp_path: Path) -> None:
    series = synthetic_history(tmp_path)
    truth = series["arrivals"].copy()
    for name in ("arrivals", "ready", "util"):
        series[name] = series[name].copy()
        series[name][100:103] = np.nan  # three minutes: within max_fill_s
    with FakePrometheus(series) as prom:
        result = assess(prom.url, service_yaml(tmp_path), N * STEP / 86_400, tmp_path / "svc.yaml", end=T0 + N * STEP,
                        report=tmp_path / "report", quiet=True)
    assert result.history.filled[100:103].all() and result.history.filled.sum() == 3
    filled = result.history.series["arrivals_rps"][100:103]
    assert np.all(filled > 0.9 * truth[100:103].min()) and np.all(np.isfinite(filled))
    rows = (tmp_path / "svc-history.csv").read_text().splitlines()
    assert [r.split(",")[-2] for r in rows[101:104]] == ["1", "1", "1"]
    assert "(3 filled by interpolation)" in (tmp_path / "report" / "report.md").read_text()


def test_too_little_history_says_how_much_is_needed(tmp_path: Path) -> None:
    series = synthetic_history(tmp_path)
    with FakePrometheus(series) as prom, pytest.raises(AssessError, match=r"too little history: 10 intervals .* history.min_intervals=24"):
        assess(prom.url, service_yaml(tmp_path), 10 * STEP / 86_400, tmp_path / "x.yaml", end=T0 + 10 * STEP, quiet=True)


def test_history_starting_late_is_trimmed_not_zero_filled(tmp_path: Path) -> None:
    series = synthetic_history(tmp_path)
    for name in series:
        series[name] = series[name].copy()
        series[name][:30] = np.nan  # the service did not exist yet
    with FakePrometheus(series) as prom:
        result = assess(prom.url, service_yaml(tmp_path), N * STEP / 86_400, tmp_path / "svc.yaml", end=T0 + N * STEP,
                        report=tmp_path / "report", quiet=True)
    assert result.history.size == N - 30 and not result.history.filled.any()
    assert any(n.startswith("trimmed to") for n in result.history.notes)


def test_service_yaml_mistakes_are_one_line_naming_the_field(tmp_path: Path) -> None:
    data = yaml.safe_load(service_yaml(tmp_path).read_text())
    del data["queries"]["latency_p95_s"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"bad.yaml: queries.latency_p95_s: Field required"):
        load_service(tmp_path / "bad.yaml")
    data = yaml.safe_load(service_yaml(tmp_path).read_text())
    data["limits"]["min_replicas"] = 20
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"bad.yaml: limits: min_replicas \(20\) exceeds max_replicas \(12\)"):
        load_service(tmp_path / "bad.yaml")


def test_the_shipped_local_service_yaml_loads() -> None:
    config = load_service(ROOT / "envs" / "services" / "local-api.yaml")
    assert config.service == "api" and config.queries.cold_start_s is not None


def test_shadow_report_refuses_a_log_without_a_shadow_run(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_text(json.dumps({"kind": "event", "event": "start", "policy": "hpa"}) + "\n")
    line = one_line_error(run_cli("shadow-report", str(log)))
    assert "no `rlscale shadow` run" in line


def _shadow_log(tmp: Path, exported: Path) -> Path:
    """An audit log as `rlscale shadow` writes it: start event with the scenario, decisions with what ran."""
    sc = load_scenario("web-diurnal")
    lines = [{"kind": "event", "event": "start", "mode": "shadow", "policy": f"ppo:{exported}", "model": str(exported),
              "prometheus": "http://127.0.0.1:9090", "scenario_config": sc.model_dump(mode="json"), "step_s": sc.step_s}]
    for k in range(30):
        rate = 400.0 + 20.0 * k
        ready = 8 + k // 4
        policy = ready - 1 if k % 3 else ready
        lines.append({"kind": "decision", "time_s": 60.0 * k, "acted_by": "policy", "applied": False,
                      "final_action": {"replicas": [policy], "rebalance": 0},
                      "adjustments": [{"guard": "max_step_change", "target": "api", "before": 1, "after": 2}] if k == 5 else [],
                      "fallback": None, "actual": {"ready": [ready], "desired": [ready], "arrivals_rps": [rate]}})
    path = tmp / "shadow-audit.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_shadow_report_estimates_both_and_counts_disagreements(tmp_path: Path, exported_policy: Path) -> None:
    from rlscale.evaluation.shadow_report import write_report

    folder, data = write_report(_shadow_log(tmp_path, exported_policy), tmp_path / "report")
    est = data["estimates"]
    actual, logged = est["actual (replicas that ran)"], est["policy (its decisions, as logged)"]
    assert actual["cost_usd"] > 0 and logged["cost_usd"] > 0
    assert logged["replica_hours"] < actual["replica_hours"]  # it asked for one replica fewer two times in three
    assert est["hpa (closed loop)"]["cost_usd"] > 0 and est["policy (closed loop)"]["cost_usd"] > 0
    assert data["disagreements"] == data["policy_below"] and data["compared"] == 29
    assert data["guards_fired"] == {"max_step_change": 1}
    text = (folder / "report.md").read_text()
    assert "| actual (replicas that ran) |" in text and "max_step_change x1" in text
    assert (folder / "replicas.png").stat().st_size > 5_000


def test_provisioning_delay_is_the_extra_wait_of_replicas_that_needed_a_new_node(tmp_path: Path) -> None:
    series = synthetic_history(tmp_path)
    series["nodes"] = np.where(np.arange(N) >= 59, 4.0, 3.0)  # a node was added while p1 was starting
    config = yaml.safe_load(service_yaml(tmp_path).read_text())
    config["queries"]["nodes"] = "nodes"
    config["pool"]["provision_delay_s"] = None  # estimate it
    (tmp_path / "service.yaml").write_text(yaml.safe_dump(config))
    cold = {"p1": (60, 100.0), "p2": (100, 45.0), "p3": (150, 43.0)}
    with FakePrometheus(series, cold) as prom:
        result = assess(prom.url, tmp_path / "service.yaml", N * STEP / 86_400, tmp_path / "svc.yaml", end=T0 + N * STEP,
                        report=tmp_path / "report", quiet=True)
    assert result.fit.cold_start_s == pytest.approx(44.0)
    assert result.fit.provision_delay_s == pytest.approx(56.0)
    assert load_scenario(tmp_path / "svc.yaml").pools[0].provision_delay_s == pytest.approx(56.0)
