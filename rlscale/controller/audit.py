"""The audit log: one JSON object per line, appended, never rewritten.

Each line is written with a single ``write`` on an ``O_APPEND`` descriptor, so
a line is either whole or (after a crash mid-write) torn at the very end of
the file. On open, a torn last line is cut off and the repair is recorded, so
a restarted controller continues a log that every JSONL reader can parse.
Non-finite numbers are written as ``null`` (JSON has no NaN); the decision's
``fallback.detail`` says which value was not finite.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from rlscale.atomic import finite
from rlscale.config import ConfigError


def dumps(record: dict[str, Any]) -> str:
    """One JSON line; NaN and infinities become null."""
    try:
        return json.dumps(record, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(finite(record), separators=(",", ":"), allow_nan=False)


def repair_torn_tail(path: Path) -> int:
    """Cut a last line that has no newline (a write torn by a crash); returns the bytes removed."""
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


class AuditLog:
    """Append-only JSONL, shared by the control loop and the HTTP API (thread-safe)."""

    def __init__(self, path: str | Path, run: str | None = None) -> None:
        self.path = Path(path)
        self.run = run
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.repaired_bytes = repair_torn_tail(self.path)
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as err:
            raise ConfigError(f"--audit-log {path}: cannot open for appending ({err.strerror})") from None
        self._lock = threading.Lock()
        self._seq = 0
        self.lines = 0

    def write(self, record: dict[str, Any]) -> None:
        """Append one record, stamped with a sequence number, the wall-clock time and the run id."""
        with self._lock:
            if self._fd is None:
                return
            self._seq += 1
            head: dict[str, Any] = {"seq": self._seq, "wall_time": round(time.time(), 6)}
            if self.run is not None:
                head["run"] = self.run
            stamped = {**head, **record}
            os.write(self._fd, (dumps(stamped) + "\n").encode())
            self.lines += 1

    def close(self) -> None:
        """Flush to disk and stop writing (later writes are dropped)."""
        with self._lock:
            if self._fd is None:
                return
            try:
                os.fsync(self._fd)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None
