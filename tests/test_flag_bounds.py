"""Every numeric option has a range: an out-of-range value is one line and exit 2, never a traceback (issue 27 item 5)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBES = [
    ("serve", "--policy", "hpa", "--speedup", "1e-300"),
    ("serve", "--policy", "hpa", "--max-step-change", "100000000000000000000"),
    ("serve", "--policy", "hpa", "--steps", "99999999999999999999999", "--speedup", "1e308"),
    ("serve", "--policy", "hpa", "--speedup", "nan"),
    ("serve", "--policy", "hpa", "--stale-after", "-inf"),
    ("serve", "--policy", "hpa", "--scale-down-cooldown", "1e300"),
    ("serve", "--policy", "hpa", "--interval", "1e-9"),
    ("serve", "--policy", "hpa", "--audit-max-bytes", "1" + "0" * 30),
    ("loadgen", "--target", "http://127.0.0.1:1/", "--peak-rps", "inf"),
    ("loadgen", "--target", "http://127.0.0.1:1/", "--peak-rps", "1e308"),
    ("loadgen", "--target", "http://127.0.0.1:1/", "--speedup", "0"),
    ("loadgen", "--target", "http://127.0.0.1:1/", "--start-hour", "1e300"),
    ("loadgen", "--target", "http://127.0.0.1:1/", "--timeout", "nan"),
    ("simulate", "--steps", "10000000000"),
    ("simulate", "--seed", "99999999999999999999"),
    ("evaluate", "--seeds", "100000000"),
    ("calibrate", "--slo", "-1"),
    ("train", "--config", "train/ppo-web-diurnal.yaml", "--n-envs", "100000000"),
    ("cluster", "up", "--interval", "inf"),
]


@pytest.mark.parametrize("argv", PROBES, ids=[" ".join(a[:1] + a[-2:]) for a in PROBES])
def test_an_out_of_range_number_is_one_line_and_exit_2(argv: tuple[str, ...]) -> None:
    result = subprocess.run([sys.executable, "-m", "rlscale.cli", *argv], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    numeric = [a for a, v in zip(argv, argv[1:]) if a.startswith("--") and (v[:1].isdigit() or v[:1] in "-ni")]
    assert any(f"'{flag}'" in result.stderr for flag in numeric), result.stderr
