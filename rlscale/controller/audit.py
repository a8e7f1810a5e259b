"""The audit log: one JSON object per line, appended, rotated by size, and never allowed to stop a decision.

Each line is written with a single ``write`` on an ``O_APPEND`` descriptor, so
a line is either whole or (after a crash mid-write) torn at the very end of
the file. On open, a torn last line is cut off and the repair is recorded, so
a restarted controller continues a log that every JSONL reader can parse.
That repair truncates a file, so it is only ever done to a file whose first
line is an rlscale audit record: ``--audit-log policy.npz`` given by mistake
is refused, not cut.

A full disk or any other write error must not turn into failed decisions
(an autoscaler that stops scaling because its log is full is worse than one
with a gap in its log). A failed write is counted (``write_errors``, exported
as ``rlscale_audit_write_errors_total``), makes ``/healthz`` say
``degraded``, and the line is kept in a bounded in-memory tail that is
written, in order, as soon as a write succeeds again; only lines pushed out
of that tail are lost (``lines_lost``). A short write (the disk filled up
mid-line) is cut back off the file, so the file never holds half a line.
The operator hears of it at once, not at exit: one line on stderr when
writes start failing, one when the held tail starts losing lines, and one
when writes succeed again, each with the lines held and lost (``notify``);
never one per failed write, which on a full disk would be one per decision.

Size-based rotation (``max_bytes``, ``keep``) bounds the disk the log can
take: ``audit.jsonl`` -> ``audit.jsonl.1`` -> ... -> ``audit.jsonl.<keep>``,
the oldest deleted. Non-finite numbers are written as ``null`` (JSON has no
NaN); the decision's ``fallback.detail`` says which value was not finite.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from rlscale.atomic import finite
from rlscale.config import ConfigError

MAX_BYTES = 64 * 1024 * 1024
"""Default size at which the log is rotated (~90,000 decisions)."""
KEEP = 5
"""Default number of rotated files kept besides the live one."""
PENDING_LINES = 4096
"""Lines held in memory while the disk refuses them (~3 MB)."""
KINDS = ("event", "decision")
_FIRST_LINE_LIMIT = 1 << 20


def dumps(record: dict[str, Any]) -> str:
    """One JSON line; NaN and infinities become null."""
    return dumps_bytes(record).decode()


_ORJSON = orjson.OPT_SERIALIZE_NUMPY


def dumps_bytes(record: Any, newline: bool = False) -> bytes:
    """``dumps`` as bytes, by orjson (a tenth of ``json``'s time: the audit line was a sixth of a decision's cost).

    orjson writes NaN and infinities as null already; what it refuses (integers beyond 64 bits, odd types)
    goes through ``json`` as before.
    """
    try:
        return orjson.dumps(record, option=_ORJSON | orjson.OPT_APPEND_NEWLINE if newline else _ORJSON)
    except TypeError:
        try:
            text = json.dumps(record, separators=(",", ":"), allow_nan=False)
        except ValueError:
            text = json.dumps(finite(record), separators=(",", ":"), allow_nan=False)
        return (text + "\n" if newline else text).encode()


def is_audit_log(path: Path) -> bool:
    """True if ``path``'s first line is a whole rlscale audit record (a JSON object with a known ``kind``)."""
    with open(path, "rb") as f:
        head = f.read(_FIRST_LINE_LIMIT)
    line, newline, _ = head.partition(b"\n")
    if not newline:
        return False
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(record, dict) and record.get("kind") in KINDS


def repair_torn_tail(path: Path) -> int:
    """Cut a last line that has no newline (a write torn by a crash); returns the bytes removed.

    Callers check ``is_audit_log`` first: this truncates.
    """
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        block = 1 << 16
        end = size
        keep = 0
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            chunk = f.read(end - start)
            idx = chunk.rfind(b"\n")
            if idx >= 0:
                keep = start + idx + 1
                break
            end = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
        return size - keep


