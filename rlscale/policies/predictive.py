"""Predictive scaling: size each service for the next interval's forecast arrival rate.

Reactive policies pay a cold start on every ramp; forecasting the next
interval buys that time back. The forecast is deliberately simple and
biased upwards, because under-forecasting costs SLO while over-forecasting
only costs money:

    forecast = max(last, Holt level + trend, seasonal)

* ``last``: the arrival rate just observed (never forecast below it).
* Holt's linear smoothing (``alpha``, ``beta``) catches ramps before a day of
  history exists.
* ``seasonal`` (once a full day, ``round(86400 / step_s)`` steps, plus
  ``level_window`` steps of history exists): the rate one day before the next
  interval, scaled by the ratio of the last ``level_window`` steps to the same
  steps a day earlier (clipped to [0.5, 2] so near-empty days do not explode).
  It lets the policy anticipate the daily ramp-up.

Replicas are ``ceil(forecast * headroom / (replica_rps * target_utilisation))``;
scale-up is immediate, scale-down removes at most ``max_scale_down`` of the
current replicas per step (at least one), then min/max. NaN arrivals hold the
current replicas and are carried forward as the last value in the history.
"""

from __future__ import annotations

import numpy as np

from rlscale.config import ConfigError, Scenario
from rlscale.policies.base import ClusterAutoscaler, ceil_count, check_batch, replica_bounds, service_rps, step_down_limit
from rlscale.spaces import SECONDS_PER_DAY, Action, Metrics

RATIO_CLIP = (0.5, 2.0)
ARRIVALS_CAP = 1e15


class PredictivePolicy:
    """Forecast arrivals (``metrics.arrivals_rps``) one step ahead and provision for them."""

    name = "predictive"

    def __init__(
        self,
        scenario: Scenario,
        target_utilisation: float = 0.7,
        headroom: float = 1.1,
        max_scale_down: float = 0.1,
        alpha: float = 0.5,
        beta: float = 0.3,
        level_window: int = 15,
    ) -> None:
        if target_utilisation <= 0 or headroom <= 0 or not 0 < max_scale_down <= 1 or level_window < 1:
            raise ConfigError(
                "predictive: target_utilisation and headroom must be > 0, max_scale_down in (0, 1], level_window >= 1"
            )
        self.scenario = scenario
        self.nodes = ClusterAutoscaler(scenario)
        self.target, self.headroom, self.max_scale_down = target_utilisation, headroom, max_scale_down
        self.alpha, self.beta, self.level_window = alpha, beta, level_window
        self.season = max(1, round(SECONDS_PER_DAY / scenario.step_s))
        self.rps = service_rps(scenario)
        self.lo, self.hi = replica_bounds(scenario)
        self.reset(1)

    def reset(self, n: int = 1) -> None:
        self.nodes.reset(n)
        s = len(self.scenario.services)
        self.n = n
        self._hist = np.zeros((n, self.season + self.level_window, s))
        self._head = 0
        self._count = 0
        self._level = np.zeros((n, s))
        self._trend = np.zeros((n, s))

    def _lagged(self, lag: int, k: int = 1) -> np.ndarray:
        """``k`` observations ending ``lag`` steps before the latest, ``[N, k, S]``."""
        idx = (self._head - 1 - lag - np.arange(k)) % self._hist.shape[1]
        return self._hist[:, idx]

    def forecast(self, arrivals: np.ndarray) -> np.ndarray:
        """Record this interval's arrivals ``[N, S]`` and return next interval's forecast."""
        last = self._lagged(0)[:, 0] if self._count else np.zeros_like(self._level)
        y = np.where(np.isnan(arrivals), last, np.clip(arrivals, 0.0, ARRIVALS_CAP))
        self._hist[:, self._head] = y
        self._head = (self._head + 1) % self._hist.shape[1]
        self._count += 1
        if self._count == 1:
            self._level, self._trend = y.copy(), np.zeros_like(y)
        else:
            level = self.alpha * y + (1 - self.alpha) * (self._level + self._trend)
            self._trend = self.beta * (level - self._level) + (1 - self.beta) * self._trend
            self._level = level
        forecast = np.maximum(y, self._level + self._trend)
        if self._count >= self.season + self.level_window:
            k, day = self.level_window, self.season
            recent = self._lagged(0, k).sum(axis=1)
            before = self._lagged(day, k).sum(axis=1)
            ratio = np.clip(np.divide(recent, before, out=np.ones_like(recent), where=before > 0), *RATIO_CLIP)
            forecast = np.maximum(forecast, self._lagged(day - 1)[:, 0] * ratio)
        return forecast

    def act(self, metrics: Metrics) -> Action:
        check_batch(self.n, metrics, self.name)
        arrivals = np.asarray(metrics.arrivals_rps, dtype=np.float64)
        forecast = self.forecast(arrivals)
        current = np.clip(np.rint(metrics.desired).astype(np.int64), self.lo, self.hi)
        wanted = ceil_count(forecast * self.headroom / (self.rps * self.target))
        wanted = np.maximum(wanted, current - step_down_limit(current, self.max_scale_down))
        wanted = np.where(np.isnan(arrivals), current, wanted)
        return Action(replicas=np.clip(wanted, self.lo, self.hi), rebalance=self.nodes.rebalance(metrics))
