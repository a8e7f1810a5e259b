"""Scenario numbers have physical ranges, traces are bounded regular files, errors never quote a file, JSON output always parses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rlscale.config import ConfigError, load_scenario
from rlscale.workload import MAX_TRACE_BYTES, load_csv

ENVS = Path(__file__).resolve().parents[1] / "envs"


def scenario_with(tmp_path: Path, change) -> Path:  # type: ignore[no-untyped-def]
    data = yaml.safe_load((ENVS / "web-diurnal.yaml").read_text())
    change(data)
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rlscale.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda d: d.update(step_s=1e-12), "step_s"),
        (lambda d: d.update(episode_steps=10**12), "episode_steps"),
        (lambda d: d["services"][0]["workload"].update(peak_rps=float("inf")), "services[0].workload.peak_rps"),
        (lambda d: d["services"][0].update(work_s=float("nan")), "services[0].work_s"),
        (lambda d: d["pools"][0].update(price_per_hour=1e300), "pools[0].price_per_hour"),
        (lambda d: d["pools"][0].update(provision_delay_s=-1), "pools[0].provision_delay_s"),
    ],
    ids=["tiny-step", "huge-episode", "infinite-rate", "nan-work", "absurd-price", "negative-delay"],
)
def test_numbers_outside_their_physical_range_are_one_line_naming_the_field(tmp_path, change, field):
    path = scenario_with(tmp_path, change)
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    assert f"{path}: {field}:" in str(err.value) and "\n" not in str(err.value)


def test_the_cli_refuses_a_huge_episode_with_exit_2_and_no_traceback(tmp_path):
    result = cli("simulate", "--scenario", str(scenario_with(tmp_path, lambda d: d.update(episode_steps=10**12))))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "episode_steps" in result.stderr


@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "sparse"])
def test_a_trace_must_be_a_regular_file_under_the_size_cap(tmp_path, target):
    if target == "fifo":
        path = tmp_path / "trace.csv"
        os.mkfifo(path)
    elif target == "sparse":
        path = tmp_path / "huge.csv"
        with open(path, "wb") as f:
            f.truncate(MAX_TRACE_BYTES + 1)  # sparse: no disk used, but a reader would read it all
    else:
        path = Path(target)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_csv(path)
    assert time.perf_counter() - t0 < 1.0
    assert ("not a regular file" in str(err.value)) == (target != "sparse")
    assert target != "sparse" or f"at most {MAX_TRACE_BYTES}" in str(err.value)


def test_a_scenario_whose_trace_is_dev_zero_is_one_line_at_once(tmp_path):
    path = scenario_with(tmp_path, lambda d: d["services"][0]["workload"].update(trace="/dev/zero"))
    result = cli("simulate", "--scenario", str(path), "--steps", "2", timeout=30)
    assert result.returncode == 2 and "/dev/zero: trace is not a regular file" in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "text",
    [
        "password=hunter2,value\n0,1\n60,2\n",
        "timestamp,value\n0,1\n60,hunter2\n",
        "timestamp,value\n0,1\n60,-7\n",
        "timestamp,value\n0,1\nhunter2,3\n",
    ],
    ids=["header", "value", "negative", "timestamp"],
)
def test_trace_errors_name_the_line_and_column_and_never_quote_the_file(tmp_path, text):
    path = tmp_path / "trace.csv"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_csv(path)
    message = str(err.value).replace(str(path), "<path>")  # the temp path itself may hold "-7" (pytest-76)
    assert "line " in message and "hunter2" not in message and "password" not in message and "-7" not in message


def test_simulate_json_is_valid_json_even_when_a_metric_is_infinite(tmp_path):
    path = scenario_with(tmp_path, lambda d: d["reward"].update(cost_scale=1e-310))  # the reward overflows to -inf
    result = cli("simulate", "--scenario", str(path), "--policy", "static", "--steps", "5", "--json")
    assert result.returncode == 0, result.stderr

    def refuse(constant: str) -> None:
        raise AssertionError(f"invalid JSON constant {constant}")

    out = json.loads(result.stdout, parse_constant=refuse)
    assert out["metrics"]["episode_reward"] is None and out["metrics"]["cost_usd"] > 0
