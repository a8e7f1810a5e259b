"""Fit the simulator's service model to a history, and measure the fit by replaying the history in it.

The simulator models a service as ``c`` parallel servers per replica, each
taking ``work_s`` per request, behind one shared queue (M/M/c with
Sakasegawa's waiting probability, ``rlscale/sim/kernel.py``), whose wait
Kingman's factor ``(1 + cv^2) / 2`` scales for a service time that is not
exponential. Three numbers therefore describe a replica: its capacity
``mu = c / work_s`` (requests/s at 100% busy), its service time ``work_s``,
the latency of a request that does not wait, and the service time's
coefficient of variation ``cv``, how steeply latency rises with load (a
service that mostly waits on I/O of a fixed length is near 0; the M/M/c
default is 1). All are fitted from the history's intervals, each a pair of
(arrivals per ready replica, measured p95 latency) plus, where measured,
the replicas' busy fraction:

1. **capacity** from utilisation when it is measured: ``u = (rate / ready) / mu``,
   so each interval where replicas were neither idle nor near saturation
   (5-85% busy, no queue: near saturation arrivals outrun what is served)
   takes part; ``mu`` = their arrivals over their busy replica-seconds. Without a
   utilisation query, ``mu`` is fitted jointly with the service time below.
2. **service time and its variability**: the ``work_s`` (hence
   ``c = mu * work_s``) and ``cv`` whose replay of the whole history, with the
   replica counts that actually ran, minimises the mean absolute log error of
   p95 latency (``work_s`` sets latency at low load, ``cv`` its rise with
   load; a grid over both, then a compass search from its best points;
   without a utilisation query ``cv`` stays 1). The replay *is* the
   simulator (``Simulator.step``, cold start and provisioning off so the
   ready count is exactly the measured one), so the fitted numbers mean in
   training what they meant in the fit.
3. **cold start** and **provisioning delay** from scale-up events (see
   ``delays``).

Fit errors are weighted absolute percentage errors over the intervals,
``sum |sim - measured| / sum measured`` (intervals with a measurement), so an
idle night's 2 ms cannot dominate them; the mean and median of the
per-interval relative errors are reported beside them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlscale.assess.history import History
from rlscale.assess.service import ServiceConfig
from rlscale.config import Scenario, parse_model
from rlscale.sim import Simulator
from rlscale.sim.kernel import O_UTIL
from rlscale.spaces import Action

SUBSTEPS = 5
BUSY_RANGE = (0.05, 0.85)
CV_RANGE = (0.0, 2.0)
"""Coefficients of variation the fit searches: constant service time to twice an exponential's."""
STARTS = 3
"""Grid points a compass search starts from (the best ones)."""


@dataclass
class Replay:
    """The simulator's p95 latency and utilisation per interval, with the replicas that ran."""

    latency_p95_s: np.ndarray
    utilisation: np.ndarray
    replicas: np.ndarray


@dataclass
class FitErrors:
    """Measured vs replayed, over the intervals (see the module docstring)."""

    latency_p95_wape: float
    utilisation_wape: float
    latency_p95_mean_ape: float
    latency_p95_median_ape: float
    utilisation_mean_ape: float
    latency_intervals: int
    utilisation_intervals: int

    def as_dict(self) -> dict[str, float]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class Fit:
    capacity_rps: float
    work_s: float
    servers: float
    service_cv: float
    capacity_from: str
    cold_start_s: float
    provision_delay_s: float
    delays_from: str
    scale_up_events: int
    errors: FitErrors
    replay: Replay
    notes: list[str] = field(default_factory=list)


