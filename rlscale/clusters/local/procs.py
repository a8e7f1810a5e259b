"""Child processes of the local cluster: started so that none can outlive rlscale.

Three layers make sure of that:

* ``close()`` stops every child it started (SIGTERM to its process group,
  then SIGKILL after a grace period) and reaps it;
* each child asks the kernel for ``SIGKILL`` when its parent dies
  (``prctl(PR_SET_PDEATHSIG)``), which covers a crash or a ``kill -9`` of
  rlscale. Linux sends it when the *thread* that forked the child exits, so
  the local backend forks every child from its one long-lived supervisor
  thread;
* each child runs in its own session and process group, so a Ctrl-C in the
  terminal reaches rlscale only, which then stops the children in order.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlscale.config import ConfigError

log = logging.getLogger("rlscale.clusters.local")

_PR_SET_PDEATHSIG = 1
_libc: ctypes.CDLL | None = None


def require_binary(name: str, package: str | None = None) -> str:
    """The binary's path, or a one-line ConfigError saying what to install."""
    path = shutil.which(name)
    if path is None:
        raise ConfigError(
            f"{name}: not found on PATH; the local cluster needs it (install it with: apt-get install -y {package or name})"
        )
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is free now (another process could still take it before we bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _pdeathsig_preexec(parent: int):  # type: ignore[no-untyped-def]
    """A preexec_fn that makes the child die with its parent (resolved before the fork)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    prctl = _libc.prctl

    def setup() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return setup


@dataclass
class Child:
    """One process rlscale started, with where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return int(self.popen.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def exit_code(self) -> int | None:
        return self.popen.poll()

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])


class ProcessTable:
    """Every child this backend started; ``stop_all`` leaves none running."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.started_pids: list[int] = []

    def spawn(self, name: str, argv: list[str], log_path: Path, cwd: Path | None = None) -> Child:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            popen = subprocess.Popen(  # noqa: S603 - argv is built by rlscale, never a shell string
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_pdeathsig_preexec(os.getpid()),  # noqa: PLW1509 - see module docstring
                close_fds=True,
            )
        child = Child(name, popen, log_path)
        self.children.append(child)
        self.started_pids.append(child.pid)
        return child

    def stop(self, child: Child, grace_s: float = 3.0) -> None:
        """SIGTERM the child's process group, SIGKILL it after ``grace_s``, and reap it."""
        if child.alive():
            _signal_group(child.pid, signal.SIGTERM)
            try:
                child.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(child.pid, signal.SIGKILL)
        try:
            child.popen.wait(timeout=5.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
            log.error("process %s (pid %d) did not exit after SIGKILL", child.name, child.pid)
        if child in self.children:
            self.children.remove(child)

    def stop_all(self, grace_s: float = 3.0) -> None:
        """Stop every child: all get SIGTERM first, so they shut down in parallel."""
        for child in list(self.children):
            if child.alive():
                _signal_group(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in list(self.children):
            self.stop(child, grace_s=max(0.0, deadline - time.monotonic()))


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def pid_running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (reads /proc, so no psutil is needed)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def pids_with_arg(fragment: str) -> list[int]:
    """PIDs of running processes whose command line contains ``fragment`` (e.g. a run directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fragment in cmdline and pid_running(int(entry.name)):
            found.append(int(entry.name))
    return found
