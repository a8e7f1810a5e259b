"""Per-replica usage history: CPU cores used and memory working set, from Prometheus or a file, checked before any sizing.

``service.yaml``'s optional ``cpu_cores`` and ``memory_bytes`` queries return
**one series per replica** (cAdvisor's ``container_cpu_usage_seconds_total``
and ``container_memory_working_set_bytes`` summed by pod, or the local
workers' ``process_cpu_seconds_total`` and ``process_resident_memory_bytes``);
``rlscale assess`` reads them on its history's grid and writes them beside
the scenario as ``<name>-usage.csv``, one row per replica and interval:

    timestamp,service,replica,cpu_cores,memory_bytes,replicas

(``timestamp``: the interval's end, unix seconds; an empty cell: not
measured; ``replicas``: how many identical replicas the row stands for, 1 for
a real replica, the ready count for a simulated history). ``rlscale plan``
reads that file.

Bad readings are never sized silently (``clean``): NaN and negative samples
are excluded and counted; samples above the largest node a replica may run on
are excluded and counted when they are rare (a scrape glitch) and refused
when they are not (more than ``MAX_ABOVE_NODE`` of them: the query sums over
replicas or has the wrong unit); a resource with no sample left is refused
with one line.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rlscale.assess.history import HistoryClient, iso
from rlscale.assess.plan import Samples
from rlscale.assess.service import ServiceConfig, render
from rlscale.atomic import write_text
from rlscale.clusters.local.prometheus import PrometheusError
from rlscale.config import ConfigError, read_user_text

GIB = float(2**30)
MAX_ABOVE_NODE = 0.01
"""Share of samples above the node size that is excluded as glitches; more is refused."""
COLUMNS = ("timestamp", "service", "replica", "cpu_cores", "memory_bytes", "replicas")
MAX_ROWS = 2_000_000


@dataclass
class Usage:
    """One service's per-replica samples; NaN where a resource was not measured."""

    service: str
    step_s: float
    t: np.ndarray
    replica: list[str]
    cpu_cores: np.ndarray
    memory_gib: np.ndarray
    weight: np.ndarray
    notes: list[str] = field(default_factory=list)
    measured: dict[str, bool] = field(default_factory=lambda: {"cpu_cores": True, "memory_bytes": True})
    """whether each resource was queried at all (a column of empty cells: it was not; a NaN cell: it was, and read NaN)"""

    @property
    def size(self) -> int:
        return int(self.t.size)

    def peak_replicas(self) -> int:
        """The most replicas measured in one interval (the history's peak)."""
        if self.size == 0:
            return 0
        times, inverse = np.unique(self.t, return_inverse=True)
        total = np.zeros(times.size)
        np.add.at(total, inverse, self.weight)
        return int(round(float(total.max())))


def clean(values: np.ndarray, weight: np.ndarray, t: np.ndarray, name: str, node_size: float, unit: str,
          source: str) -> Samples:
    """The usable samples of one resource, with what was excluded said; ConfigError when nothing usable is left."""
    excluded: list[str] = []
    finite = np.isfinite(values)
    n_nan = int((~finite).sum())
    if n_nan == values.size:
        raise ConfigError(f"{source}: {name}: no samples (all {values.size} empty or NaN): no {name} recommendation")
    if n_nan:
        excluded.append(f"{name}: {n_nan} of {values.size} samples empty or NaN, excluded")
    negative = finite & (values < 0)
    if negative.any():
        excluded.append(f"{name}: {int(negative.sum())} negative samples excluded")
    above = finite & (values > node_size * (1 + 1e-9))
    if above.any():
        share = float(above.sum()) / max(1, int(finite.sum()))
        top = float(values[above].max())
        if share > MAX_ABOVE_NODE:
            raise ConfigError(
                f"{source}: {name}: {share:.1%} of samples exceed the largest node ({node_size:g} {unit}; up to {top:.4g}): "
                f"expected one series per replica in {unit} (is the query summing over replicas?)")
        excluded.append(f"{name}: {int(above.sum())} samples above the largest node ({node_size:g} {unit}; up to {top:.4g}) excluded")
    ok = finite & ~negative & ~above & (weight > 0)
    if not ok.any():
        raise ConfigError(f"{source}: {name}: no usable sample left: no {name} recommendation")
    return Samples(values[ok], weight[ok], t[ok], excluded)


def to_csv(usages: list[Usage]) -> str:
    out = io.StringIO()
    out.write(",".join(COLUMNS) + "\n")
    for u in usages:
        for k in range(u.size):
            cpu = f"{u.cpu_cores[k]:.6g}" if u.measured.get("cpu_cores", True) else ""
            mem = f"{u.memory_gib[k] * GIB:.8g}" if u.measured.get("memory_bytes", True) else ""
            out.write(f"{u.t[k]:.3f},{u.service},{u.replica[k]},{cpu},{mem},{u.weight[k]:g}\n")
    return out.getvalue()


def write_usage(path: Path, usages: list[Usage]) -> None:
    write_text(path, to_csv(usages))


