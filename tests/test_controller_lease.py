"""One deciding controller per cluster (DESIGN.md section 17): the local cluster's run-directory lock.

The fast tests pin the lock itself (another holder refuses, the kernel frees
it when its holder is killed, a replaced lock file stops the holder acting)
and the loop's reaction to a lost lease. The slow ones run the probe of
issue 27: ``rlscale cluster up``, then two real ``rlscale serve`` processes
on its run directory; without ``--standby`` the second refuses in one line,
with it, it waits, and when the leader is killed with SIGKILL under load it
takes over within two intervals, from the replica count the cluster has,
with no failed request.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from rlscale.clusters.local.lock import LOCK_FILE, RunDirLock
from rlscale.clusters.local.loadgen import replay
from rlscale.clusters.local.supervisor import read_state
from rlscale.clusters.simulated import SimulatedCluster
from rlscale.config import ConfigError, load_scenario
from rlscale.controller.decision import Decider
from rlscale.controller.guards import GuardConfig
from rlscale.controller.lease import open_lease, refuse_if_held
from rlscale.controller.loop import ControlLoop
from rlscale.controller.serve import ServeOptions
from rlscale.policies import make_policy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_local_cluster import REAL_CLUSTER, _constant_plan, _scenario_file, needs_binaries  # noqa: E402

INTERVAL_S = 3.0


# --------------------------------------------------------------------------- fast: the lock and the loop


def test_a_second_holder_is_refused_until_the_first_releases(tmp_path):
    first, second = RunDirLock(tmp_path), RunDirLock(tmp_path)
    assert first.try_acquire() and first.held()
    assert not second.try_acquire() and not second.held()
    assert second.holder().startswith(f"pid {__import__('os').getpid()} on ")
    first.release()
    assert not first.held()
    assert second.try_acquire() and second.held()
    second.release()


def test_the_kernel_frees_the_lock_when_its_holder_is_killed(tmp_path):
    code = ("import sys, time; from rlscale.clusters.local.lock import RunDirLock; "
            f"assert RunDirLock({str(tmp_path)!r}).try_acquire(); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        waiting = RunDirLock(tmp_path)
        assert not waiting.try_acquire()
        assert f"pid {holder.pid} " in waiting.holder()
        holder.kill()
        holder.wait(timeout=10)
        assert waiting.try_acquire()  # at once: no lease duration to wait out
        waiting.release()
    finally:
        if holder.poll() is None:
            holder.kill()


def test_a_lock_file_replaced_under_the_holder_means_the_lease_is_lost(tmp_path):
    lock = RunDirLock(tmp_path)
    assert lock.try_acquire()
    (tmp_path / LOCK_FILE).unlink()
    (tmp_path / LOCK_FILE).write_text("")
    assert not lock.held()
    lock.release()


def test_a_held_run_dir_is_refused_in_one_line_naming_the_holder_and_the_flag(tmp_path):
    first = RunDirLock(tmp_path)
    assert first.try_acquire()
    opts = ServeOptions(policy="hpa", cluster="local", run_dir=str(tmp_path))
    with pytest.raises(ConfigError) as err:
        refuse_if_held(open_lease(opts), standby=False)
    text = str(err.value)
    assert "\n" not in text and "another controller decides" in text and "--standby" in text and "pid " in text
    assert refuse_if_held(open_lease(opts), standby=True) is False
    first.release()


@pytest.mark.parametrize("opts", [ServeOptions(policy="hpa", cluster="sim", standby=True),
                                  ServeOptions(policy="hpa", cluster="local", standby=True),
                                  ServeOptions(policy="hpa", cluster="local", run_dir="r", dry_run=True, standby=True)])
def test_standby_without_a_shared_cluster_to_wait_for_is_refused(opts):
    with pytest.raises(ConfigError, match="--standby: .*drop --standby"):
        open_lease(opts)


def test_no_lease_for_the_simulator_or_a_dry_run():
    assert open_lease(ServeOptions(policy="hpa", cluster="sim")) is None
    assert open_lease(ServeOptions(policy="hpa", cluster="local", run_dir="r", dry_run=True)) is None


def test_the_loop_stops_acting_at_once_when_the_lease_is_lost():
    scenario = load_scenario("web-diurnal")
    cluster = SimulatedCluster(scenario, seed=0, steps=20, speedup=1e6)
    config = GuardConfig.from_scenario(scenario, scenario.step_s, None, None, 0.0, None)
    held = iter([True, True, True, False, True])
    loop = ControlLoop(cluster, Decider(scenario, make_policy("hpa", scenario), config), interval_s=scenario.step_s,
                       speedup=1e6, steps=20, may_act=lambda: next(held))
    applied: list[bool] = []
    loop.listeners.append(lambda d: applied.append(d.applied))
    loop.run()
    assert applied == [True, True, True, False] and loop.lease_lost and loop.decisions == 4


# --------------------------------------------------------------------------- slow: two real controllers on one cluster


def rlscale(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rlscale.cli", *args], capture_output=True, text=True, timeout=timeout)


class Controller:
    """``rlscale serve --cluster local --run-dir R`` as a process (``--standby`` when asked)."""

    def __init__(self, tmp: Path, scenario: Path, run_dir: Path, name: str, policy: str = "hpa", standby: bool = False) -> None:
        self.audit = tmp / f"{name}.jsonl"
        self.out, self.err = tmp / f"{name}.out", tmp / f"{name}.err"
        cmd = [sys.executable, "-m", "rlscale.cli", "serve", "--cluster", "local", "--scenario", str(scenario), "--policy", policy,
               "--run-dir", str(run_dir), "--interval", str(INTERVAL_S), "--port", "0", "--audit-log", str(self.audit)]
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(cmd + (["--standby"] if standby else []), stdout=out, stderr=err)

    def wait_for(self, text: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.out.read_text():
            assert self.proc.poll() is None, f"serve exited {self.proc.returncode}: {self.err.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"no {text!r} in {self.out.read_text()[-500:]}"
            time.sleep(0.1)

    @property
    def url(self) -> str:
        line = next(x for x in self.out.read_text().splitlines() if "listening on " in x)
        return line.rsplit("listening on ", 1)[1].strip()

    def records(self) -> list[dict]:
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines() if line.strip()]

    def decisions(self) -> list[dict]:
        return [r for r in self.records() if r["kind"] == "decision" and r["source"] == "loop"]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lease")
    scenario = _scenario_file(tmp / "local-test.yaml", step_s=INTERVAL_S, max_workers=4, initial=2)
    run_dir = tmp / "cluster"
    up = rlscale("cluster", "up", "--scenario", str(scenario), "--run-dir", str(run_dir))
    assert up.returncode == 0, up.stderr
    try:
        yield {"tmp": tmp, "scenario": scenario, "run_dir": run_dir, "state": read_state(run_dir.resolve())}
    finally:
        rlscale("cluster", "down", "--run-dir", str(run_dir))


def wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.slow
@needs_binaries
@REAL_CLUSTER
def test_a_second_controller_on_the_same_cluster_refuses_in_one_line(cluster):
    tmp = cluster["tmp"]
    leader = Controller(tmp, cluster["scenario"], cluster["run_dir"], "refuse-leader")
    try:
        wait(lambda: len(leader.decisions()) >= 1, 90, "the first controller decides")
        second = rlscale("serve", "--cluster", "local", "--scenario", str(cluster["scenario"]), "--policy", "static",
                         "--run-dir", str(cluster["run_dir"]), "--port", "0", "--audit-log", str(tmp / "refused.jsonl"))
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(lines) == 1, second.stderr
        assert "another controller decides for this cluster" in lines[0] and f"pid {leader.proc.pid} " in lines[0]
        assert "Traceback" not in second.stderr and not (tmp / "refused.jsonl").exists()
        assert leader.proc.poll() is None
    finally:
        assert leader.stop() == 0


@pytest.mark.slow
@needs_binaries
@REAL_CLUSTER
def test_a_standby_takes_over_within_two_intervals_of_a_sigkill_with_no_failed_request(cluster):
    tmp, rate, seconds = cluster["tmp"], 20.0, 24.0
    leader = Controller(tmp, cluster["scenario"], cluster["run_dir"], "leader")
    standby = None
    try:
        wait(lambda: len(leader.decisions()) >= 1, 90, "the leader decides")
        standby = Controller(tmp, cluster["scenario"], cluster["run_dir"], "standby", standby=True)
        standby.wait_for("standing by:")
        health = httpx.get(f"{standby.url}/healthz", timeout=5).json()
        assert health["loop"] == "standby" and health["lease"] == "standby"
        load: dict = {}
        sender = threading.Thread(target=lambda: load.update(result=replay(_constant_plan(rate, seconds), cluster["state"]["services"]["api"])))
        sender.start()
        time.sleep(2 * INTERVAL_S)
        assert standby.decisions() == [], "a standby never decides"
        desired = json.loads(rlscale("cluster", "status", "--run-dir", str(cluster["run_dir"]), "--json").stdout)["desired"]["api"]
        leader.proc.kill()  # SIGKILL: the kernel drops the lock, nothing of the leader's runs
        leader.proc.wait()
        killed_at = time.time()
        wait(lambda: len(standby.decisions()) >= 1, 2 * INTERVAL_S, "the standby decides within two intervals")
        first = standby.decisions()[0]
        took = first["wall_time"] - killed_at
        print(f"standby's first decision {took:.2f} s after the SIGKILL")
        assert first["inputs"]["current_replicas"] == [desired]  # from the count the cluster has
        events = [r["event"] for r in standby.records() if r["kind"] == "event"]
        assert events[:3] == ["start", "lease_standby", "lease_acquired"]
        assert httpx.get(f"{standby.url}/healthz", timeout=5).json()["lease"] == "leader"
        sender.join(seconds + 30)
        result = load["result"]
        assert result.status.size >= 0.8 * rate * seconds and int((~result.ok).sum()) == 0
        wait(lambda: len(standby.decisions()) >= 3, 4 * INTERVAL_S, "the new leader keeps deciding")
    finally:
        if leader.proc.poll() is None:
            leader.proc.kill()
        if standby is not None:
            assert standby.stop() == 0, standby.err.read_text()[-2000:]
