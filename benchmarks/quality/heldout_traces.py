"""Write the held-out workload families of the generalisation suite (``envs/generalisation/traces/``).

These shapes are not among the generalist's training families
(``rlscale/learn/traffic.py``): a day with two peaks and hourly cron spikes,
and growth over hours with sudden drops (a deploy or a cache reset).
Deterministic (seed 2026); rerun with ``python benchmarks/quality/heldout_traces.py``.

No anchor: it measures nothing; it writes the suite's held-out trace files.
"""

from __future__ import annotations

import numpy as np

from rlscale.atomic import write_text
from rlscale.config import PROJECT_ROOT

STEP_S = 60.0
DAYS = 7
OUT = PROJECT_ROOT / "envs" / "generalisation" / "traces"


def bimodal_cron(rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(DAYS * 86_400 / STEP_S)) * STEP_S
    hour = (t % 86_400) / 3600.0
    day = 0.15 + 0.55 * np.exp(-0.5 * ((hour - 10.0) / 1.8) ** 2) + 0.45 * np.exp(-0.5 * ((hour - 20.5) / 1.4) ** 2)
    cron = 1.0 + 0.6 * ((t % 3600) < 300)
    noise = np.exp(0.05 * rng.standard_normal(t.size))
    return day * cron * noise


def growth_drops(rng: np.random.Generator) -> np.ndarray:
    """Load that grows for 6-30 hours to the peak, then drops to 30-50% of it at once (a deploy, a cache reset)."""
    n = int(DAYS * 86_400 / STEP_S)
    level = np.empty(n)
    i = 0
    while i < n:
        length = int(rng.uniform(6, 30) * 3600 / STEP_S)
        start = rng.uniform(0.3, 0.5)
        level[i : i + length] = np.geomspace(start, 1.0, length)[: n - i]
        i += length
    return level * np.exp(0.04 * rng.standard_normal(n))


def write(name: str, values: np.ndarray) -> None:
    rows = ["timestamp,value"] + [f"{int(i * STEP_S)},{v:.6f}" for i, v in enumerate(values)]
    write_text(OUT / f"{name}.csv", "\n".join(rows) + "\n")


def main() -> None:
    rng = np.random.default_rng(2026)
    write("bimodal-cron", bimodal_cron(rng))
    write("growth-drops", growth_drops(rng))


if __name__ == "__main__":
    main()
