"""Shared pytest fixtures (helpers may add their own below: additive edits only)."""

import os
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import settings

# Hypothesis' per-example deadline is a timed assertion: the first example that reaches a numba kernel pays for
# compiling it (0.5 s on a clean checkout), which says nothing about the property under test.
settings.register_profile("rlscale", deadline=None)
settings.load_profile("rlscale")


@pytest.fixture
def exported_policy(tmp_path):
    """A real exported PPO policy (random weights) for web-diurnal: a directory with policy.npz + card.json."""
    from helpers import export_random_policy

    return export_random_policy(tmp_path / "exported-policy")


# A test that measures a real cluster (its fit is judged against what the cluster did) runs with the other
# xdist worker paused: with 2 cores, a neighbour's compile or training made the measured utilisation
# swing (fit error 0.04 alone, 0.12 beside the suite). Files in the temp dir, shared by the run's workers:
# the quiet test announces itself, waits for tests already running to end, and others wait before starting.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid()))
_LOCKS = Path(tempfile.gettempdir()) / f"rlscale-tests-{_RUN}"
QUIET_WAIT_S = 600.0


def _wait(condition, what: str) -> None:
    deadline = time.monotonic() + QUIET_WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {QUIET_WAIT_S:.0f} s for {what}")
        time.sleep(0.2)


@pytest.fixture(autouse=True)
def _quiet_machine(request):
    if "PYTEST_XDIST_WORKER" not in os.environ:  # serial run: nobody to pause
        yield
        return
    _LOCKS.mkdir(exist_ok=True)
    quiet = _LOCKS / "quiet"
    mine = _LOCKS / f"busy-{os.getpid()}"
    if request.node.get_closest_marker("quiet_machine"):
        _wait(lambda: not quiet.exists(), "another quiet test")
        quiet.touch()
        try:
            _wait(lambda: not any(_LOCKS.glob("busy-*")), "the other worker's running test to end")
            yield
        finally:
            quiet.unlink(missing_ok=True)
        return
    while True:
        _wait(lambda: not quiet.exists(), "a quiet test to end")
        mine.touch()
        if not quiet.exists():
            break
        mine.unlink(missing_ok=True)  # a quiet test announced itself meanwhile: let it go first
    try:
        yield
    finally:
        mine.unlink(missing_ok=True)


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """A line every half minute in which no test finished, naming the running ones (``heartbeat.py``)."""
    from heartbeat import install

    install(config)