def stale_usage(path: Path) -> bool:
    """Whether ``path`` is a usage file (its header) that a new history without usage must not leave behind."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return path.is_file() and not path.is_symlink() and fh.readline().strip() == ",".join(COLUMNS)
    except OSError:
        return False


def read_usage(path: Path, step_s: float) -> dict[str, Usage]:
    """The usage file, per service; a malformed file is one ConfigError line naming the row."""
    text = read_user_text(path, "usage history")
    reader = csv.reader(io.StringIO(text))
    head = next(reader, None)
    if head is None or tuple(h.strip() for h in head) != COLUMNS:
        raise ConfigError(f"{path}: expected the header {','.join(COLUMNS)} (the file `rlscale assess` writes)")
    rows: dict[str, list[tuple[float, str, float, float, float]]] = {}
    measured: dict[str, dict[str, bool]] = {}
    for number, row in enumerate(reader, 2):
        if not row:
            continue
        if number > MAX_ROWS:
            raise ConfigError(f"{path}: more than {MAX_ROWS} rows; plan a shorter history")
        if len(row) != len(COLUMNS):
            raise ConfigError(f"{path}: row {number}: expected {len(COLUMNS)} cells, got {len(row)}")
        try:
            t = float(row[0])
            cpu = float(row[3]) if row[3].strip() else math.nan
            mem = float(row[4]) / GIB if row[4].strip() else math.nan
            weight = float(row[5]) if row[5].strip() else 1.0
        except ValueError:
            raise ConfigError(f"{path}: row {number}: expected numbers in timestamp, cpu_cores, memory_bytes, replicas") from None
        if not math.isfinite(t) or not (weight >= 0 and math.isfinite(weight)):
            raise ConfigError(f"{path}: row {number}: timestamp and replicas must be finite and replicas >= 0")
        rows.setdefault(row[1].strip(), []).append((t, row[2].strip(), cpu, mem, weight))
        seen = measured.setdefault(row[1].strip(), {"cpu_cores": False, "memory_bytes": False})
        seen["cpu_cores"] |= bool(row[3].strip())
        seen["memory_bytes"] |= bool(row[4].strip())
    if not rows:
        raise ConfigError(f"{path}: no usage rows")
    out = {}
    for service, items in rows.items():
        t, rep, cpu, mem, w = zip(*items)
        out[service] = Usage(service, step_s, np.array(t), list(rep), np.array(cpu), np.array(mem), np.array(w),
                             measured=measured[service])
    return out


REPLICA_LABELS = ("pod", "worker", "instance", "container")


def _replica_name(labels: dict[str, str]) -> str:
    for key in REPLICA_LABELS:
        if labels.get(key):
            return labels[key]
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "all"


def fetch_usage(config: ServiceConfig, client: HistoryClient, grid: np.ndarray, step_s: float,
                source: str) -> tuple[Usage | None, list[str]]:
    """The usage queries of ``config`` on the history's grid; what is missing is a note, never a failure of assess."""
    notes: list[str] = []
    per: dict[str, dict[str, np.ndarray]] = {}
    for name, scale in (("cpu_cores", 1.0), ("memory_bytes", 1.0 / GIB)):
        template = getattr(config.queries, name)
        if template is None:
            notes.append(f"usage: no queries.{name} in {source}: `rlscale plan` cannot size "
                         f"{'CPU' if name == 'cpu_cores' else 'memory'} (see docs/PLANNING.md)")
            continue
        try:
            result = client.query_range(render(template, step_s), float(grid[0]), float(grid[-1]), step_s)
        except PrometheusError as err:
            notes.append(f"usage: queries.{name} failed ({err}): no {name} for `rlscale plan`")
            continue
        if not result:
            notes.append(f"usage: queries.{name} returned no series between {iso(grid[0] - step_s)} and {iso(grid[-1])}: "
                         f"no {name} for `rlscale plan`")
            continue
        for labels, ts, vs in result:
            row = per.setdefault(_replica_name(labels), {})
            values = np.full(grid.size, np.nan)
            idx = np.rint((ts - grid[0]) / step_s).astype(np.int64)
            ok = (idx >= 0) & (idx < grid.size)
            values[idx[ok]] = vs[ok] * scale
            present = np.zeros(grid.size, dtype=bool)
            present[idx[ok]] = True  # a sample, even NaN: NaN readings are counted and excluded by ``clean``, not lost here
            row[name] = values
            row[name + "/present"] = present
        notes.append(f"usage: queries.{name}: {len(result)} replica series")
    if not per:
        return None, notes
    t, rep, cpu, mem = [], [], [], []
    for name, cols in sorted(per.items()):
        c = cols.get("cpu_cores", np.full(grid.size, np.nan))
        m = cols.get("memory_bytes", np.full(grid.size, np.nan))
        none = np.zeros(grid.size, dtype=bool)
        seen = cols.get("cpu_cores/present", none) | cols.get("memory_bytes/present", none)
        t.append(grid[seen])
        rep += [name] * int(seen.sum())
        cpu.append(c[seen])
        mem.append(m[seen])
    tt = np.concatenate(t)
    usage = Usage(config.service, step_s, tt, rep, np.concatenate(cpu), np.concatenate(mem), np.ones(tt.size),
                  measured={name: any(name in cols for cols in per.values()) for name in ("cpu_cores", "memory_bytes")})
    return usage, notes