def check_target(path: Path, flag: str = "--audit-log") -> bool:
    """Refuse a path that is not ours to append to; True if it is a regular file with content (to be repaired).

    A directory is refused; a character device (``/dev/null``) is written to
    as is; an existing non-empty regular file must already be an audit log.
    The error never quotes the file's content.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    except OSError as err:
        raise ConfigError(f"{flag} {path}: cannot inspect ({err.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{flag} {path}: is a directory; expected a JSONL file")
    if not stat.S_ISREG(st.st_mode):
        if stat.S_ISCHR(st.st_mode):
            return False
        raise ConfigError(f"{flag} {path}: not a regular file; expected a JSONL file")
    if st.st_size == 0:
        return False
    try:
        ours = is_audit_log(path)
    except OSError as err:
        raise ConfigError(f"{flag} {path}: cannot read ({err.strerror})") from None
    if not ours:
        raise ConfigError(
            f"{flag} {path}: exists and its first line is not an rlscale audit record; "
            "refusing to append to or repair it (give a new file name)"
        )
    return True


def _to_stderr(message: str) -> None:
    """One line on stderr; stderr on the same full disk must not stop a decision either."""
    try:
        print(message, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


class AuditLog:
    """Append-only JSONL, shared by the control loop and the HTTP API (thread-safe); ``write`` never raises."""

    def __init__(
        self,
        path: str | Path,
        run: str | None = None,
        *,
        max_bytes: int = MAX_BYTES,
        keep: int = KEEP,
        pending_lines: int = PENDING_LINES,
        on_error: Callable[[], None] | None = None,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        if max_bytes < 1024:
            raise ConfigError(f"--audit-max-bytes {max_bytes}: expected at least 1024")
        if not 0 <= keep <= 1000:
            raise ConfigError(f"--audit-keep {keep}: expected 0..1000")
        self.path = Path(path)
        self.run = run
        self.max_bytes = int(max_bytes)
        self.keep = int(keep)
        self.on_error = on_error
        self.notify = notify or _to_stderr
        self._outage: dict[str, int] | None = None
        self._lock = threading.Lock()
        self._seq = 0
        self._pending: deque[bytes] = deque(maxlen=max(1, pending_lines))
        self.lines = 0
        self.write_errors = 0
        self.lines_lost = 0
        self.rotations = 0
        self.last_error: str | None = None
        self.failing = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.repaired_bytes = repair_torn_tail(self.path) if check_target(self.path) else 0
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._size = os.fstat(self._fd).st_size
            self._regular = stat.S_ISREG(os.fstat(self._fd).st_mode)
        except OSError as err:
            raise ConfigError(f"--audit-log {path}: cannot open for appending ({err.strerror})") from None

    def write(self, record: dict[str, Any]) -> bool:
        """Append one record, stamped with a sequence number, the wall-clock time and the run id.

        Returns False if the line could not be written now (it is held in
        memory and retried before the next line); never raises for I/O.
        """
        with self._lock:
            if self._fd is None:
                return False
            self._seq += 1
            head: dict[str, Any] = {"seq": self._seq, "wall_time": round(time.time(), 6)}
            if self.run is not None:
                head["run"] = self.run
            line = dumps_bytes({**head, **record}, newline=True)
            if len(self._pending) == self._pending.maxlen:
                self.lines_lost += 1
                if self._outage is not None and not self._outage["losing"]:
                    self._outage["losing"] = 1
                    self.notify(f"audit log {self.path}: {len(self._pending)} lines held in memory, the most it holds; "
                                f"the oldest are now lost ({self.lines_lost} lost so far)")
            self._pending.append(line)
            return self._flush_pending()

    def _flush_pending(self) -> bool:
        while self._pending:
            line = self._pending[0]
            try:
                self._maybe_rotate(len(line))
                self._append(line)
            except OSError as err:
                self.write_errors += 1
                self.last_error = err.strerror or type(err).__name__
                self.failing = True
                if self._outage is None:
                    self._outage = {"errors": self.write_errors - 1, "lost": self.lines_lost, "lines": self.lines, "losing": 0}
                    self.notify(f"audit log {self.path}: cannot write ({self.last_error}); decisions go on, their lines held "
                                f"in memory ({len(self._pending)} held, up to {self._pending.maxlen}; {self.lines_lost} lost so far)")
                if self.on_error is not None:
                    self.on_error()
                return False
            self._pending.popleft()
            self.lines += 1
        self.failing = False
        if self._outage is not None:
            outage, self._outage = self._outage, None
            self.notify(f"audit log {self.path}: writing again after {self.write_errors - outage['errors']} failed writes; "
                        f"{self.lines - outage['lines']} held lines written in order, {self.lines_lost - outage['lost']} lost")
        return True

    def _append(self, line: bytes) -> None:
        """One ``write``; a short write (disk full mid-line) is cut back off so the file holds only whole lines."""
        assert self._fd is not None
        before = self._size
        try:
            written = os.write(self._fd, line)
        except OSError:
            self._cut(before)
            raise
        if written != len(line):
            self._cut(before)
            raise OSError(28, "short write (No space left on device?)")
        self._size = before + written

    def _cut(self, size: int) -> None:
        if self._fd is None or not self._regular:
            return
        try:
            if os.fstat(self._fd).st_size > size:
                os.ftruncate(self._fd, size)
        except OSError:
            pass

    def _maybe_rotate(self, incoming: int) -> None:
        if not self._regular or self._size == 0 or self._size + incoming <= self.max_bytes:
            return
        assert self._fd is not None
        if self.keep == 0:
            os.ftruncate(self._fd, 0)
            self._size = 0
            self.rotations += 1
            return
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.close(self._fd)
        self._fd, self._size = fd, 0
        self.rotations += 1

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` and the summary report: ``ok`` is False while lines are waiting for the disk."""
        with self._lock:
            return {
                "ok": not self.failing,
                "lines": self.lines,
                "write_errors": self.write_errors,
                "lines_pending": len(self._pending),
                "lines_lost": self.lines_lost,
                "rotations": self.rotations,
                "last_error": self.last_error,
            }

    def close(self) -> None:
        """Try the held lines once more, flush to disk and stop writing (later writes are dropped)."""
        with self._lock:
            if self._fd is None:
                return
            if self._pending:
                self._flush_pending()
            self.lines_lost += len(self._pending)
            self._pending.clear()
            try:
                os.fsync(self._fd)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None
