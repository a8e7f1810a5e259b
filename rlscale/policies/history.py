"""A service's own past demand, and what it says about the next lead time (DESIGN.md section 15).

Inside one episode nothing tells traffic that will have a crowd from traffic
that will not; the service's own past does. Production autoscalers read it the
same way: AWS predictive scaling forecasts from up to 14 days, Google
Autopilot and DeepScaling calibrate each service's safe target on its own
history. The models here are the ones that keep winning on cloud workloads and
are small enough to fit at serve time in numpy: seasonal naive (same time
yesterday, last week) and ridge regression on lags with daily terms, with
error quantiles measured on the same history.

Arrays are ``[N, L, S]`` (clusters, intervals oldest first, services): one
row per decision interval, ``NaN`` where a sample is missing. Everything
returned is relative to the demand now (logs of ratios), so it means the same
on any cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_DAYS = 7
MAX_DAYS = 14
MIN_DAYS = 1.0
"""Less than a day of history is no history: the policy falls back to its history-free behaviour."""
RIDGE = 1.0
LOG_EPS = 1e-3
"""Logs of demand take ``log(x + LOG_EPS * mean)``, so an idle interval is not minus infinity."""
CROWD_LOG_RISE = float(np.log(1.5))
"""A rise of 50% or more within the lead time counts as a crowd."""
QUANTILES = (0.5, 0.9, 0.99)

OVERRUN_LEVELS = (0.40, 0.50, 0.58, 0.65, 0.72, 0.78, 0.84, 0.90)
"""Target utilisations whose past overruns the history reports (the generalist's levels, ``relative.LEVELS``)."""
OVERRUN_UTILISATION = 0.9
"""A rise overruns a level when the demand it brings within the lead time would run capacity sized at that
level above this utilisation: where latency climbs."""

FEATURES = (
    "has_history", "history_days", "log_yesterday", "log_last_week", "log_forecast",
    "forecast_err_q50", "forecast_err_q90", "forecast_err_q99", "rise_q90", "rise_q99", "crowds_per_day",
    *(f"overrun_at_{level:g}" for level in OVERRUN_LEVELS),
)
N_FEATURES = len(FEATURES)
_BASE = 11  # features before the overruns


def days_wanted(policy: object) -> float:
    """Days of history a policy reads (its card's ``history.days``, or its ``calibration.days``); 0 for none."""
    days = [float(section.get("days", DEFAULT_DAYS)) for section in
            (getattr(policy, "history", None), getattr(policy, "calibration", None)) if isinstance(section, dict)]
    return max(days, default=0.0)


def steps_per_day(step_s: float) -> int:
    return max(1, int(round(86_400.0 / step_s)))


def _logs(y: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(y, 0.0) + scale)


def _regressors(logs: np.ndarray, t: np.ndarray, h: int, day: int, tod: np.ndarray) -> np.ndarray:
    """The ridge's inputs at decision indices ``t`` for a forecast ``h`` ahead: ``[len(t), 7]``.

    Last value, the mean of the last three, yesterday and last week at the
    target time (last week falls back to yesterday where the history is short),
    and the time of day of the target.
    """
    last = logs[t]
    recent = (logs[t] + logs[t - 1] + logs[t - 2]) / 3.0
    yday = logs[t + h - day]
    wk_idx = t + h - 7 * day
    week = np.where(wk_idx >= 0, logs[np.maximum(wk_idx, 0)], yday)
    angle = 2.0 * np.pi * tod
    return np.stack([np.ones_like(last), last, recent, yday, week, np.sin(angle), np.cos(angle)], axis=1)


@dataclass
class ServiceForecast:
    """The fit for one service of one cluster: ridge weights and what its errors and rises looked like."""

    weights: np.ndarray  # [7], or empty when the history is too short
    err_q: np.ndarray  # [3] quantiles of log(actual / forecast) at the lead time
    rise_q: np.ndarray  # [2] q90, q99 of log(max over the next lead / now)
    crowds_per_day: float
    overrun: np.ndarray  # [len(OVERRUN_LEVELS)] share of past intervals whose rise overran each level
    scale: float
    days: float


_NO_OVERRUN = np.zeros(len(OVERRUN_LEVELS))
EMPTY = ServiceForecast(np.zeros(0), np.zeros(3), np.zeros(2), 0.0, _NO_OVERRUN, 1.0, 0.0)


def fit_service(y: np.ndarray, h: int, day: int, phase0: float) -> ServiceForecast:
    """Fit one service's series ``y`` ``[L]`` (NaN gaps allowed) for lead ``h`` intervals.

    ``phase0`` is the time of day of ``y[0]`` as a fraction of a day. Gaps are
    filled by carrying the last value forward (a restart leaves a hole, not a
    zero); intervals whose lags fall in a gap are left out of the fit and of
    the error quantiles.
    """
    L = y.shape[0]
    valid = np.isfinite(y)
    days = float(valid.sum()) / day
    if days < MIN_DAYS or L < day + h + 3:
        return ServiceForecast(np.zeros(0), np.zeros(3), np.zeros(2), 0.0, _NO_OVERRUN, 1.0, days)
    filled = y.copy()
    idx = np.where(valid, np.arange(L), 0)
    np.maximum.accumulate(idx, out=idx)
    filled = filled[idx]
    first = int(np.argmax(valid))
    filled[:first] = filled[first]
    scale = LOG_EPS * max(float(np.nanmean(y)), 1e-9)
    logs = _logs(filled, scale)
    t = np.arange(max(day - h, 2), L - h)
    good = valid[t] & valid[t + h] & valid[t - 1] & valid[t - 2] & valid[t + h - day]
    t = t[good]
    if t.size < 16:
        return ServiceForecast(np.zeros(0), np.zeros(3), np.zeros(2), 0.0, _NO_OVERRUN, scale, days)
    tod = (phase0 + (t + h) / day) % 1.0
    X = _regressors(logs, t, h, day, tod)
    target = logs[t + h]
    A = X.T @ X + RIDGE * np.eye(X.shape[1])
    A[0, 0] -= RIDGE  # the intercept is not shrunk
    w = np.linalg.solve(A, X.T @ target)
    err = target - X @ w
    # the worst rise within the next h intervals, against now
    ahead = np.full(L - h, -np.inf)
    for k in range(1, h + 1):
        np.maximum(ahead, logs[k : L - h + k], out=ahead)
    rise = ahead - logs[: L - h]
    ok_rise = valid[: L - h]
    rise = rise[ok_rise]
    crowds = float((rise > CROWD_LOG_RISE).sum()) / max(days, MIN_DAYS)
    limits = np.log(OVERRUN_UTILISATION / np.asarray(OVERRUN_LEVELS))
    overrun = (rise[:, None] > limits[None, :]).mean(axis=0) if rise.size else _NO_OVERRUN
    return ServiceForecast(
        weights=w,
        err_q=np.quantile(err, QUANTILES),
        rise_q=np.quantile(rise, (0.9, 0.99)) if rise.size else np.zeros(2),
        crowds_per_day=crowds,
        overrun=overrun,
        scale=scale,
        days=days,
    )


class DemandHistory:
    """Each cluster's per-service demand, one row per decision interval, with the fits that read it.

    ``load`` gives a cluster its past (a trace's preceding days, warm-up days
    of a generator, or what Prometheus kept); ``append`` adds each interval the
    policy sees, so the history grows while it serves. The fits are redone
    every ``refit_steps`` intervals (a day by default): a forecast this small
    costs milliseconds, and a day's new evidence is what changes it.
    """

    def __init__(self, n: int, n_services: int, step_s: float, lead_steps: np.ndarray,
                 days: float = DEFAULT_DAYS, refit_steps: int | None = None) -> None:
        self.n, self.S = n, n_services
        self.step_s = float(step_s)
        self.day = steps_per_day(step_s)
        self.cap = int(round(min(max(days, MIN_DAYS), MAX_DAYS) * self.day))
        self.h = np.maximum(np.rint(np.asarray(lead_steps, dtype=np.float64)), 1).astype(np.int64)
        self.refit_steps = int(refit_steps or self.day)
        # room for the history plus a day of appends before it is trimmed
        self.series = np.full((n, self.cap + self.day, n_services), np.nan)
        self.length = np.zeros(n, dtype=np.int64)
        self.t0_s = np.zeros(n)  # time of the first row of each cluster's series
        self.since_fit = np.zeros(n, dtype=np.int64)
        self.weights = np.zeros((n, n_services, 7))
        self.err_q = np.zeros((n, n_services, 3))
        self.rise_q = np.zeros((n, n_services, 2))
        self.crowds = np.zeros((n, n_services))
        self.overrun = np.zeros((n, n_services, len(OVERRUN_LEVELS)))
        self.scale = np.ones((n, n_services))
        self.fit_days = np.zeros((n, n_services))
        self.fitted = np.zeros((n, n_services), dtype=bool)

    def reset(self, mask: np.ndarray | None = None) -> None:
        rows = np.arange(self.n) if mask is None else np.flatnonzero(mask)
        for i in rows:
            self.series[i] = np.nan
            self.length[i] = 0
            self.since_fit[i] = 0
            self._store(i, [EMPTY] * self.S)

    def load(self, i: int, past: np.ndarray, end_s: float) -> None:
        """Cluster ``i``'s past ``[L, S]`` (oldest first), whose last row is the interval ending at ``end_s``."""
        past = np.asarray(past, dtype=np.float64).reshape(-1, self.S)[-self.cap:]
        L = past.shape[0]
        self.series[i] = np.nan
        self.series[i, :L] = past
        self.length[i] = L
        self.t0_s[i] = end_s - (L - 1) * self.step_s
        self.refit(i)

    def days(self) -> np.ndarray:
        """``[N, S]`` days of samples each service has (gaps not counted)."""
        cols = np.arange(self.series.shape[1])[None, :, None] < self.length[:, None, None]
        return (np.isfinite(self.series) & cols).sum(axis=1) / self.day

    def refit(self, i: int) -> None:
        L = int(self.length[i])
        phase0 = (self.t0_s[i] % 86_400.0) / 86_400.0
        self._store(i, [fit_service(self.series[i, :L, j], int(self.h[j]), self.day, phase0) for j in range(self.S)])
        self.since_fit[i] = 0

    def _store(self, i: int, fits: list[ServiceForecast]) -> None:
        for j, f in enumerate(fits):
            self.fitted[i, j] = f.weights.size > 0
            if self.fitted[i, j]:
                self.weights[i, j] = f.weights
            self.err_q[i, j], self.rise_q[i, j] = f.err_q, f.rise_q
            self.crowds[i, j], self.scale[i, j], self.fit_days[i, j] = f.crowds_per_day, f.scale, f.days
            self.overrun[i, j] = f.overrun

    def append(self, arrivals: np.ndarray, time_s: np.ndarray) -> None:
        """Add one interval ``[N, S]`` for every cluster (NaN where a reading is missing)."""
        arrivals = np.asarray(arrivals, dtype=np.float64)
        full = self.length >= self.series.shape[1]
        for i in np.flatnonzero(full):
            keep = self.cap - 1
            self.series[i, :keep] = self.series[i, self.length[i] - keep : self.length[i]]
            self.series[i, keep:] = np.nan
            self.t0_s[i] += (self.length[i] - keep) * self.step_s
            self.length[i] = keep
        rows = np.arange(self.n)
        fresh = self.length == 0
        self.t0_s[fresh] = np.asarray(time_s, dtype=np.float64).reshape(-1)[fresh]
        self.series[rows, self.length] = arrivals
        self.length += 1
        self.since_fit += 1
        for i in np.flatnonzero(self.since_fit >= self.refit_steps):
            self.refit(i)

    def _at(self, idx: np.ndarray) -> np.ndarray:
        """``series[i, idx[i, j], j]`` for ``idx`` ``[N, S]``; NaN where ``idx`` is before the first row."""
        rows = np.arange(self.n)[:, None]
        cols = np.arange(self.S)[None, :]
        out = self.series[rows, np.maximum(idx, 0), cols]
        return np.where(idx >= 0, out, np.nan)

    def features(self, now: np.ndarray) -> np.ndarray:
        """``[N, S, N_FEATURES]`` of what the past says about the next lead time, against the demand ``now``.

        Called after ``append`` of this interval. A service with less than
        ``MIN_DAYS`` of samples gets zeros but its ``history_days`` (and
        ``has_history`` 0): the policy's history-free behaviour.
        """
        now = np.maximum(np.asarray(now, dtype=np.float64), 0.0)
        scale = self.scale
        e = (self.length - 1)[:, None] + np.zeros((1, self.S), dtype=np.int64)
        h = self.h[None, :]
        log_now = np.log(now + scale)

        def logged(x: np.ndarray, fallback: np.ndarray) -> np.ndarray:
            return np.where(np.isfinite(x), np.log(np.maximum(x, 0.0) + scale), fallback)

        last = [logged(self._at(e - k), log_now) for k in range(3)]
        lyday = logged(self._at(e + h - self.day), log_now)
        lweek = logged(self._at(e + h - 7 * self.day), lyday)
        tod = ((self.t0_s[:, None] + (e + h) * self.step_s) % 86_400.0) / 86_400.0
        angle = 2.0 * np.pi * tod
        x = np.stack([np.ones_like(log_now), last[0], (last[0] + last[1] + last[2]) / 3.0, lyday, lweek,
                      np.sin(angle), np.cos(angle)], axis=2)
        forecast = (x * self.weights).sum(axis=2)
        on = self.fitted
        out = np.zeros((self.n, self.S, N_FEATURES))
        out[:, :, 0] = on
        out[:, :, 1] = np.minimum(self.fit_days, MAX_DAYS) / DEFAULT_DAYS
        cols = [lyday - log_now, lweek - log_now, forecast - log_now, *np.moveaxis(self.err_q, 2, 0),
                *np.moveaxis(self.rise_q, 2, 0), np.minimum(self.crowds, 48.0) / 8.0]
        for k, col in enumerate(cols):
            out[:, :, 2 + k] = np.where(on, col, 0.0)
        # overrun shares sit in [0, 1]; a square root x3 so the rare ones (0.1-1%) that decide a level are visible
        out[:, :, _BASE:] = np.where(on[:, :, None], np.sqrt(self.overrun) * 3.0, 0.0)
        return out


def forecast_ratio(features: np.ndarray, quantile: int) -> np.ndarray:
    """``[N, S]`` demand at the lead time over demand now, from ``DemandHistory.features``, at error quantile
    ``quantile`` (an index into ``QUANTILES``); 1 where a service has no fit."""
    ratio = np.exp(np.clip(features[:, :, 4] + features[:, :, 5 + quantile], -3.0, 3.0))
    return np.where(features[:, :, 0] > 0, ratio, 1.0)
