"""Reading an exported model's ``.npz`` as a validated format, not as whatever ``np.load`` accepts.

An exported policy may come from elsewhere, so reading it must cost what the
format says and nothing more. ``np.load`` decompresses every member it is
asked for in full, whatever its declared size, and the caller only learns
afterwards what it got: a 561 KB file held 512 MiB in an extra member. Here
the zip directory and each member's ``.npy`` header are read first, and a
member is decompressed only if

* its name is one of the expected members (an unknown or missing one is an
  error, nothing is decompressed);
* its declared size is within ``max_member_bytes`` and all of them together
  within ``max_total_bytes``, and it is stored or deflated;
* its header declares a plain numeric dtype of an expected kind (no object
  arrays, no structured dtypes, so no pickle can ever be involved) and a
  shape of the expected rank with every dimension within ``max_dim`` (and
  equal to the expected size where one is given), and the header's size
  plus the array's matches the member's declared size.

Decompression then reads exactly the declared bytes (the zip's CRC is
checked at the end). Every failure is one ``ConfigError`` line naming the
file and the member.
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlscale.config import ConfigError

MAX_FILE_BYTES = 128 * 1024 * 1024
MAX_DIM = 1 << 20


@dataclass(frozen=True)
class MemberSpec:
    """What one array must look like: dtype kinds (``"f"`` float, ``"i"`` int, ``"u"`` unsigned) and shape.

    ``shape`` gives the rank; a ``None`` entry means any size up to ``max_dim``.
    """

    kinds: str
    shape: tuple[int | None, ...]


def _fail(path: Path, what: str) -> ConfigError:
    return ConfigError(f"{path}: {what}")


def _clip(text: str, limit: int = 80) -> str:
    text = text.encode("ascii", "backslashreplace").decode()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_npz(
    path: str | os.PathLike[str],
    members: dict[str, MemberSpec],
    *,
    max_file_bytes: int = MAX_FILE_BYTES,
    max_member_bytes: int = MAX_FILE_BYTES,
    max_total_bytes: int = MAX_FILE_BYTES,
    max_dim: int = MAX_DIM,
) -> dict[str, np.ndarray]:
    """The arrays of ``path``, exactly the ``members`` expected, each checked before it is decompressed."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as err:
        raise _fail(p, f"cannot read ({err.strerror})") from None
    if not p.is_file():
        raise _fail(p, "not a regular file")
    if size > max_file_bytes:
        raise _fail(p, f"{size} bytes; a policy file may have at most {max_file_bytes}")
    try:
        with zipfile.ZipFile(p) as z:
            return _read(p, z, members, max_member_bytes, max_total_bytes, max_dim)
    except ConfigError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as err:
        raise _fail(p, f"not a readable npz archive ({type(err).__name__})") from None


