"""Every file a user names is read bounded, as UTF-8, and as YAML without surprises (issue 27 item 3, issue 26 item 1).

The probes: a scenario nested 500 levels deep (RecursionError), a scenario
that is a symlink to /dev/zero (read until MemoryError) or a FIFO (hung), a
200 MB scenario, ``flash_crowds.per_day: 1.0e9`` (minutes for 60 steps),
10,000 services (25 s to load), duplicate keys (the last one won silently),
and a non-UTF-8 byte (a UnicodeDecodeError traceback) in a scenario,
training config, service.yaml, sweep file or --cluster-config.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from rlscale.config import MAX_SERVICES, MAX_USER_FILE_BYTES, MAX_YAML_DEPTH, ConfigError, load_scenario, load_train_config

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "envs" / "web-diurnal.yaml"


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rlscale.cli", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def one_line(err: pytest.ExceptionInfo[ConfigError], *needles: str) -> str:
    message = str(err.value)
    assert "\n" not in message and all(n in message for n in needles), message
    return message


def test_a_scenario_nested_500_levels_deep_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(WEB.read_text() + "extra: " + "[" * 500 + "]" * 500 + "\n")
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    one_line(err, str(path), f"nested deeper than {MAX_YAML_DEPTH} levels")


@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
def test_a_scenario_that_is_a_device_or_fifo_is_refused_at_once(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "scenario.yaml"
    if kind == "dev-zero":
        path.symlink_to("/dev/zero")
    else:
        os.mkfifo(path)
    result: list[BaseException] = []
    worker = threading.Thread(target=lambda: result.append(pytest.raises(ConfigError, load_scenario, path).value), daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "reading the scenario hung"
    assert "not a regular file" in str(result[0])


def test_a_200_mb_scenario_is_refused_by_its_size(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as f:
        f.write(WEB.read_bytes())
        f.truncate(200 * 1024 * 1024)  # sparse: the size is what is refused, before a byte is read
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    one_line(err, f"at most {MAX_USER_FILE_BYTES}")
    assert time.perf_counter() - t0 < 1.0


def edited(tmp_path: Path, change) -> Path:  # type: ignore[no-untyped-def]
    data = yaml.safe_load(WEB.read_text())
    change(data)
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda d: d["services"][0]["workload"].update(flash_crowds={"per_day": 1.0e9}), "services[0].workload.flash_crowds.per_day"),
        (lambda d: d["services"][0]["workload"].update(flash_crowds={"magnitude": [10, 3]}), "services[0].workload.flash_crowds"),
        (lambda d: d["randomisation"].update(scale=[1.3, 0.7]), "randomisation"),
        (lambda d: d["randomisation"].update(flash_per_day=[0, 1e9]), "randomisation.flash_per_day[1]"),
        (lambda d: d["pools"][0].update(speed=1e12), "pools[0].speed"),
        (lambda d: d["reward"].update(w_slo=1e300), "reward.w_slo"),
        (lambda d: d.update(services=[{**copy.deepcopy(d["services"][0]), "name": f"s{i}"} for i in range(MAX_SERVICES + 1)]),
         "services"),
        (lambda d: d.update(name="x" * 10_000), "name"),
    ],
    ids=["flash-1e9", "magnitude-swapped", "scale-swapped", "flash-range", "speed", "weight", "too-many-services", "long-name"],
)
def test_every_scenario_field_has_a_range(tmp_path: Path, change, field: str) -> None:
    path = edited(tmp_path, change)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    one_line(err, f"{path}: {field}")
    assert time.perf_counter() - t0 < 10.0


def test_a_duplicate_key_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(WEB.read_text() + "step_s: 30\nstep_s: 60\n")
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    one_line(err, "duplicate key 'step_s' at line")


def test_a_yaml_alias_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "alias.yaml"
    path.write_text("a: &x [1, 2]\nb: *x\n")
    with pytest.raises(ConfigError) as err:
        load_train_config(path)
    one_line(err, "aliases")


def with_bad_byte(path: Path, source: Path) -> Path:
    data = source.read_bytes()
    cut = data.index(b"\n") + 1
    path.write_bytes(data[:cut] + b"# caf\xe9\n" + data[cut:])
    return path


def local_api_config(tmp_path: Path) -> Path:
    return with_bad_byte(tmp_path / "service.yaml", ROOT / "envs" / "services" / "local-api.yaml")


@pytest.mark.parametrize(
    "args, source",
    [
        (lambda p: ["simulate", "--scenario", str(p), "--steps", "2"], ROOT / "envs" / "web-diurnal.yaml"),
        (lambda p: ["train", "--config", str(p), "--timesteps", "8"], ROOT / "train" / "ppo-web-diurnal.yaml"),
        (lambda p: ["sweep", "--config", str(p)], ROOT / "train" / "sweeps" / "web-diurnal-seeds.yaml"),
        (lambda p: ["assess", "--prometheus", "http://127.0.0.1:1", "--config", str(p), "--days", "1", "--out", "x.yaml"],
         ROOT / "envs" / "services" / "local-api.yaml"),
        (lambda p: ["serve", "--cluster", "kubernetes", "--cluster-config", str(p), "--policy", "hpa", "--scenario",
                    "mixed-pools", "--port", "0"], None),
    ],
    ids=["scenario", "training-config", "sweep-file", "service-yaml", "cluster-config"],
)
def test_a_non_utf8_byte_is_one_line_naming_the_file_and_offset(tmp_path: Path, args, source) -> None:
    path = tmp_path / "file.yaml"
    if source is None:
        path.write_bytes(b"services:\n- service: api # caf\xe9\n")
    else:
        with_bad_byte(path, source)
    offset = path.read_bytes().index(b"\xe9")
    result = cli(*args(path))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{path}: " in result.stderr and f"not UTF-8 text (byte 0xe9 at offset {offset})" in result.stderr
