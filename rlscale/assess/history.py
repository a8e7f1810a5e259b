"""A service's history from Prometheus' ``query_range`` API, on one regular grid, holes filled or refused.

Each query of ``service.yaml`` is evaluated at ``start + k * step`` (k = 1..T);
with ``{window}`` = one step, the value at ``t_k`` covers the interval
``(t_k - step, t_k]``, so the T values are T back-to-back intervals.

Holes (the documented rule, ``docs/ASSESS.md``):

* a required metric (``arrivals_rps``, ``ready``) missing at the very start or
  end of the range: the history is trimmed to where both have samples;
* a hole inside the range of at most ``history.max_fill_s``: filled by linear
  interpolation between its neighbours, and marked (``filled`` column of the
  history CSV, count in the fit report);
* a longer hole: refused, one line naming the metric, where the hole is and
  how long it lasts. Never zeros: a missing value is NaN until it is filled
  or refused;
* ``latency_p95_s`` is NaN in an interval without requests (Prometheus'
  ``histogram_quantile`` of nothing): such intervals are left out of the
  latency fit, not filled.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from rlscale.assess.service import ServiceConfig, render
from rlscale.clusters.local.prometheus import PrometheusClient, PrometheusError
from rlscale.config import ConfigError

MAX_POINTS = 10_000
"""Points per series per request (Prometheus refuses more than 11,000): longer ranges are fetched in chunks."""

SERIES = ("arrivals_rps", "ready", "latency_p95_s", "utilisation", "desired", "backlog", "dropped", "nodes")


class AssessError(ConfigError):
    """A history that cannot be assessed (unreachable Prometheus, empty series, too short, a long gap): one line."""


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


class HistoryClient(PrometheusClient):
    """The local backend's PromQL client plus ``/api/v1/query_range`` (chunked under Prometheus' point limit)."""

    def query_range(self, promql: str, start: float, end: float, step_s: float) -> list[tuple[dict[str, str], np.ndarray, np.ndarray]]:
        """A range query's matrix as (labels, timestamps, values); raises PrometheusError."""
        out: dict[tuple[tuple[str, str], ...], tuple[dict[str, str], list[float], list[float]]] = {}
        chunk = MAX_POINTS * step_s
        t0 = start
        while t0 <= end + 1e-9:
            t1 = min(end, t0 + chunk - step_s)
            for labels, ts, vs in self._range(promql, t0, t1, step_s):
                key = tuple(sorted(labels.items()))
                entry = out.setdefault(key, (labels, [], []))
                entry[1].extend(ts)
                entry[2].extend(vs)
            t0 = t1 + step_s
        return [(labels, np.asarray(ts, dtype=np.float64), np.asarray(vs, dtype=np.float64)) for labels, ts, vs in out.values()]

    def _range(self, promql: str, start: float, end: float, step_s: float) -> list[tuple[dict[str, str], list[float], list[float]]]:
        params = {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step_s:g}"}
        url = f"{self.base_url}/api/v1/query_range?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:
                payload = json.loads(resp.read())
        except urllib.error.HTTPError as err:
            detail = ""
            try:
                detail = json.loads(err.read()).get("error", "")
            except (ValueError, OSError):
                pass
            raise PrometheusError(f"HTTP {err.code}{': ' + detail if detail else ''}") from None
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise PrometheusError(f"cannot reach prometheus at {self.base_url} ({getattr(err, 'reason', err)})") from None
        if not isinstance(payload, dict) or payload.get("status") != "success":
            raise PrometheusError(str(payload.get("error", "query failed") if isinstance(payload, dict) else "not a Prometheus answer"))
        data = payload.get("data", {})
        if data.get("resultType") != "matrix":
            raise PrometheusError(f"expected a range vector (matrix), got {data.get('resultType')!r}")
        rows = []
        for item in data.get("result", []):
            values = item.get("values", [])
            rows.append((item.get("metric", {}), [float(t) for t, _ in values], [_number(v) for _, v in values]))
        return rows


def _number(text: object) -> float:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


@dataclass
class History:
    """One service's intervals: ``t[k]`` is the end of interval k; NaN where a metric was not measured."""

    step_s: float
    t: np.ndarray
    series: dict[str, np.ndarray]
    filled: np.ndarray
    replica_starts: list[tuple[float, float]] = field(default_factory=list)
    """(first time seen, seconds from creation to ready) of every replica that appeared inside the history."""
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(self.t.size)

    def get(self, name: str) -> np.ndarray | None:
        return self.series.get(name)


