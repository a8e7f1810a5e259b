"""The trials' shared loop: every generalisation-suite case, on validation seeds, two at a time."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks" / "quality")]


def each_case(one: Callable[[tuple], tuple[str, dict]], job: Callable[[str, Any], tuple],
              work: Path) -> Iterator[tuple[str, dict, float]]:
    """``(name, out, room)`` per case as ``one(job(name, scenario))`` finishes; ``out`` holds ``hpa`` and ``oracle``
    means, ``room`` is HPA's cost less the oracle's."""
    import generalisation as g

    jobs = [job(name, sc) for name, sc in g.cases(None, work / "cache")]
    with ProcessPoolExecutor(2) as ex:
        for name, out in ex.map(one, jobs):
            yield name, out, out["hpa"]["cost_usd"] - out["oracle"]["cost_usd"]
