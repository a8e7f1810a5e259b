"""``make test``'s own output: a long quiet stretch says which tests are running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_a_suite_run_on_xdist_workers_names_the_running_tests_when_no_test_finishes_for_a_while(tmp_path):
    (tmp_path / "test_slow.py").write_text("import time\n\ndef test_waits_four_seconds():\n    time.sleep(4)\n")
    env = {**os.environ, "RLSCALE_TEST_HEARTBEAT_S": "1", "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "heartbeat", "-n", "1", "-q", "-p", "no:cacheprovider",
                          "--rootdir", str(tmp_path), str(tmp_path)], capture_output=True, text=True, timeout=120, env=env,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    beats = [line for line in run.stdout.splitlines() if line.startswith("still running: ")]
    assert beats and "test_slow.py::test_waits_four_seconds (" in beats[0]
    assert len(beats) >= 2  # one per quiet second, not one in all


def test_a_serial_run_prints_no_heartbeat_into_captured_output(tmp_path):
    (tmp_path / "test_slow.py").write_text("import time\n\ndef test_waits_two_seconds():\n    time.sleep(2)\n")
    env = {**os.environ, "RLSCALE_TEST_HEARTBEAT_S": "1", "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "heartbeat", "-n", "0", "-q", "-p", "no:cacheprovider",
                          "--rootdir", str(tmp_path), str(tmp_path)], capture_output=True, text=True, timeout=120, env=env,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "still running" not in run.stdout
