"""Output files are written atomically, only to regular files, and never over a file that is not ours (issue 27 item 4).

The probe: ``serve --summary PATH`` and ``loadgen --out PATH`` overwrote a
copy of the README, replaced a symlink with a file, and (as root) replaced
the device node ``/dev/full`` with a regular file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from rlscale.atomic import check_output_file, write_output_json
from rlscale.config import ConfigError
from helpers import OkHandler

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = "rlscale-serve-summary/1"


def targets(tmp_path: Path) -> dict[str, Path]:
    """Every kind of thing a path can be that an output must not replace (a real character device: a FIFO's node)."""
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    link = tmp_path / "link.json"
    link.symlink_to(readme)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    folder = tmp_path / "folder"
    folder.mkdir()
    return {"not-ours": readme, "symlink": link, "fifo": fifo, "directory": folder, "device": Path("/dev/null")}


def snapshot(path: Path) -> tuple[int, int, bytes | None]:
    st = os.lstat(path)
    data = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    return st.st_mode, st.st_ino, data


@pytest.mark.parametrize("kind, match", [
    ("not-ours", "exists and is not an rlscale output"), ("symlink", "is a symbolic link"),
    ("fifo", "is not a regular file"), ("directory", "is a directory"), ("device", "is not a regular file"),
])
def test_an_output_never_replaces_what_is_not_ours(tmp_path: Path, kind: str, match: str) -> None:
    target = targets(tmp_path)[kind]
    before = snapshot(target)
    with pytest.raises(ConfigError) as err:
        write_output_json(target, {"decisions": 1}, "--summary", fmt=SUMMARY, force=False)
    assert match in str(err.value) and "\n" not in str(err.value)
    assert snapshot(target) == before


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory", "device"])
def test_force_replaces_a_foreign_regular_file_but_never_a_link_device_or_folder(tmp_path: Path, kind: str) -> None:
    found = targets(tmp_path)
    target = found[kind]
    before = snapshot(target)
    with pytest.raises(ConfigError):
        check_output_file(target, "--summary", ours=SUMMARY, force=True)
    assert snapshot(target) == before
    write_output_json(found["not-ours"], {"decisions": 1}, "--summary", fmt=SUMMARY, force=True)
    assert json.loads(found["not-ours"].read_text()) == {"format": SUMMARY, "decisions": 1}


def test_our_own_output_is_replaced_without_force(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    write_output_json(target, {"decisions": 1}, "--summary", fmt=SUMMARY, force=False)
    write_output_json(target, {"decisions": 2}, "--summary", fmt=SUMMARY, force=False)
    assert json.loads(target.read_text())["decisions"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name != "summary.json"], "a temporary file was left behind"


def serve(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rlscale.cli", "serve", "--policy", "hpa", "--steps", "2", "--port", "0",
                           "--speedup", "1e6", "--audit-log", str(tmp_path / "audit.jsonl"), *extra],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)


@pytest.mark.parametrize("kind", ["not-ours", "symlink", "directory", "device"])
def test_serve_refuses_a_summary_path_that_is_not_ours_before_it_starts(tmp_path: Path, kind: str) -> None:
    target = targets(tmp_path)[kind]
    before = snapshot(target)
    result = serve(tmp_path, "--summary", str(target))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--summary" in result.stderr, result.stderr
    assert snapshot(target) == before
    assert not (tmp_path / "audit.jsonl").exists(), "refused before anything ran"


def test_serve_rewrites_its_own_summary_and_force_takes_a_foreign_file(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    assert serve(tmp_path, "--summary", str(summary)).returncode == 0
    first = json.loads(summary.read_text())
    assert first["format"] == SUMMARY and first["decisions"] == 2
    assert serve(tmp_path, "--summary", str(summary)).returncode == 0
    assert json.loads(summary.read_text())["run"] != first["run"]
    readme = targets(tmp_path)["not-ours"]
    assert serve(tmp_path, "--summary", str(readme), "--force").returncode == 0
    assert json.loads(readme.read_text())["format"] == SUMMARY


@pytest.mark.parametrize("kind", ["not-ours", "symlink", "device"])
def test_loadgen_refuses_an_out_path_that_is_not_ours_and_rewrites_its_own(tmp_path: Path, kind: str) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), OkHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/work"
        args = [sys.executable, "-m", "rlscale.cli", "loadgen", "--target", url, "--duration", "1", "--peak-rps", "5"]
        target = targets(tmp_path)[kind]
        before = snapshot(target)
        refused = subprocess.run([*args, "--out", str(target)], capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--out" in refused.stderr, refused.stderr
        assert snapshot(target) == before
        own = tmp_path / "load.json"
        for _ in range(2):
            done = subprocess.run([*args, "--out", str(own)], capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
        assert json.loads(own.read_text())["format"] == "rlscale-loadgen/1"
    finally:
        server.shutdown()
        server.server_close()
