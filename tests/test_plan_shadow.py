"""The plan in the loop: a real ``rlscale shadow`` run, ``rlscale plan``, then ``rlscale shadow-report --planned``.

The audit log comes from the shadow command itself, reading a Prometheus that
speaks the wire format over real HTTP on loopback and answers each instant
query with the interval the wall clock is in: an HPA-like replica count under
a day-shaped load. The scenario is web-diurnal with 2x oversized replicas
(``cpu: 2`` for one core used, ``memory_gib: 4`` for 2 GiB) on a 2 s step, so
a dozen decisions take seconds; its delays shrink with the step, which keeps
the generalist inside its trained range. The usage history is the
simulator's (``rlscale.assess.simulated``): HPA on the same scenario.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from helpers import PrometheusStub

from rlscale.assess.simulated import simulated_usage
from rlscale.assess.usage import write_usage
from rlscale.config import read_yaml

ROOT = Path(__file__).resolve().parents[1]
STEP = 2.0
CAPACITY = 20.0  # requests/s a replica of one core serves at work_s 0.05


def _rlscale(*args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rlscale.cli", *args], check=False, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


class LivePrometheus(PrometheusStub):
    """``/-/ready``, ``/api/v1/query`` and ``/api/v1/query_range`` for a cluster whose interval k began ``k * STEP`` after start."""

    def __init__(self) -> None:
        super().__init__()
        k = np.arange(400)
        self.series = {"arrivals": 300.0 + 250.0 * np.sin(np.pi * k / 60.0) ** 2}
        self.series["ready"] = np.ceil(self.series["arrivals"] / (0.7 * CAPACITY))
        self.series["util"] = self.series["arrivals"] / (self.series["ready"] * CAPACITY)
        self.series["p95"] = np.full(k.size, 0.09)
        self.start = time.time() - 20 * STEP  # a history before the shadow run, for the policy's load memory

    def instant(self, query: str, at: float) -> list[dict[str, Any]]:
        value = self.value(query, at or time.time())
        return [] if value is None else [{"metric": {}, "value": [at, repr(value)]}]

    def matrix(self, query: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        pairs = [(float(t), self.value(query, float(t))) for t in np.arange(start, end + 1e-6, step)]
        values = [[t, repr(v)] for t, v in pairs if v is not None]
        return [{"metric": {}, "values": values}] if values else []

    def value(self, query: str, at: float) -> float | None:
        series = self.series.get(query)
        k = math.floor((at - self.start) / STEP)
        if series is None or not 0 <= k < series.size:
            return None
        return float(series[k])


def _scenario(tmp: Path) -> Path:
    raw = read_yaml(ROOT / "envs" / "web-diurnal.yaml")
    raw.update({"name": "web-2x-fast", "step_s": STEP, "episode_steps": 720})
    raw["pools"][0].update({"provision_delay_s": 3 * STEP, "idle_release_s": 5 * STEP})
    svc = raw["services"][0]
    svc.update({"cold_start_s": STEP, "replica": {"cpu": 2.0, "cpu_used": 1.0, "memory_gib": 4.0, "memory_used_gib": 2.0}})
    svc["workload"]["peak_rps"] = 550.0
    path = tmp / "web-2x.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _service_yaml(tmp: Path) -> Path:
    data = {"service": "api",
            "queries": {"arrivals_rps": "arrivals", "ready": "ready", "latency_p95_s": "p95", "utilisation": "util"},
            "slo": {"p95_latency_s": 0.25}, "limits": {"min_replicas": 2, "max_replicas": 120},
            "pool": {"name": "on-demand", "replicas_per_node": 2, "price_per_hour": 0.192, "provision_delay_s": 3 * STEP},
            "history": {"step_s": STEP}}
    path = tmp / "service.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_shadow_report_sets_todays_sizing_against_the_planned_one_on_a_real_shadow_log(tmp_path: Path) -> None:
    scenario, service = _scenario(tmp_path), _service_yaml(tmp_path)
    write_usage(tmp_path / "web-2x-usage.csv", simulated_usage(scenario, "hpa", seeds=(1,), end_unix=1.7e9))
    audit = tmp_path / "shadow-audit.jsonl"
    with LivePrometheus() as prom:
        shadowed = _rlscale("shadow", "--prometheus", prom.url, "--config", str(service), "--model", "models/general",
                            "--scenario", str(scenario), "--duration", str(12 * STEP), "--audit-log", str(audit))
    assert shadowed.returncode == 0, shadowed.stderr
    decisions = [d for d in map(json.loads, audit.read_text().splitlines()) if d["kind"] == "decision"]
    assert len(decisions) >= 8 and all(not d["applied"] and d["actual"]["ready"][0] >= 22 for d in decisions)

    planned = _rlscale("plan", "--scenario", str(scenario), "--report", str(tmp_path / "plan"))
    assert planned.returncode == 0, planned.stderr
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert 0.7 <= plan["services"][0]["cpu"]["target"] <= 1.2  # at most one core used, two declared

    reported = _rlscale("shadow-report", str(audit), "--out", str(tmp_path / "report"),
                        "--planned", str(tmp_path / "web-2x-planned.yaml"))
    assert reported.returncode == 0, reported.stderr
    data = json.loads((tmp_path / "report" / "shadow.json").read_text())
    est = data["estimates"]
    today, sized = est["actual (replicas that ran)"], est["actual replicas, planned sizes"]
    # the same replicas, a request near one core: four to a 4-vCPU node where two fitted
    assert sized["replica_hours"] == today["replica_hours"]
    assert 0.4 <= sized["cost_usd"] / today["cost_usd"] <= 0.65
    for label in ("hpa (closed loop)", "hpa (closed loop, planned sizes)", "policy (closed loop)",
                  "policy (closed loop, planned sizes)"):
        assert "error" not in est[label] and est[label]["cost_usd"] > 0, (label, est[label])
    assert est["hpa (closed loop, planned sizes)"]["cost_usd"] < est["hpa (closed loop)"]["cost_usd"]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| actual replicas, planned sizes |" in text and "| hpa (closed loop, planned sizes) |" in text
    assert "web-2x-planned.yaml` (`rlscale plan`): api cpu 2 -> 0." in text
    assert "actual replicas, planned sizes: cost" in reported.stdout

    other = tmp_path / "other.yaml"
    raw = read_yaml(tmp_path / "web-2x-planned.yaml")
    raw["services"][0]["name"] = "web"
    other.write_text(yaml.safe_dump(raw, sort_keys=False))
    refused = _rlscale("shadow-report", str(audit), "--planned", str(other))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    errors = [x for x in refused.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "['web']" in errors[0] and "['api']" in errors[0], refused.stderr