def replay(config: ServiceConfig, work_s: float, servers: float, arrivals: np.ndarray, ready: np.ndarray,
           step_s: float, service_cv: float = 1.0) -> Replay:
    """Play the history through the simulator with the measured ready replicas in every interval.

    ``ready`` is a mean over each interval (2.2 = a third replica for a fifth
    of it). The replay steps the simulator ``SUBSTEPS`` times per interval
    (one kernel sub-step each, the same ``dt`` as training's sub-steps) with
    the whole counts in proportion: when the count rose, the added replica
    comes at the end of the interval, when it fell, it leaves at the start.
    The interval's p95 is the worst sub-step's and its utilisation the mean,
    as the kernel does within a step.
    """
    mean = np.maximum(0.0, np.nan_to_num(ready, nan=0.0))
    lo = np.floor(mean + 1e-9).astype(np.int64)
    frac = mean - lo
    top = max(1, int(np.ceil(mean.max() - 1e-9)))
    parts = max(1, min(SUBSTEPS, int(step_s)))  # each part at least 1 s, a scenario's shortest step
    sc = _scenario_for_replay(config, work_s, servers, top, step_s / parts, service_cv)
    sim = Simulator(sc, 1)
    sim.reset(0, key=12345, initial_replicas=np.rint(mean[:1]).astype(np.int64))
    p95 = np.zeros(arrivals.size)
    util = np.zeros(arrivals.size)
    rebalance = np.zeros(1, dtype=np.int64)
    rate = np.zeros((1, 1))
    counts = np.zeros((1, 1), dtype=np.int64)
    for k in range(arrivals.size):
        rate[0, 0] = arrivals[k]
        upper = int(round(frac[k] * parts))
        rising = k == 0 or mean[k] >= mean[k - 1]
        for j in range(parts):
            extra = j >= parts - upper if rising else j < upper
            counts[0, 0] = lo[k] + (1 if extra else 0)
            result = sim.step(Action(replicas=counts.copy(), rebalance=rebalance), rate)
            p95[k] = max(p95[k], result.latency_p95_s[0, 0])
            util[k] += sim.out_s[0, 0, O_UTIL] / parts
    return Replay(p95, util, np.rint(mean).astype(np.int64))


def _scenario_for_replay(config: ServiceConfig, work_s: float, servers: float, top: int, step_s: float,
                         service_cv: float) -> Scenario:
    data = {
        "name": "assess-replay",
        "step_s": step_s,
        "substeps": 1,
        "episode_steps": 1,
        "pools": [{"name": "replay", "vcpu": servers, "memory_gib": 1.0, "price_per_hour": 0.0, "provision_delay_s": 0,
                   "max_nodes": max(top, 1), "idle_release_s": 0}],
        "services": [{"name": config.service, "work_s": work_s, "replica": {"cpu": servers, "memory_gib": 1.0},
                      "cold_start_s": 0.0, "min_replicas": 0, "max_replicas": max(top, 1),
                      "queue_limit": config.limits.queue_limit, "service_cv": service_cv, "slo": {"p95_latency_s": config.slo_s},
                      "pools": ["replay"], "workload": {"peak_rps": 1.0}}],
        "reward": {"cost_scale": 1.0},
        "imbalance": {"drift_sigma": 0.0, "drift_reversion": 0.0, "contention": 0.0},
    }
    scenario: Scenario = parse_model(Scenario, data, "assess replay scenario")
    return scenario


def errors(history: History, r: Replay) -> FitErrors:
    lat = history.series["latency_p95_s"]
    arrivals = history.series["arrivals_rps"]
    ok = np.isfinite(lat) & (lat > 0) & (arrivals > 0) & (r.replicas > 0) & ~history.filled
    rel = np.abs(r.latency_p95_s[ok] - lat[ok]) / lat[ok]
    util = history.series.get("utilisation")
    if util is not None:
        uok = np.isfinite(util) & (util > 0) & (r.replicas > 0) & ~history.filled
        u_wape = float(np.abs(r.utilisation[uok] - util[uok]).sum() / util[uok].sum()) if uok.any() else math.nan
        u_mape = float(np.mean(np.abs(r.utilisation[uok] - util[uok]) / util[uok])) if uok.any() else math.nan
        n_u = int(uok.sum())
    else:
        u_wape = u_mape = math.nan
        n_u = 0
    return FitErrors(
        latency_p95_wape=float(np.abs(r.latency_p95_s[ok] - lat[ok]).sum() / lat[ok].sum()) if ok.any() else math.nan,
        utilisation_wape=u_wape,
        latency_p95_mean_ape=float(rel.mean()) if rel.size else math.nan,
        latency_p95_median_ape=float(np.median(rel)) if rel.size else math.nan,
        utilisation_mean_ape=u_mape,
        latency_intervals=int(ok.sum()),
        utilisation_intervals=n_u,
    )


