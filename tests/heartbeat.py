"""A line every half minute that no test has finished: which tests are running, and for how long.

The slow end-to-end tests run a real cluster for two minutes or more; with
the other xdist worker paused (``quiet_machine``) or also busy, pytest's
dots stop for that long and a user cannot tell a slow test from a hung one.
Only the xdist controller prints (it hears of every test's start and end
from the workers and owns the terminal); a serial run (``-n 0``) captures
output per test, so it stays as pytest prints it. ``RLSCALE_TEST_HEARTBEAT_S``
sets the interval (0 turns it off).
"""

from __future__ import annotations

import os
import threading
import time

import pytest

NAME = "rlscale-heartbeat"


class Heartbeat:
    def __init__(self, reporter: object, every_s: float) -> None:
        self.reporter = reporter
        self.every_s = every_s
        self.lock = threading.Lock()
        self.running: dict[str, float] = {}
        self.last_line = time.monotonic()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=NAME, daemon=True)

    def pytest_runtest_logstart(self, nodeid: str, location: object) -> None:
        with self.lock:
            self.running[nodeid] = time.monotonic()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        with self.lock:
            self.last_line = time.monotonic()
            if report.when == "teardown" or (report.when == "setup" and not report.passed):
                self.running.pop(report.nodeid, None)

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.thread.start()

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.done.set()

    def _beat(self) -> None:
        while not self.done.wait(1.0):
            now = time.monotonic()
            with self.lock:
                if now - self.last_line < self.every_s or not self.running:
                    continue
                self.last_line = now
                tests = ", ".join(f"{nodeid} ({now - t0:.0f} s)" for nodeid, t0 in sorted(self.running.items(), key=lambda x: x[1]))
            self.reporter.write_line(f"still running: {tests}")  # type: ignore[attr-defined]


def install(config: pytest.Config) -> None:
    """Register the heartbeat on the xdist controller (see the module docstring)."""
    every_s = float(os.environ.get("RLSCALE_TEST_HEARTBEAT_S", "30"))
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if (every_s <= 0 or reporter is None or hasattr(config, "workerinput") or not config.pluginmanager.hasplugin("xdist")
            or not getattr(config.option, "numprocesses", None) or config.pluginmanager.has_plugin(NAME)):
        return
    config.pluginmanager.register(Heartbeat(reporter, every_s), NAME)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    install(config)
