"""End to end on the real local cluster: HPA acting under a compressed day -> assess -> shadow -> shadow-report.

One test, because the sequence is the thing under test and a real cluster
costs most of its time to start and fill with history: worker processes
behind HAProxy, Prometheus scraping them, a 3 s capacity measurement by
calibration's method (again after the history), then ``rlscale loadgen`` replaying a web-diurnal day
compressed into 70 s while the HPA rule acts through the controller's loop.
``rlscale assess`` then fits a scenario from those 70 s of Prometheus history
and ``rlscale shadow`` runs the shipped local policy beside the still-acting
HPA, both as real commands.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rlscale.assess.generate import LocalHistory
from rlscale.config import load_scenario

ROOT = Path(__file__).resolve().parents[1]
HAVE_BINARIES = all(shutil.which(b) for b in ("haproxy", "prometheus"))
needs_binaries = pytest.mark.skipif(not HAVE_BINARIES, reason="haproxy and prometheus are not installed (.ci/run installs them)")
pytestmark = pytest.mark.xdist_group("real-cluster")  # one timed real cluster at a time (tests/test_local_cluster.py)

STEP_S = 5.0
HISTORY_S = 70.0
LOAD_S = 85.0
CAPACITY_TOLERANCE = 0.15


def _service_yaml(tmp: Path) -> Path:
    data = yaml.safe_load((ROOT / "envs" / "services" / "local-api.yaml").read_text())
    data["history"].update({"step_s": STEP_S, "min_intervals": 12, "holdout": 0.25})
    path = tmp / "service.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _rlscale(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rlscale.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@needs_binaries
@pytest.mark.slow
@pytest.mark.quiet_machine
@pytest.mark.timeout(420)  # 240 s for the test, the rest for the other worker's running test to end first
def test_assess_fits_the_real_cluster_and_shadow_reports_beside_the_acting_hpa(tmp_path: Path) -> None:
    service = _service_yaml(tmp_path)
    out = tmp_path / "envs" / "hist.yaml"
    report = tmp_path / "fit-report"
    audit = tmp_path / "shadow-audit.jsonl"
    with LocalHistory("local", interval_s=STEP_S, speedup=86_400.0 / 70.0, seconds=LOAD_S, peak_rps=60.0,
                      run_dir=tmp_path / "cluster", measure_capacity_s=3.0) as history:
        history.wait(history.started_unix + HISTORY_S)
        end = time.time()
        t0 = time.monotonic()
        days = (end - history.started_unix) / 86_400.0
        fitted = _rlscale("assess", "--prometheus", history.prometheus_url, "--config", str(service), "--days", f"{days:.8f}",
                          "--end", f"{end:.3f}", "--out", str(out), "--report", str(report))
        assert fitted.returncode == 0, fitted.stderr
        t1 = time.monotonic()
        shadowed = _rlscale("shadow", "--prometheus", history.prometheus_url, "--config", str(service), "--model",
                            str(ROOT / "models" / "local"), "--duration", "6", "--audit-log", str(audit))
        assert shadowed.returncode == 0, shadowed.stderr
        print(f"assess {t1 - t0:.1f} s, shadow {time.monotonic() - t1:.1f} s")
        assert history.loop is not None and history.loop.decisions >= 15  # HPA kept acting throughout
        history.stop_load()
        after = history.measure_capacity(3.0)

    # the fit: a scenario that loads, and whose replay reproduces what was measured
    scenario = load_scenario(out)
    meta = json.loads((report / "fit.json").read_text())
    fit = meta["fit"]
    errors = fit["errors"]
    print("fit:", json.dumps(fit))
    assert errors["latency_intervals"] >= 12
    assert errors["latency_p95_median_ape"] <= 0.25
    assert errors["utilisation_wape"] <= 0.10
    # The yardstick is calibrate's method (closed-loop clients saturating the workers) on this cluster just before
    # and just after the history, so it sees the load the history saw. A worker holds its slot for a fixed time
    # whatever the host's load (worker.py), but the load balancer's hand-off slows on a loaded host, and the
    # yardstick and the fit both count it. What the test needs is a host whose load holds for its two minutes;
    # where it did not, the two ends disagree and there is no one capacity to hold the fit against.
    before = history.capacity_rps_per_worker
    committed = json.loads((ROOT / "envs" / "local.calibration.json").read_text())["capacity_rps_per_worker"]
    print(f"capacity: fitted {fit['capacity_rps_per_replica']:.2f}, calibrate's method before {before:.2f} and after "
          f"{after:.2f}, envs/local.calibration.json {committed:.2f} req/s per worker")
    if abs(after / before - 1.0) > CAPACITY_TOLERANCE:
        pytest.skip(f"the host's load changed the cluster's capacity during the test ({before:.2f} req/s per worker "
                    f"before the history, {after:.2f} after): the fit needs a host whose load holds for two minutes")
    measured = 0.5 * (before + after)
    assert abs(fit["capacity_rps_per_replica"] / measured - 1.0) <= CAPACITY_TOLERANCE
    # workers take ~1.2 s here; HAProxy stamps its health-check state change in whole seconds
    assert fit["scale_up_events"] >= 1 and 0.2 <= fit["cold_start_s"] <= 3.0
    svc = scenario.services[0]
    assert math.isclose(svc.replica_rps, fit["capacity_rps_per_replica"], rel_tol=1e-3)
    assert (out.parent / "hist-train.csv").exists() and (out.parent / "hist-holdout.csv").exists()
    assert (report / "fit.png").stat().st_size > 10_000
    assert "p95 latency off by" in out.read_text().splitlines()[2]

    # the shadow run: dry-run decisions next to what the cluster ran, never an action
    lines = [json.loads(x) for x in audit.read_text().splitlines()]
    decisions = [x for x in lines if x["kind"] == "decision"]
    assert len(decisions) >= 2
    assert all(not d["applied"] and "actual" in d and d["actual"]["ready"][0] >= 2 for d in decisions)

    reported = _rlscale("shadow-report", str(audit), "--out", str(tmp_path / "shadow-report"))
    assert reported.returncode == 0, reported.stderr
    data = json.loads((tmp_path / "shadow-report" / "shadow.json").read_text())
    estimates = data["estimates"]
    for label in ("actual (replicas that ran)", "policy (its decisions, as logged)", "policy (closed loop)", "hpa (closed loop)"):
        assert estimates[label]["cost_usd"] > 0, label
    text = (tmp_path / "shadow-report" / "report.md").read_text()
    assert "actual (replicas that ran)" in text and "Disagreements" in text
    assert (tmp_path / "shadow-report" / "replicas.png").stat().st_size > 5_000