def capacity_from_utilisation(history: History) -> float | None:
    """Requests served per busy replica-second over the usable intervals: the capacity.

    ``u = (rate / ready) / mu``; summed over the usable intervals, ``mu`` is
    all arrivals over all busy replica-seconds (a ratio of sums, so the
    simulated utilisation adds up to the measured one), rather than a
    least-squares slope, which the busiest intervals dominate, and those are
    the ones most disturbed by counters that lag a scale-up by a scrape.
    """
    util = history.series.get("utilisation")
    if util is None:
        return None
    ready = history.series["ready"]
    x = np.where(ready > 0, history.series["arrivals_rps"] / np.maximum(ready, 1e-9), np.nan)
    ok = np.isfinite(x) & np.isfinite(util) & (util >= BUSY_RANGE[0]) & (util <= BUSY_RANGE[1]) & ~history.filled
    backlog = history.series.get("backlog")
    if backlog is not None:
        ok &= ~(backlog > 0.5)  # a queue was building: arrivals outran what was served
    if ok.sum() < 3:
        return None
    served = (x[ok] * ready[ok]).sum()
    busy = (util[ok] * ready[ok]).sum()
    return float(served / busy) if busy > 0 else None


def _latency_loss(history: History, r: Replay) -> float:
    lat = history.series["latency_p95_s"]
    ok = np.isfinite(lat) & (lat > 0) & (history.series["arrivals_rps"] > 0) & (r.replicas > 0) & ~history.filled
    if not ok.any():
        return math.inf
    sim = np.maximum(r.latency_p95_s[ok], 1e-6)
    return float(np.mean(np.abs(np.log(sim / lat[ok]))))


def fit_service(config: ServiceConfig, history: History, progress: Callable[[float], None] | None = None) -> Fit:
    """Capacity, service time and delays of one service (module docstring), with the replay's errors."""
    arrivals = history.series["arrivals_rps"]
    ready = history.series["ready"]
    step = history.step_s
    notes: list[str] = []
    mu = capacity_from_utilisation(history)
    capacity_from = "utilisation"
    lat = history.series["latency_p95_s"]
    floor = float(np.nanpercentile(lat[np.isfinite(lat) & (lat > 0)], 5))
    if mu is None:
        if history.series.get("utilisation") is not None:
            notes.append("utilisation was never between 5% and 85% busy without a queue: capacity fitted from latency")
        capacity_from = "latency"
        x = arrivals / np.maximum(ready, 1e-9)
        top = max(float(np.nanmax(x[ready > 0])), 1e-6)
        mu_range = (np.log(top * 0.5), np.log(top * 8.0))
    else:
        mu_range = (np.log(mu), np.log(mu))
    # the service time: from half the fastest p95 seen (5th percentile) to one and a half times it
    w_range = (np.log(floor * 0.5), np.log(floor * 1.5))
    cache: dict[tuple[float, float, float], float] = {}

    def loss(log_mu: float, log_w: float, cv: float) -> float:
        key = (round(log_mu, 9), round(log_w, 9), round(cv, 9))
        if key not in cache:
            m, w = math.exp(log_mu), math.exp(log_w)
            cache[key] = _latency_loss(history, replay(config, w, m * w, arrivals, ready, step, cv))
        return cache[key]

    # a coarse grid over (log capacity, log service time, cv) finds the basin, a compass search its floor. Without
    # utilisation cv stays at the M/M/c default: latency alone cannot tell a replica's capacity from its service
    # time's variability.
    if mu is None:
        ranges, sizes = [mu_range, w_range, (1.0, 1.0)], [9, 13, 1]
    else:
        ranges, sizes = [mu_range, w_range, CV_RANGE], [1, 9, 9]
    axes = [np.linspace(lo, hi, n) if n > 1 else np.array([lo]) for (lo, hi), n in zip(ranges, sizes)]
    points = [(m, w, cv) for m in axes[0] for w in axes[1] for cv in axes[2]]
    scores = [loss(*pt) for pt in points]
    if progress is not None:
        progress(0.4)
    steps = [(hi - lo) / (n - 1) if n > 1 else 0.0 for (lo, hi), n in zip(ranges, sizes)]
    bounds = [(-math.inf, math.inf)] * 2 + [CV_RANGE]
    # from the three best grid points: a service time and a variability can trade off along a narrow valley
    ends = [compass(lambda x: loss(*x), points[i], steps, bounds) for i in np.argsort(scores)[:STARTS]]
    best_mu, best_w, best_cv = min(ends, key=lambda x: loss(*x))
    if progress is not None:
        progress(1.0)
    mu_best, w_best = math.exp(best_mu), math.exp(best_w)
    final = replay(config, w_best, mu_best * w_best, arrivals, ready, step, best_cv)
    cold, provision, source, events, more = delays(config, history)
    notes += more
    return Fit(
        capacity_rps=mu_best, work_s=w_best, servers=mu_best * w_best, service_cv=best_cv, capacity_from=capacity_from,
        cold_start_s=cold, provision_delay_s=provision, delays_from=source, scale_up_events=events,
        errors=errors(history, final), replay=final, notes=notes,
    )


