"""``rlscale serve`` as a real process: binding rules, signals, audit-log recovery, no torch, and a simulated day."""

from __future__ import annotations

import json
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

NO_TORCH = (
    "import sys; sys.modules['torch'] = None; sys.modules['stable_baselines3'] = None; "
    "from rlscale.cli import main; sys.argv = ['rlscale'] + sys.argv[1:]; main()"
)


def serve_cmd(*args: str, no_torch: bool = False) -> list[str]:
    if no_torch:
        return [sys.executable, "-c", NO_TORCH, "serve", *args]
    return [sys.executable, "-m", "rlscale.cli", "serve", *args]


def start(args: list[str], cwd: Path) -> tuple[subprocess.Popen, str]:
    """Start a serve process and wait for its "listening on URL" line."""
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    line = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            match = re.search(r"listening on (http://\S+)", line)
            if match:
                return proc, match.group(1)
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"serve did not start: {line!r} {proc.stderr.read()}")


def read_jsonl(path: Path) -> list[dict]:
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_binding_a_non_loopback_address_without_a_token_is_refused_in_one_line(tmp_path):
    result = subprocess.run(serve_cmd("--policy", "hpa", "--host", "0.0.0.0"), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--token" in lines[0] and "0.0.0.0" in lines[0]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_addresses_need_no_token(host):
    from rlscale.controller.serve import check_bind

    check_bind(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "example.com"])
def test_other_addresses_need_a_token(host):
    from rlscale.config import ConfigError
    from rlscale.controller.serve import check_bind

    with pytest.raises(ConfigError, match="--token"):
        check_bind(host, None)
    check_bind(host, "t0ken")


