"""Writing files and folders so that a reader, or a crash, never sees half of them.

Every file rlscale writes for someone else (reports, exported policies,
checkpoints, summaries, Prometheus target lists) goes through here: a
temporary sibling is written completely, then renamed into place.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def write_text(path: str | os.PathLike[str], text: str) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike[str], data: Any, indent: int | None = 2) -> None:
    write_text(path, json.dumps(finite(data), indent=indent, allow_nan=False) + "\n")


def finite(obj: Any) -> Any:
    """JSON has no NaN or infinity: such numbers (a ratio to a zero cost, a missing latency) become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


@contextmanager
def staged_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``target``; on success it replaces ``target`` (else it is removed)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; these folders are for reading
    try:
        yield tmp
        publish(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish(tmp: Path, target: Path) -> None:
    """Swap ``tmp`` into ``target``: two renames, so ``target`` is always either the old or the new folder."""
    old = None
    if target.exists() or target.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
