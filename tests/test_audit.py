"""The audit log under a full disk, a wrong path and a long run: decisions never stop, nothing it was not given is cut.

The full disk is real: a tmpfs of a few KiB mounted for the test (root only;
where mounting is not allowed the e2e test writes to ``/dev/full``, which
refuses every write with ENOSPC, and says so in its skip-free assertion path).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from rlscale.config import ConfigError
from rlscale.controller.audit import AuditLog
from rlscale.controller.telemetry import Telemetry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_serve import serve_cmd, start  # noqa: E402


@contextlib.contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path | None]:
    """A tmpfs of ``size`` mounted at ``where`` (None when this machine does not let us mount)."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        yield None
        return
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(disk: Path) -> Path:
    """Fill the disk to the last byte with one file; returns it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


def lines(path: Path) -> list[dict]:
    text = path.read_text()
    assert text == "" or text.endswith("\n"), "the file ends with a whole line"
    return [json.loads(line) for line in text.splitlines()]


def test_a_full_disk_is_counted_held_in_memory_and_written_in_order_once_there_is_room(tmp_path):
    with small_disk(tmp_path / "disk", "64k") as disk:
        if disk is None:
            pytest.skip("cannot mount a tmpfs here")
        errors = []
        audit = AuditLog(disk / "audit.jsonl", on_error=lambda: errors.append(1))
        assert audit.write({"kind": "event", "event": "start"})
        filler = fill(disk)
        i = 0
        while audit.write({"kind": "decision", "i": i, "pad": "x" * 200}):  # the log's last page may still have room
            i += 1
            assert i < 20
        fitted = i
        for i in range(fitted + 1, fitted + 50):
            assert audit.write({"kind": "decision", "i": i, "pad": "x" * 200}) is False
        health = audit.health()
        assert health["ok"] is False and health["write_errors"] == len(errors) == 50
        assert health["lines_pending"] == 50 and health["lines_lost"] == 0 and health["last_error"]
        assert len(lines(disk / "audit.jsonl")) == 1 + fitted, "nothing half-written on the full disk"
        filler.unlink()
        assert audit.write({"kind": "decision", "i": fitted + 50})
        audit.close()
        records = lines(disk / "audit.jsonl")
    assert [r["seq"] for r in records] == list(range(1, fitted + 53))
    assert [r.get("i") for r in records[1:]] == list(range(fitted + 51))
    assert audit.health()["ok"] and audit.health()["lines_lost"] == 0


def test_a_full_disk_is_said_once_on_stderr_when_it_starts_when_lines_are_lost_and_when_it_ends(tmp_path, capfd):
    with small_disk(tmp_path / "disk", "64k") as disk:
        if disk is None:
            pytest.skip("cannot mount a tmpfs here")
        audit = AuditLog(disk / "audit.jsonl", pending_lines=20)
        assert audit.write({"kind": "event", "event": "start"})
        filler = fill(disk)
        for i in range(300):  # a decision every interval: 300 failed writes, 20 lines held, the rest lost
            audit.write({"kind": "decision", "i": i, "pad": "x" * 200})
        during = capfd.readouterr().err.splitlines()
        written_before = audit.health()["lines"]
        filler.unlink()
        assert audit.write({"kind": "decision", "i": 300})
        for i in range(301, 350):
            assert audit.write({"kind": "decision", "i": i})
        after = capfd.readouterr().err.splitlines()
        health = audit.health()
        audit.close()
    assert len(during) == 2, during
    assert during[0].startswith(f"audit log {disk / 'audit.jsonl'}: cannot write (") and "No space left on device" in during[0]
    assert "1 held, up to 20; 0 lost so far" in during[0]
    lost = health["lines_lost"]
    fitted = written_before - 1  # the log's last page may have had room for a few
    assert lost == (300 - fitted) + 1 - 20 and lost > 200  # the write that finds room adds one more to the full tail
    assert "20 lines held in memory, the most it holds; the oldest are now lost (1 lost so far)" in during[1]
    assert len(after) == 1, after
    failed = health["write_errors"]
    assert f"writing again after {failed} failed writes; 20 held lines written in order, {lost} lost" in after[0]


def test_a_second_outage_is_said_again_with_its_own_counts(tmp_path):
    notes: list[str] = []
    with small_disk(tmp_path / "disk", "64k") as disk:
        if disk is None:
            pytest.skip("cannot mount a tmpfs here")
        audit = AuditLog(disk / "audit.jsonl", notify=notes.append)
        for outage in range(2):
            audit.write({"kind": "event", "event": f"before {outage}"})
            filler = fill(disk)
            for i in range(30):
                audit.write({"kind": "decision", "i": i, "pad": "x" * 200})
            filler.unlink()
            audit.write({"kind": "event", "event": f"after {outage}"})
        audit.close()
    assert len(notes) == 4 and [n.split(": ", 1)[1][:13] for n in notes] == ["cannot write ", "writing again"] * 2
    assert all(n.endswith(", 0 lost") for n in notes[1::2])


def test_a_short_write_on_a_filling_disk_is_cut_back_so_the_file_holds_only_whole_lines(tmp_path):
    with small_disk(tmp_path / "disk", "16k") as disk:
        if disk is None:
            pytest.skip("cannot mount a tmpfs here")
        audit = AuditLog(disk / "audit.jsonl", pending_lines=8)
        written = sum(audit.write({"kind": "decision", "pad": "y" * 700, "i": i}) for i in range(100))
        audit.close()
        records = lines(disk / "audit.jsonl")
    assert 5 < written == len(records) < 100
    health = audit.health()
    assert health["lines_lost"] == 100 - written and health["write_errors"] > 0


def test_rotation_bounds_the_log_to_keep_files_of_max_bytes_and_each_file_is_a_valid_log(tmp_path):
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, max_bytes=4096, keep=2)
    for i in range(200):
        assert audit.write({"kind": "decision", "i": i, "pad": "z" * 100})
    audit.close()
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    assert all(f.stat().st_size <= 4096 for f in files)
    newest = [r["i"] for f in (files[2], files[1], files[0]) for r in lines(f)]
    assert newest == list(range(200 - len(newest), 200)), "the rotated files are the most recent lines, in order"
    assert audit.rotations >= 5
    again = AuditLog(path, max_bytes=4096, keep=2)  # a restart appends to the rotated log
    again.close()


@pytest.mark.parametrize("content", [np.arange(10).tobytes() + b"PK\x03\x04", b"no newline here at all", b"[1,2]\nmore"])
def test_the_audit_log_refuses_a_file_that_is_not_an_audit_log_and_leaves_it_byte_for_byte(tmp_path, content):
    path = tmp_path / "policy.npz"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="not an rlscale audit record") as err:
        AuditLog(path)
    assert "\n" not in str(err.value) and "no newline" not in str(err.value)
    assert path.read_bytes() == content


def test_serve_refuses_a_mistaken_audit_log_in_one_line_exit_2_and_does_not_touch_it(tmp_path, exported_policy):
    victim = exported_policy / "policy.npz"
    before = victim.read_bytes()
    result = subprocess.run(serve_cmd("--policy", "hpa", "--steps", "2", "--port", "0", "--audit-log", str(victim)),
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "not an rlscale audit record" in result.stderr
    assert victim.read_bytes() == before


def test_telemetry_counts_audit_write_errors_and_http_rejections():
    telemetry = Telemetry(("api",), "hpa", "1", False)
    telemetry.audit_write_errors.inc()
    telemetry.http_rejected.labels("431").inc()
    text = telemetry.exposition().decode()
    assert "rlscale_audit_write_errors_total 1.0" in text
    assert 'rlscale_http_rejected_total{status="431"} 1.0' in text


@pytest.mark.slow
def test_on_a_full_disk_serve_keeps_deciding_for_100_more_intervals_says_degraded_and_exits_0_with_a_summary(tmp_path):
    summary = tmp_path / "summary.json"
    with small_disk(tmp_path / "disk", "48k") as disk:
        audit = (disk / "audit.jsonl") if disk is not None else Path("/dev/full")
        proc, url = start(serve_cmd("--policy", "hpa", "--speedup", "3000", "--port", "0", "--audit-log", str(audit),
                                    "--summary", str(summary)), tmp_path)
        try:
            deadline = time.monotonic() + 60
            while True:
                health = httpx.get(f"{url}/healthz", timeout=5).json()
                if health["status"] == "degraded":
                    break
                assert time.monotonic() < deadline, "the disk never filled"
                time.sleep(0.05)
            full_at = health["decisions"]
            ready, _, _ = select.select([proc.stderr], [], [], 10)
            first = proc.stderr.readline() if ready else ""
            assert f"audit log {audit}: cannot write (" in first, "the operator hears of the full disk when it happens, not at exit"
            while health["decisions"] < full_at + 100:
                assert time.monotonic() < deadline and proc.poll() is None, "kept deciding on a full disk"
                time.sleep(0.1)
                health = httpx.get(f"{url}/healthz", timeout=5).json()
            assert health["status"] == "degraded" and health["audit"]["write_errors"] >= 100
            metrics = httpx.get(f"{url}/metrics", timeout=5).text
            errors = float(next(line.split()[1] for line in metrics.splitlines() if line.startswith("rlscale_audit_write_errors_total")))
            assert errors >= 100
            decided = httpx.post(f"{url}/v1/decide", json={"desired": [3]}, timeout=5)
            assert decided.status_code == 200, "the API answers while its lines cannot be written"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, proc.stderr.read()
            assert "cannot write (" not in proc.stderr.read(), "said once, not once per failed write"
            if disk is not None:
                records = lines(audit)  # only whole lines on the full disk
                assert records[0]["event"] == "start" and all(r["kind"] in ("event", "decision") for r in records)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    result = json.loads(summary.read_text())
    assert result["decisions"] >= full_at + 100
    assert result["audit"]["write_errors"] >= 100 and result["audit"]["lines_lost"] > 0
    assert os.path.getsize(summary) > 0
