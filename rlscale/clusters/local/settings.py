"""The knobs of the local cluster, in one frozen dataclass (defaults = what envs/local.yaml was calibrated with)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from rlscale.config import ConfigError


@dataclass(frozen=True)
class LocalSettings:
    """How the local cluster is built and observed.

    Worker sizing (see ``worker.py``): each request holds one of a worker's
    ``concurrency`` slots for ``cpu_s`` of real CPU plus ``wait_s`` of
    waiting, so a worker serves about ``concurrency / (cpu_s + wait_s)``
    requests/s using at most ``concurrency * cpu_s / (cpu_s + wait_s)`` cores.
    The defaults give 25 requests/s and 1/8 core per worker: eight busy
    workers use one core and leave the other to HAProxy, Prometheus and the
    load generator.

    ``interval_s`` is the decision interval and the window of every rate
    (None: the scenario's ``step_s``). ``warmup_s`` is slept before a worker
    listens, the stand-in for loading a model; a worker's cold start is that
    plus the interpreter's start-up plus registration in HAProxy.
    """

    interval_s: float | None = None
    scrape_s: float = 1.0
    cpu_s: float = 0.005
    wait_s: float = 0.035
    concurrency: int = 1
    warmup_s: float = 1.0
    max_workers: int = 8
    queue_timeout_s: float = 10.0
    drain_timeout_s: float = 10.0
    startup_timeout_s: float = 30.0
    down_timeout_s: float = 3.0
    health_inter_ms: int = 500
    start_s: float = 0.0
    restart_infra: bool = True
    tick_s: float = 0.2
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        checks = {
            "scrape_s": self.scrape_s > 0,
            "cpu_s": self.cpu_s >= 0,
            "wait_s": self.wait_s >= 0,
            "concurrency": self.concurrency >= 1,
            "warmup_s": self.warmup_s >= 0,
            "max_workers": 1 <= self.max_workers <= 64,
            "queue_timeout_s": self.queue_timeout_s > 0,
            "tick_s": 0 < self.tick_s <= 2,
        }
        if self.interval_s is not None:
            checks["interval_s"] = self.interval_s >= 2 * self.scrape_s
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"local cluster settings: {name}={getattr(self, name)!r} is out of range")
        if self.cpu_s + self.wait_s <= 0:
            raise ConfigError("local cluster settings: cpu_s + wait_s must be > 0")
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            raise ConfigError(f"local cluster settings: host={self.host!r}; the local cluster binds loopback only")

    @property
    def service_time_s(self) -> float:
        return self.cpu_s + self.wait_s

    @property
    def worker_rps(self) -> float:
        """Nominal requests/s of one worker (calibration measures the real one)."""
        return self.concurrency / self.service_time_s

    @property
    def worker_cores(self) -> float:
        """Cores one fully busy worker uses."""
        return self.concurrency * self.cpu_s / self.service_time_s

    def resolved(self, step_s: float) -> "LocalSettings":
        """A copy with ``interval_s`` filled in from the scenario."""
        if self.interval_s is not None:
            return self
        return replace(self, interval_s=max(step_s, 2 * self.scrape_s))

    @property
    def window_s(self) -> float:
        """The range of every PromQL rate: one interval, and at least three scrapes."""
        assert self.interval_s is not None, "call resolved() first"
        return max(self.interval_s, 3 * self.scrape_s)