def fetch(config: ServiceConfig, client: HistoryClient, start: float, end: float, source: str = "service.yaml",
          progress: Callable[[str], None] | None = None) -> History:
    """Query every metric of ``config`` over [start, end] and return the checked history (see the module rules)."""
    step = config.history.step_s
    n = int(math.floor((end - start) / step + 1e-9))
    if n < 1:
        raise AssessError(f"--days: the range {iso(start)}..{iso(end)} is shorter than one step ({step:g} s)")
    grid = start + step * np.arange(1, n + 1)
    series: dict[str, np.ndarray] = {}
    for name in SERIES:
        template = getattr(config.queries, name)
        if template is None:
            continue
        if progress is not None:
            progress(name)
        series[name] = _on_grid(client, name, render(template, step), grid, step, source)
    if not np.isfinite(series["arrivals_rps"]).any():
        raise AssessError(f"{source}: queries.arrivals_rps: no samples between {iso(start)} and {iso(end)}")
    # trim to where both required counts exist
    both = np.isfinite(series["arrivals_rps"]) & np.isfinite(series["ready"])
    if not both.any():
        raise AssessError(f"{source}: queries.ready: no samples while arrivals_rps has some ({iso(start)}..{iso(end)})")
    lo, hi = int(np.argmax(both)), int(both.size - np.argmax(both[::-1]))
    notes = []
    if lo > 0 or hi < both.size:
        notes.append(f"trimmed to {iso(grid[lo] - step)}..{iso(grid[hi - 1])}, where arrivals_rps and ready both have samples")
    grid = grid[lo:hi]
    series = {k: v[lo:hi] for k, v in series.items()}
    filled = np.zeros(grid.size, dtype=bool)
    for name in ("arrivals_rps", "ready", "utilisation", "desired", "backlog", "dropped", "nodes"):
        if name in series:
            filled |= _fill(series[name], grid, step, name, config.history.max_fill_s, source)
    if "latency_p95_s" in series:
        lat = series["latency_p95_s"]
        traffic = series["arrivals_rps"] > 0
        if not np.isfinite(lat[traffic]).any():
            raise AssessError(f"{source}: queries.latency_p95_s: no samples while there was traffic ({iso(grid[0] - step)}..{iso(grid[-1])})")
    usable = int((series["arrivals_rps"] > 0).sum())
    if usable < config.history.min_intervals:
        raise AssessError(
            f"too little history: {usable} intervals of {step:g} s with traffic between {iso(grid[0] - step)} and {iso(grid[-1])}, "
            f"need history.min_intervals={config.history.min_intervals} (ask for more --days)"
        )
    history = History(step, grid, series, filled, notes=notes)
    if config.queries.cold_start_s is not None:
        if progress is not None:
            progress("cold_start_s")
        history.replica_starts = _replica_starts(client, config.queries.cold_start_s, grid, step, source)
    return history


def _on_grid(client: HistoryClient, name: str, promql: str, grid: np.ndarray, step: float, source: str) -> np.ndarray:
    """One query's single series on the grid, NaN where it has no sample; no series (or several) is an error."""
    try:
        result = client.query_range(promql, float(grid[0]), float(grid[-1]), step)
    except PrometheusError as err:
        raise AssessError(f"prometheus: queries.{name} ({source}): {err}") from None
    if not result:
        raise AssessError(
            f"{source}: queries.{name}: no series between {iso(grid[0] - step)} and {iso(grid[-1])} "
            f"(is the metric name right? query: {promql})"
        )
    if len(result) > 1:
        raise AssessError(f"{source}: queries.{name}: returned {len(result)} series; expected one (aggregate it, e.g. sum(...))")
    _, ts, vs = result[0]
    out = np.full(grid.size, np.nan)
    idx = np.rint((ts - grid[0]) / step).astype(np.int64)
    ok = (idx >= 0) & (idx < grid.size) & (np.abs(ts - grid[np.clip(idx, 0, grid.size - 1)]) < 0.01 * step)
    out[idx[ok]] = vs[ok]
    return out


def _fill(values: np.ndarray, grid: np.ndarray, step: float, name: str, max_fill_s: float, source: str) -> np.ndarray:
    """Interpolate holes up to ``max_fill_s`` in place; refuse longer ones. Returns the filled mask."""
    missing = ~np.isfinite(values)
    if not missing.any():
        return missing
    known = np.flatnonzero(~missing)
    if known.size == 0:
        raise AssessError(f"{source}: queries.{name}: no samples at all in the trimmed range")
    edges = np.flatnonzero(np.diff(np.concatenate([[0], missing.astype(np.int8), [0]])))
    for a, b in zip(edges[::2], edges[1::2]):
        length = (b - a) * step
        if length > max_fill_s + 1e-9:
            raise AssessError(
                f"{source}: queries.{name}: no samples for {length / 60:.1f} min ({iso(grid[a] - step)}..{iso(grid[b - 1])}); "
                f"holes up to history.max_fill_s={max_fill_s:g} s are interpolated, longer ones refused: assess a range without it"
            )
    values[missing] = np.interp(np.flatnonzero(missing), known, values[known])
    return missing


def _replica_starts(client: HistoryClient, template: str, grid: np.ndarray, step: float, source: str) -> list[tuple[float, float]]:
    """(first seen, cold start) of each replica series that first appears after the history's first interval."""
    try:
        result = client.query_range(render(template, step), float(grid[0]), float(grid[-1]), step)
    except PrometheusError as err:
        raise AssessError(f"prometheus: queries.cold_start_s ({source}): {err}") from None
    starts = []
    for _, ts, vs in result:
        ok = np.isfinite(vs) & (vs >= 0)
        if ok.any() and ts[ok][0] > grid[0] + 0.5 * step:
            starts.append((float(ts[ok][0]), float(vs[ok][-1])))
    return sorted(starts)


def default_range(days: float, now: float | None = None) -> tuple[float, float]:
    """The last ``days`` days up to now, as unix seconds."""
    end = time.time() if now is None else now
    return end - days * 86_400.0, end