def _read(
    p: Path, z: zipfile.ZipFile, members: dict[str, MemberSpec], max_member: int, max_total: int, max_dim: int
) -> dict[str, np.ndarray]:
    infos = z.infolist()
    if len(infos) > len(members):
        unknown = [i.filename for i in infos if i.filename.removesuffix(".npy") not in members]
        what = f"unexpected members {[_clip(n, 40) for n in unknown[:3]]}" if unknown else "duplicate members"
        raise _fail(p, f"{what}; expected only {_names(members)}")
    by_name: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename.removesuffix(".npy")
        if not info.filename.endswith(".npy") or name not in members:
            raise _fail(p, f"unexpected member {_clip(info.filename, 40)!r}; expected only {_names(members)}")
        if name in by_name:
            raise _fail(p, f"member {name!r} appears twice")
        by_name[name] = info
    missing = [n for n in members if n not in by_name]
    if missing:
        raise _fail(p, f"missing arrays {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    total = sum(i.file_size for i in infos)
    for name, info in by_name.items():
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _fail(p, f"member {name!r}: compression {info.compress_type} is not stored or deflate")
        if info.file_size > max_member:
            raise _fail(p, f"member {name!r} declares {info.file_size} bytes; at most {max_member} per array")
    if total > max_total:
        raise _fail(p, f"members declare {total} bytes in all; at most {max_total}")
    return {name: _member(p, z, name, by_name[name], members[name], max_dim) for name in members}


def _member(p: Path, z: zipfile.ZipFile, name: str, info: zipfile.ZipInfo, spec: MemberSpec, max_dim: int) -> np.ndarray:
    with z.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"npy version {version}")
        except (ValueError, EOFError, SyntaxError, TypeError) as err:
            raise _fail(p, f"member {name!r}: not an npy array ({_clip(str(err), 60)})") from None
        header_bytes = f.tell()
        if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in spec.kinds:
            raise _fail(p, f"member {name!r}: dtype {_clip(str(dtype), 30)}; expected kind {spec.kinds!r} (numbers only)")
        if dtype.itemsize > 8:
            raise _fail(p, f"member {name!r}: dtype {dtype} is wider than 8 bytes")
        if len(shape) != len(spec.shape) or any(not 0 <= d <= max_dim for d in shape):
            raise _fail(p, f"member {name!r}: shape {_clip(str(shape), 40)}; expected rank {len(spec.shape)}, dimensions <= {max_dim}")
        for got, want in zip(shape, spec.shape):
            if want is not None and got != want:
                raise _fail(p, f"member {name!r}: shape {shape}; expected {spec.shape}")
        nbytes = math.prod(shape) * dtype.itemsize
        if header_bytes + nbytes != info.file_size:
            raise _fail(p, f"member {name!r}: header says {nbytes} bytes of data, the archive {info.file_size - header_bytes}")
        data = f.read(nbytes)
        if len(data) != nbytes:
            raise _fail(p, f"member {name!r}: truncated")
        if f.read(1):
            raise _fail(p, f"member {name!r}: data beyond the declared array")
    array = np.frombuffer(data, dtype=dtype)
    return (array.reshape(shape[::-1]).T if fortran else array.reshape(shape)).copy()


def _names(members: dict[str, MemberSpec]) -> str:
    names = list(members)
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")


# --------------------------------------------------------------------------- the exported policy's files

SHA256_HEX = frozenset("0123456789abcdef")


def check_sha256(npz_path: Path, card: dict[str, object], card_path: Path, max_file_bytes: int = MAX_FILE_BYTES) -> str:
    """The card must name the policy file's sha256, and the file must have it; returns the digest.

    Without the check a file swapped or corrupted after export would load; so
    a card without ``policy_sha256`` is refused, not trusted.
    """
    import hashlib

    want = card.get("policy_sha256")
    if not isinstance(want, str) or len(want) != 64 or not set(want) <= SHA256_HEX:
        raise _fail(card_path, "field policy_sha256: required, 64 lowercase hex digits (re-export the policy to add it)")
    try:
        size = npz_path.stat().st_size
        if size > max_file_bytes:
            raise _fail(npz_path, f"{size} bytes; a policy file may have at most {max_file_bytes}")
        digest = hashlib.sha256()
        with open(npz_path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError as err:
        raise _fail(npz_path, f"cannot read ({err.strerror})") from None
    if digest.hexdigest() != want:
        raise _fail(npz_path, "does not match card.json's policy_sha256 (corrupted or from another export)")
    return want


def policy_members(n_layers: int) -> dict[str, MemberSpec]:
    """The arrays of an exported MLP policy: hidden layers, the action layer, the observation normalisation."""
    members = {
        "action_w": MemberSpec("f", (None, None)),
        "action_b": MemberSpec("f", (None,)),
        "obs_mean": MemberSpec("f", (None,)),
        "obs_var": MemberSpec("f", (None,)),
        "obs_clip": MemberSpec("f", ()),
        "obs_eps": MemberSpec("f", ()),
    }
    for i in range(n_layers):
        members[f"pi_{i}_w"] = MemberSpec("f", (None, None))
        members[f"pi_{i}_b"] = MemberSpec("f", (None,))
    return members
