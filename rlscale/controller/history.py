"""Where a served policy's memory comes from (DESIGN.md section 15): a CSV, or Prometheus' ``query_range``.

A policy that reads history is handed each service's past demand once, at
start; from then on it appends every interval it sees. A service with less
than ``history.MIN_DAYS`` of it is served history-free, and the controller
says so (``/v1/status``, the ``rlscale_history_days`` gauge, the audit log's
start event). A policy that calibrates its level on the past is calibrated
at start and again every day on what it has been served (``Recalibration``).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlscale.config import ConfigError
from rlscale.policies import history as hist
from rlscale.workload import check_trace_file

MAX_ROWS = 14 * 86_400  # a sample a second for the longest history a policy reads


@dataclass
class ServedHistory:
    """``series`` ``[L, S]`` req/s per decision interval, oldest first, NaN for gaps; the last row ends at ``end_s``."""

    series: np.ndarray
    end_s: float
    source: str


def on_grid(ts: np.ndarray, values: np.ndarray, step_s: float, days: float, end_s: float | None = None) -> tuple[np.ndarray, float]:
    """Samples ``(ts, values)`` as interval means on a grid of ``step_s`` ending at ``end_s`` (default: the last
    sample), ``days`` long; an interval without a sample is NaN (a gap is never read as zero demand)."""
    end = float(ts.max()) if end_s is None else float(end_s)
    n = max(1, int(round(days * 86_400.0 / step_s)))
    idx = np.floor((ts - (end - n * step_s)) / step_s - 1e-9).astype(np.int64)
    ok = (idx >= 0) & (idx < n) & np.isfinite(values)
    total = np.bincount(idx[ok], weights=values[ok], minlength=n)
    count = np.bincount(idx[ok], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out, end


def read_history_csv(path: str | Path, services: tuple[str, ...], step_s: float, days: float) -> ServedHistory:
    """``timestamp,value`` (one service) or ``timestamp,<service>,...`` (a column per service) -> the history.

    One-line errors name the file and what was expected; values must be
    finite and >= 0 where present (an empty cell is a gap).
    """
    name = str(path)
    check_trace_file(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{name}: not UTF-8 text (byte {err.start}); expected a CSV of timestamp,<service>...") from None
    except OSError as err:
        raise ConfigError(f"{name}: cannot read ({err.strerror})") from None
    rows = list(csv.reader(io.StringIO(text)))
    if len(rows) < 2 or not rows[0]:
        raise ConfigError(f"{name}: expected a header and rows of timestamp,<service>...")
    header = [h.strip() for h in rows[0]]
    if header[0] != "timestamp":
        raise ConfigError(f"{name}: the first column must be 'timestamp', got {header[0]!r}")
    columns = list(services) if all(s in header for s in services) else (["value"] if len(services) == 1 and "value" in header else None)
    if columns is None:
        raise ConfigError(f"{name}: expected a column per service ({', '.join(services)})"
                          + (" or a 'value' column" if len(services) == 1 else ""))
    if len(rows) - 1 > MAX_ROWS:
        raise ConfigError(f"{name}: {len(rows) - 1} rows; at most {MAX_ROWS} (14 days at one a second)")
    where = [header.index(c) for c in columns]
    ts = np.empty(len(rows) - 1)
    vals = np.full((len(rows) - 1, len(columns)), np.nan)
    for k, row in enumerate(rows[1:], start=2):
        try:
            ts[k - 2] = float(row[0])
            for j, col in enumerate(where):
                cell = row[col].strip() if col < len(row) else ""
                if cell:
                    vals[k - 2, j] = float(cell)
        except (ValueError, IndexError):
            raise ConfigError(f"{name}: line {k}: expected numbers (timestamp in seconds, req/s per service)") from None
    if not np.isfinite(ts).all():
        raise ConfigError(f"{name}: a timestamp is not a finite number")
    bad = np.isfinite(vals) & (vals < 0) | np.isinf(vals)
    if bad.any():
        line = int(np.argmax(bad.any(axis=1))) + 2
        raise ConfigError(f"{name}: line {line}: a request rate must be finite and >= 0")
    end = float(ts.max())
    series = np.stack([on_grid(ts, vals[:, j], step_s, days, end)[0] for j in range(len(columns))], axis=1)
    return ServedHistory(series, end, name)


def fetch_history_prometheus(base_url: str, queries: dict[str, str], services: tuple[str, ...], step_s: float,
                             days: float, now: float) -> ServedHistory:
    """Each service's request-rate query over the last ``days`` (``assess``'s reader, ``query_range``)."""
    from rlscale.assess.history import HistoryClient
    from rlscale.assess.service import render
    from rlscale.clusters.local.prometheus import PrometheusError

    client = HistoryClient(base_url, timeout_s=10.0)
    start = now - days * 86_400.0
    cols = []
    for svc in services:
        promql = render(queries[svc], step_s)
        try:
            result = client.query_range(promql, start + step_s, now, step_s)
        except PrometheusError as err:
            raise ConfigError(f"--history prometheus: service {svc!r}: {err}") from None
        if len(result) > 1:
            raise ConfigError(f"--history prometheus: service {svc!r}: {len(result)} series; expected one (sum them)")
        ts, vs = (result[0][1], result[0][2]) if result else (np.zeros(0), np.zeros(0))
        cols.append(on_grid(ts, vs, step_s, days, now)[0])
    return ServedHistory(np.stack(cols, axis=1), now, f"prometheus {base_url}")


def history_status(days: np.ndarray | None, services: tuple[str, ...]) -> dict[str, Any]:
    """What ``/v1/status`` and the audit log say: per service, the days it has and whether it is history-free."""
    if days is None:
        return {"reads_history": False}
    per = {s: round(float(d), 3) for s, d in zip(services, np.asarray(days).reshape(-1))}
    free = [s for s, d in per.items() if d < hist.MIN_DAYS]
    return {
        "reads_history": True,
        "days": per,
        "min_days": hist.MIN_DAYS,
        "history_free": free,
        "mode": "history" if not free else ("history-free" if len(free) == len(per) else "mixed"),
    }


class Recalibration:
    """A served calibrating policy's base level, kept up with the service's own recent past.

    ``rlscale serve`` calibrates once at start on the history it loads; a
    service runs for weeks, and a new one (under the card's ``min_days``) would
    otherwise stay uncalibrated for good. This listener of the control loop
    collects every interval served (NaN where metrics were missing) and, every
    ``every_steps`` intervals (a day), adds them to the past the policy keeps
    for calibration and replays the latest days again (``rollout.calibrate``):
    the same rule as at start, on what the service has shown since. Its result
    goes to ``also`` too (the HTTP API's own policy instance), and
    ``on_change`` hears the level.
    """

    def __init__(self, policy: Any, scenario: Any, step_s: float, also: tuple[Any, ...] = (),
                 every_steps: int | None = None, on_change: Any = None) -> None:
        self.policy, self.scenario, self.also, self.on_change = policy, scenario, also, on_change
        self.keep = int(float(policy.calibration.get("days", hist.DEFAULT_DAYS)) * hist.steps_per_day(step_s))
        self.every = int(every_steps or hist.steps_per_day(step_s))
        self.rows: list[np.ndarray] = []

    def __call__(self, decision: Any) -> None:
        m = decision.metrics
        row = np.full(len(self.scenario.services), np.nan) if m is None else np.asarray(m.arrivals_rps, dtype=float)[0]
        self.observe(row)

    def observe(self, arrivals: np.ndarray) -> float | None:
        """One served interval's arrivals ``[S]``; the new base level when this interval recalibrated, else None."""
        self.rows.append(np.asarray(arrivals, dtype=float).copy())
        if len(self.rows) < self.every:
            return None
        kept = self.policy.past[0]
        served = np.stack(self.rows)
        self.policy.remember(0, (served if kept is None else np.vstack([kept, served]))[-self.keep:])
        self.rows = []
        return self.calibrate()

    def calibrate(self) -> float | None:
        """Replay the past kept so far; the level chosen (None: too little history, the policy stays as it is)."""
        from rlscale.rollout import calibrate

        if not calibrate(self.policy, self.scenario):
            return None
        for other in self.also:
            other.settle(self.policy.base)
        level = float(self.policy.base[0])
        if self.on_change is not None:
            self.on_change(level)
        return level
