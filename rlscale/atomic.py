"""Writing files and folders so that a reader, or a crash, never sees half of them.

Every file rlscale writes for someone else (reports, exported policies,
checkpoints, summaries, Prometheus target lists) goes through here: a
temporary sibling is written completely, then renamed into place. A file
written where a user's flag says (``--summary``, ``loadgen --out``) is first
checked by ``check_output_file``: only a regular file, and only one of ours
unless ``--force``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
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


OUR_PREFIX_BYTES = 256


def check_output_file(path: str | os.PathLike[str], flag: str, *, ours: str | None, force: bool) -> Path:
    """Where an output file may go, or one ConfigError line naming the flag.

    Nothing there yet; a regular file that is one of ours (a JSON this module
    wrote with ``"format": ours`` as its first field); or, with ``force``, any
    regular file. A symlink, directory, device, pipe or socket is never
    replaced: ``--summary /dev/full`` replaced the device node with a file, and
    a symlink was swapped for a file rather than followed.
    """
    from rlscale.config import ConfigError

    p = Path(path)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        if p.parent.exists() and not p.parent.is_dir():
            raise ConfigError(f"{flag} {path}: {p.parent} is not a directory") from None
        return p
    except OSError as err:
        raise ConfigError(f"{flag} {path}: cannot inspect ({err.strerror})") from None
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(f"{flag} {path}: is a symbolic link; give a path to a regular file (the link is not replaced)")
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{flag} {path}: is a directory; expected a file path")
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{flag} {path}: is not a regular file (a device, pipe or socket is never replaced)")
    if force or (ours is not None and is_ours(p, ours)):
        return p
    what = f"an rlscale output (JSON with \"format\": \"{ours}\" first)" if ours else "a file rlscale may replace"
    raise ConfigError(f"{flag} {path}: exists and is not {what}; pass --force to overwrite it, or choose another path")


def is_ours(path: Path, fmt: str) -> bool:
    """Whether ``path`` starts as ``write_output_json`` starts a file of format ``fmt`` (only its first bytes are read)."""
    prefix = _prefix(fmt)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and os.read(fd, len(prefix)) == prefix
    finally:
        os.close(fd)


def _prefix(fmt: str) -> bytes:
    return (json.dumps({"format": fmt}, indent=2)[:-2] + ",").encode()


def write_output_json(path: str | os.PathLike[str], data: dict[str, Any], flag: str, *, fmt: str, force: bool) -> None:
    """``data`` as JSON at a user-named ``path`` (checked again now: it may have changed since start), ``format`` first."""
    target = check_output_file(path, flag, ours=fmt, force=force)
    write_json(target, {"format": fmt, **{k: v for k, v in data.items() if k != "format"}})
