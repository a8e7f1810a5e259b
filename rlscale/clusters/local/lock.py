"""The local cluster's controller lease: ``flock`` on ``RUN_DIR/controller.lock`` (see ``rlscale.controller.lease``).

An advisory ``flock`` belongs to the open file, and the kernel drops it when
the last descriptor closes, so a controller killed with SIGKILL frees the
cluster at the instant it dies: no lease to wait out, no stale file to clean.
The descriptor is not inherited by the processes a controller starts
(Python opens files non-inheritable), so an orphaned worker cannot keep it.

The holder writes who it is into the lock file itself, in place: the lock is
on the file's inode, so the file cannot be replaced by a rename the way other
files here are written; a reader sees at worst an empty file (holder
unknown). The file is never deleted: a controller that locked a deleted file
and one that created a new one would both believe they decide. ``held``
checks that the path still names the inode we locked, so a lock file removed
under a running controller stops it acting rather than letting a second one in.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from rlscale.config import ConfigError

LOCK_FILE = "controller.lock"
_HOLDER_LIMIT = 512


class RunDirLock:
    """The lock one controller holds on a local cluster's run directory while it decides."""

    retry_s = 0.25
    """A standby polls this often; the kernel frees the lock when its holder dies, so nothing else waits."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        root = Path(run_dir).resolve()
        if root.exists() and not root.is_dir():
            raise ConfigError(f"--run-dir {run_dir}: not a directory")
        self.path = root / LOCK_FILE
        self.what = f"--run-dir {run_dir} (lock {self.path})"
        self._fd: int | None = None
        self._inode: tuple[int, int] | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return self.held()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ConfigError(f"{self.what}: cannot open the lock file ({err.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        st = os.fstat(fd)
        self._fd, self._inode = fd, (st.st_dev, st.st_ino)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        note = f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, note, 0)
        except OSError:
            pass  # the note is for humans; the lock is what counts
        return True

    def held(self) -> bool:
        if self._fd is None:
            return False
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._inode

    def contested(self) -> bool:
        """A failed ``flock`` is the evidence: only a live process holds one."""
        return True

    def problem(self) -> str | None:
        return None  # a lock file that cannot be opened is a ConfigError at once

    def holder(self) -> str | None:
        """Who holds it, as the holder wrote it (``pid N on HOST since TIME``), or None when unknown."""
        try:
            with open(self.path, "rb") as f:
                text = f.read(_HOLDER_LIMIT).decode(errors="replace").strip()
        except OSError:
            return None
        return text.splitlines()[0] if text else None

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = self._inode = None
