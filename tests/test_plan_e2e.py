"""End to end on the real local cluster: workers' own CPU and resident memory in Prometheus -> assess -> plan.

The workers export ``process_cpu_seconds_total`` and
``process_resident_memory_bytes``; ``envs/services/local-api.yaml`` reads them
per worker. A compressed day of traffic with HPA acting for 45 s gives the
usage history; ``rlscale assess`` writes it beside the fitted scenario and
``rlscale plan`` sizes the worker. The recommendation must agree with what a
worker is configured to burn (``cpu_s`` per request, at most
``concurrency * cpu_s / (cpu_s + wait_s)`` cores) and with its resident set.
Each worker is its own node there, so packing is not exercised.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rlscale.assess.generate import LocalHistory
from rlscale.assess.usage import read_usage
from rlscale.clusters.local import LocalSettings

ROOT = Path(__file__).resolve().parents[1]
HAVE_BINARIES = all(shutil.which(b) for b in ("haproxy", "prometheus"))
pytestmark = [pytest.mark.xdist_group("real-cluster"),
              pytest.mark.skipif(not HAVE_BINARIES, reason="haproxy and prometheus are not installed (.ci/run installs them)")]

STEP_S = 5.0
HISTORY_S = 45.0


def _rlscale(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rlscale.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_plan_sizes_a_real_worker_from_its_own_cpu_and_memory_in_prometheus(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "envs" / "services" / "local-api.yaml").read_text())
    data["history"].update({"step_s": STEP_S, "min_intervals": 8, "holdout": 0.25})
    service = tmp_path / "service.yaml"
    service.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "envs" / "local-hist.yaml"
    with LocalHistory("local", interval_s=STEP_S, speedup=86_400.0 / 60.0, seconds=HISTORY_S + 10, peak_rps=60.0,
                      run_dir=tmp_path / "cluster") as history:
        history.wait(history.started_unix + HISTORY_S)
        end = time.time()
        days = (end - history.started_unix) / 86_400.0
        fitted = _rlscale("assess", "--prometheus", history.prometheus_url, "--config", str(service), "--days", f"{days:.8f}",
                          "--end", f"{end:.3f}", "--out", str(out), "--report", str(tmp_path / "fit"))
    assert fitted.returncode == 0, fitted.stderr
    usage = read_usage(out.with_name("local-hist-usage.csv"), STEP_S)["api"]
    assert len(set(usage.replica)) >= 2  # one series per worker, not a sum
    planned = _rlscale("plan", "--scenario", str(out), "--report", str(tmp_path / "plan"))
    assert planned.returncode == 0, planned.stderr
    print(planned.stdout)
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    cpu, mem = plan["services"][0]["cpu"], plan["services"][0]["memory"]

    # CPU: the mean use per request is the configured busy loop plus the HTTP server's own work, and the target sits
    # between what workers used and what a worker kept busy at its concurrency could use (with its overhead and margin)
    s = LocalSettings()
    hist = (tmp_path / "fit" / "fit.json")
    assert hist.exists()
    arrivals = [float(r.split(",")[1]) for r in out.with_name("local-hist-history.csv").read_text().splitlines()[1:]]
    ready = [float(r.split(",")[2]) for r in out.with_name("local-hist-history.csv").read_text().splitlines()[1:]]
    per_worker_rps = sum(arrivals) / max(1e-9, sum(ready))
    cpu_per_request = cpu["mean_use"] / per_worker_rps
    print(f"cpu per request {cpu_per_request * 1000:.2f} ms (busy loop {s.cpu_s * 1000:g} ms); target {cpu['target']:.4f} "
          f"cores [{cpu['lower']:.4f}, {cpu['upper']:.4f}], peak use {cpu['peak_use']:.4f}; worker at full concurrency "
          f"{s.worker_cores:.3f} cores of busy loop; memory peak {mem['peak_use'] * 1024:.1f} MiB -> {mem['target'] * 1024:.1f} MiB")
    assert s.cpu_s * 0.9 <= cpu_per_request <= s.cpu_s * 3.0
    assert cpu["lower"] <= cpu["target"] <= cpu["upper"]
    assert cpu["mean_use"] < cpu["target"] <= 3.0 * s.worker_cores * 1.15
    # memory: a stdlib-only Python process (~20 MiB resident), never below its peak plus the margin
    assert 8 / 1024 <= mem["peak_use"] <= 80 / 1024
    assert mem["target"] >= mem["peak_use"] * 1.15 * (1 - 1e-5)  # plan.json keeps 6 significant digits of each
    assert "generalist:" in planned.stdout