def compass(f: Callable[[tuple[float, ...]], float], start: tuple[float, ...], steps: list[float],
            bounds: list[tuple[float, float]], shrink_to: float = 1 / 32, max_evals: int = 120) -> tuple[float, ...]:
    """Compass search: move to the best of +-step along each axis; halve the steps when none is better.

    Derivative-free and monotone, so a replay (piecewise, clipped) is a fine
    objective; the grid before it has already picked the basin. Axes with a
    zero step are held.
    """
    x = tuple(float(v) for v in start)
    fx = f(x)
    step = list(steps)
    floor = [s * shrink_to for s in steps]
    evals = 0
    while evals < max_evals and any(s > lo for s, lo in zip(step, floor)):
        moves = []
        for i, s in enumerate(step):
            if s <= floor[i]:
                continue
            for sign in (1.0, -1.0):
                y = list(x)
                y[i] = min(max(x[i] + sign * s, bounds[i][0]), bounds[i][1])
                if y[i] != x[i]:
                    moves.append(tuple(y))
        scored = [(f(y), y) for y in moves]
        evals += len(scored)
        better = min(scored, default=(math.inf, x))
        if better[0] < fx:
            fx, x = better
        else:
            step = [s / 2.0 for s in step]
    return x


def delays(config: ServiceConfig, history: History) -> tuple[float, float, str, int, list[str]]:
    """Cold start and provisioning delay from the replicas that appeared inside the history.

    Each such replica reports its own delay from creation to ready
    (``queries.cold_start_s``). With a ``nodes`` query (and no configured
    ``pool.provision_delay_s``), a replica whose node count rose between its
    creation and its readiness waited for a node: the provisioning delay is
    the median delay of those minus the median of the others (the cold
    start). Without events, the configured values (or 0), and a note says so.
    """
    notes: list[str] = []
    starts = history.replica_starts
    configured = config.pool.provision_delay_s
    if not starts:
        if config.queries.cold_start_s is None:
            notes.append("no cold_start_s query: cold start 0 s; provisioning from pool.provision_delay_s (or 0)")
        else:
            notes.append("no replica started inside the history: cold start 0 s (no scale-up event to measure)")
        return 0.0, configured or 0.0, "none", 0, notes
    seen = np.array([a for a, _ in starts])
    d = np.array([b for _, b in starts])
    nodes = history.series.get("nodes")
    if nodes is not None and configured is None:
        at = lambda t: np.interp(t, history.t, nodes)  # noqa: E731
        waited = at(seen) > at(seen - d - history.step_s) + 0.5
        if waited.any() and (~waited).any():
            cold = float(np.median(d[~waited]))
            return cold, max(0.0, float(np.median(d[waited])) - cold), "scale-up events with nodes", len(starts), notes
        notes.append("no scale-ups both with and without a new node: provisioning delay 0 s, the whole delay is cold start")
        return float(np.median(d)), 0.0, "scale-up events", len(starts), notes
    return float(np.median(d)), configured or 0.0, "scale-up events", len(starts), notes


def cost_per_replica_hour(config: ServiceConfig) -> float:
    return config.pool.price_per_hour / config.pool.replicas_per_node


def summary(fit: Fit) -> dict[str, Any]:
    """The fit's numbers as JSON values (the scenario's metadata and the report)."""
    return {
        "capacity_rps_per_replica": round(fit.capacity_rps, 4),
        "service_time_s": round(fit.work_s, 5),
        "servers_per_replica": round(fit.servers, 4),
        "service_cv": round(fit.service_cv, 4),
        "capacity_from": fit.capacity_from,
        "cold_start_s": round(fit.cold_start_s, 3),
        "provision_delay_s": round(fit.provision_delay_s, 3),
        "delays_from": fit.delays_from,
        "scale_up_events": fit.scale_up_events,
        "errors": fit.errors.as_dict(),
        "notes": list(fit.notes),
    }
