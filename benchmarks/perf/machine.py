"""What machine a benchmark ran on: every result in docs/BENCHMARKS.md names it."""

from __future__ import annotations

from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"
