"""A specialist refuses a cluster outside the range it was trained across, as the generalist does (issue 26 item 3).

The probe: ``models/web-diurnal`` served or simulated on
``envs/generalisation/peak-x3.yaml`` or ``prices-x2.yaml`` (same service and
pool names, other load, limits or prices) was accepted silently.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rlscale.config import ConfigError, load_scenario
from rlscale.policies import make_policy
from rlscale.policies.network import load_exported
from rlscale.policies.trained_range import trained_range

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "envs" / "generalisation"


@pytest.mark.parametrize("scenario, field", [
    ("peak-x3", "services[api].workload.peak_rps = 3600 is outside the trained range [840, 1560]"),
    ("peak-x0.3", "services[api].workload.peak_rps = 360 is outside the trained range [840, 1560]"),
    ("prices-x2", "pools[on-demand].price_per_hour = 0.384 is outside the trained range [0.192, 0.192]"),
    ("prices-x0.5", "pools[on-demand].price_per_hour = 0.096"),
    ("delay-x3", "pools[on-demand].provision_delay_s = 270"),
])
def test_web_diurnal_refuses_a_cluster_outside_its_trained_range(scenario: str, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_policy("ppo:models/web-diurnal", load_scenario(SUITE / f"{scenario}.yaml"))
    message = str(err.value)
    assert field in message and "\n" not in message and f"scenario {scenario!r}" in message, message


@pytest.mark.parametrize("name", ["web-diurnal", "flash-crowd", "mixed-pools", "ml-platform", "local"])
def test_every_shipped_specialist_accepts_the_scenario_it_was_trained_on(name: str) -> None:
    make_policy(f"ppo:models/{name}", load_scenario(name))


def test_the_trained_range_is_the_scenario_with_its_load_randomisation() -> None:
    card = load_exported("models/web-diurnal").checked
    r = trained_range(card)
    assert r["services[api].workload.peak_rps"] == pytest.approx((1200 * 0.7, 1200 * 1.3))
    assert r["services[api].max_replicas"] == (2.0, 120.0) and r["step_s"] == (60.0, 60.0)


def test_tighter_replica_bounds_are_left_to_the_guard_rails() -> None:
    sc = load_scenario("web-diurnal")
    narrow = sc.model_copy(update={"services": [sc.services[0].model_copy(update={"min_replicas": 4, "max_replicas": 40})]})
    make_policy("ppo:models/web-diurnal", narrow)


@pytest.mark.parametrize("command", ["simulate", "serve"])
@pytest.mark.parametrize("scenario", ["peak-x3", "prices-x2"])
def test_simulate_and_serve_refuse_it_with_exit_2_and_one_line(tmp_path: Path, command: str, scenario: str) -> None:
    args = [sys.executable, "-m", "rlscale.cli", command, "--policy", "ppo:models/web-diurnal", "--scenario",
            str(SUITE / f"{scenario}.yaml"), "--steps", "2"]
    if command == "serve":
        args += ["--port", "0", "--speedup", "1e6", "--audit-log", str(tmp_path / "a.jsonl")]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "outside the trained range" in result.stderr and "Traceback" not in result.stderr