def test_a_busy_port_and_a_missing_model_are_one_line_errors(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        result = subprocess.run(serve_cmd("--policy", "hpa", "--port", port), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and port in result.stderr
    result = subprocess.run(serve_cmd("--model", "models/nope"), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and "models/nope" in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_finishes_the_current_decision_flushes_the_log_and_exits_0(tmp_path, exported_policy, sig):
    audit, summary = tmp_path / "audit.jsonl", tmp_path / "summary.json"
    proc, _ = start(serve_cmd("--model", str(exported_policy), "--speedup", "600", "--port", "0",
                              "--audit-log", str(audit), "--summary", str(summary)), tmp_path)
    wait_for(lambda: audit.exists() and audit.read_text().count('"kind":"decision"') >= 3)
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == 0
    lines = read_jsonl(audit)
    decisions = [line for line in lines if line["kind"] == "decision"]
    assert lines[0]["event"] == "start" and lines[-1]["event"] == "stop"
    result = json.loads(summary.read_text())
    assert result["decisions"] == len(decisions) and not result["completed"]
    assert result["steps"] == sum(line["applied"] for line in decisions)


def test_a_restart_repairs_a_torn_last_line_and_continues_the_same_log(tmp_path):
    audit = tmp_path / "audit.jsonl"
    audit.write_text('{"kind":"event","event":"start"}\n{"seq":7,"kind":"decis')
    result = subprocess.run(
        serve_cmd("--policy", "hpa", "--steps", "3", "--speedup", "1e6", "--port", "0", "--audit-log", str(audit)),
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "torn last line" in result.stderr
    lines = read_jsonl(audit)
    assert lines[0] == {"kind": "event", "event": "start"}
    assert lines[1]["event"] == "start" and lines[1]["repaired_torn_line_bytes"] == len('{"seq":7,"kind":"decis')
    assert sum(line["kind"] == "decision" for line in lines) == 3


def test_each_run_gets_its_own_audit_log_by_default_and_stops_with_a_one_line_summary(tmp_path):
    runs = [subprocess.run(serve_cmd("--policy", "hpa", "--steps", "4", "--speedup", "1e6", "--port", "0",
                                     "--max-step-change", "1"),
                           cwd=tmp_path, capture_output=True, text=True, timeout=120) for _ in range(2)]
    logs = sorted((tmp_path / "runs" / "serve").glob("audit-*.jsonl"))
    assert len(logs) == 2, [r.stdout for r in runs]
    for run, log in zip(runs, logs):
        assert run.returncode == 0, run.stderr
        lines = read_jsonl(log)
        assert [x["event"] for x in lines if x["kind"] == "event"] == ["start", "stop"]
        assert f"audit log: runs/serve/{log.name}\n" in run.stdout
        last = run.stdout.strip().splitlines()[-1]
        fired = sum(len(x.get("adjustments", [])) for x in lines if x["kind"] == "decision")
        assert last.startswith("rlscale serve stopped: 4 decisions; fell back to HPA 0x; ")
        assert f"guard rails fired {fired}x" in last and "cost so far $" in last and last.endswith(f"audit log runs/serve/{log.name}")


def test_an_audit_log_named_twice_is_appended_to_and_serve_says_so_at_start(tmp_path):
    audit = tmp_path / "audit.jsonl"
    args = serve_cmd("--policy", "hpa", "--steps", "2", "--speedup", "1e6", "--port", "0", "--audit-log", str(audit))
    first = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    second = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "appended to" not in first.stdout
    lines = read_jsonl(audit)
    assert sum(x.get("event") == "start" for x in lines) == 2
    assert f"audit log: {audit} (appended to: earlier runs' lines are in it too; this run is {lines[-1]['run']})" in second.stdout


def test_serving_needs_neither_torch_nor_stable_baselines3(tmp_path, exported_policy):
    summary = tmp_path / "summary.json"
    result = subprocess.run(
        serve_cmd("--model", str(exported_policy), "--steps", "5", "--speedup", "1e6", "--port", "0",
                  "--audit-log", str(tmp_path / "audit.jsonl"), "--summary", str(summary), no_torch=True),
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    result = json.loads(summary.read_text())
    assert result["decisions"] == 5 and result["fallbacks"] == {} and result["policy"].startswith("ppo:")


def test_dry_run_logs_decisions_but_never_applies_them(tmp_path, exported_policy):
    audit, summary = tmp_path / "audit.jsonl", tmp_path / "summary.json"
    result = subprocess.run(
        serve_cmd("--model", str(exported_policy), "--steps", "20", "--speedup", "1e6", "--port", "0", "--dry-run",
                  "--audit-log", str(audit), "--summary", str(summary)),
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    decisions = [line for line in read_jsonl(audit) if line["kind"] == "decision"]
    assert len(decisions) == 20 and not any(line["applied"] for line in decisions)
    assert json.loads(summary.read_text())["metrics"]["scaling_actions"] == 0


@pytest.mark.slow
def test_a_simulated_day_served_for_real_matches_run_policy(tmp_path, exported_policy):
    from rlscale.config import load_scenario
    from rlscale.policies.ppo import PPOPolicy
    from rlscale.policies.network import load_exported
    from rlscale.rollout import run_policy

    audit, summary = tmp_path / "audit.jsonl", tmp_path / "summary.json"
    proc, url = start(serve_cmd("--model", str(exported_policy), "--scenario", "web-diurnal", "--seed", "7", "--steps", "1440",
                                "--speedup", "7200", "--port", "0", "--keep-serving", "--audit-log", str(audit),
                                "--summary", str(summary)), tmp_path)
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            during = client.get("/metrics").text
            wait_for(lambda: client.get("/healthz").json()["loop"] == "done", timeout=120)
            assert client.post("/v1/decide", json={"desired": [10]}).status_code == 200
            after = client.get("/metrics").text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()

    for text in (during, after):
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert {"rlscale_decisions", "rlscale_fallbacks", "rlscale_replicas", "rlscale_decision_latency_seconds"} <= set(families)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(after) for s in f.samples}
    assert samples[("rlscale_decisions_total", (("source", "loop"),))] == 1440
    assert samples[("rlscale_decision_latency_seconds_count", (("source", "loop"),))] == 1440

    lines = read_jsonl(audit)
    loop_decisions = [line for line in lines if line["kind"] == "decision" and line["source"] == "loop"]
    assert len(loop_decisions) == 1440 and all(line["applied"] and line["fallback"] is None for line in loop_decisions)
    assert all(line["adjustments"] == [] for line in loop_decisions), "a PPO action passes the default guard rails unchanged"

    served = json.loads(summary.read_text())
    assert served["completed"] and served["steps"] == 1440
    scenario = load_scenario("web-diurnal")
    expected = run_policy(scenario, PPOPolicy(load_exported(exported_policy)), [7], steps=1440).mean()
    assert served["metrics"] == expected
