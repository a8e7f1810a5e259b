"""One controller per Kubernetes cluster: the ``coordination.k8s.io/v1`` Lease, against our own API server.

Everything goes through the official client to ``tests/k8s_apiserver.py``,
which speaks the Lease's wire format (MicroTime with six fractional digits,
409 on a stale ``resourceVersion`` and on creating an existing Lease). The
timings are client-go's three numbers, shrunk for tests: a 2 s lease, a
1.5 s renew deadline, a 0.2 s retry period. The end-to-end test runs two
``rlscale serve --cluster kubernetes`` processes and kills the leader with
SIGKILL.
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
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from k8s_apiserver import TOKEN, FakeApiServer, FakeCluster  # noqa: E402

from rlscale.clusters.kubernetes.client import api_client  # noqa: E402
from rlscale.clusters.kubernetes.lease import KubernetesLease  # noqa: E402
from rlscale.clusters.kubernetes.settings import LeaseSpec, load_settings  # noqa: E402
from rlscale.config import ConfigError  # noqa: E402
from rlscale.controller.lease import refuse_if_held, wait_for  # noqa: E402

kubernetes = pytest.importorskip("kubernetes")
SPEC = LeaseSpec(namespace="rlscale", duration_s=2, renew_deadline_s=1.5, retry_period_s=0.2)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def server(tmp_path):
    cluster = FakeCluster()
    srv = FakeApiServer(cluster).start()
    srv.kubeconfig(tmp_path / "kubeconfig")
    yield srv
    try:
        srv.stop()
    except OSError:
        pass


def coordination(srv: FakeApiServer, tmp_path: Path):  # type: ignore[no-untyped-def]
    return kubernetes.client.CoordinationV1Api(api_client(str(tmp_path / "kubeconfig"), None, "test"))


def lease(srv: FakeApiServer, tmp_path: Path, identity: str, spec: LeaseSpec = SPEC) -> KubernetesLease:
    return KubernetesLease(coordination(srv, tmp_path), spec, identity=identity, request_timeout_s=0.5)


def holder_writes(srv: FakeApiServer, who: str) -> list[float]:
    with srv.cluster.lock:
        return [e["t"] for e in srv.cluster.lease_log if e["code"] in (200, 201) and e["holder"] == who]


def test_the_api_server_speaks_the_lease_wire_format(server, tmp_path):
    api = coordination(server, tmp_path)
    c = kubernetes.client
    t = time.time()
    from datetime import datetime, timezone

    now = datetime.fromtimestamp(t, tz=timezone.utc).replace(microsecond=123456)
    body = c.V1Lease(metadata=c.V1ObjectMeta(name="x"), spec=c.V1LeaseSpec(holder_identity="a", lease_duration_seconds=5, renew_time=now))
    made = api.create_namespaced_lease("rlscale", body)
    assert made.spec.holder_identity == "a" and made.spec.renew_time == now and made.metadata.resource_version
    with pytest.raises(c.ApiException) as err:
        api.create_namespaced_lease("rlscale", body)
    assert err.value.status == 409 and json.loads(err.value.body)["reason"] == "AlreadyExists"
    fresh = api.replace_namespaced_lease("x", "rlscale", c.V1Lease(metadata=c.V1ObjectMeta(name="x", resource_version=made.metadata.resource_version),
                                                                  spec=c.V1LeaseSpec(holder_identity="b", lease_duration_seconds=5)))
    assert fresh.spec.holder_identity == "b"
    with pytest.raises(c.ApiException) as err:  # the same, stale resourceVersion again: someone wrote in between
        api.replace_namespaced_lease("x", "rlscale", c.V1Lease(metadata=c.V1ObjectMeta(name="x", resource_version=made.metadata.resource_version),
                                                              spec=c.V1LeaseSpec(holder_identity="c", lease_duration_seconds=5)))
    assert err.value.status == 409 and json.loads(err.value.body)["reason"] == "Conflict"
    with pytest.raises(c.ApiException) as err:
        api.replace_namespaced_lease("x", "rlscale", c.V1Lease(metadata=c.V1ObjectMeta(name="x"), spec=c.V1LeaseSpec(lease_duration_seconds=0)))
    assert err.value.status == 422 and "spec.leaseDurationSeconds" in json.loads(err.value.body)["message"]
    with pytest.raises(c.ApiException) as err:
        api.read_namespaced_lease("nope", "rlscale")
    assert err.value.status == 404
    for stamp in ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00.123Z", "2026-01-01T00:00:00+00:00", "2026-01-01T00:00:00.123456Z"):
        answer = httpx.put(f"{server.url}/apis/coordination.k8s.io/v1/namespaces/rlscale/leases/x", headers={"Authorization": f"Bearer {TOKEN}"},
                           json={"metadata": {"name": "x"}, "spec": {"leaseDurationSeconds": 5, "renewTime": stamp}})
        assert answer.status_code == (200 if stamp.endswith(".123456Z") else 400), stamp  # six digits, as the apiserver parses a MicroTime


def test_a_second_identity_waits_while_the_leader_renews(server, tmp_path):
    a, b = lease(server, tmp_path, "a"), lease(server, tmp_path, "b")
    try:
        assert a.try_acquire() and a.held()
        deadline = time.monotonic() + 3 * SPEC.duration_s  # longer than a lease: the leader keeps renewing it
        while time.monotonic() < deadline:
            assert not b.try_acquire() and not b.held()
            time.sleep(SPEC.retry_period_s)
        assert a.held() and b.contested() and "held by a" in b.holder()
        assert len(holder_writes(server, "a")) >= 2 * SPEC.duration_s / SPEC.retry_period_s
    finally:
        a.release()
        b.release()


def test_without_standby_a_live_holder_is_refused_in_one_line(server, tmp_path):
    a, b = lease(server, tmp_path, "a"), lease(server, tmp_path, "b")
    try:
        assert a.try_acquire()
        t0 = time.monotonic()
        with pytest.raises(ConfigError) as err:
            refuse_if_held(b, standby=False)
        text = str(err.value)
        assert "Lease rlscale/rlscale: another controller decides for this cluster (held by a," in text and "--standby" in text
        assert "\n" not in text and time.monotonic() - t0 < SPEC.duration_s
    finally:
        a.release()


@pytest.mark.parametrize("standby", [False, True])
def test_a_lease_the_role_does_not_grant_is_one_line_at_start_not_a_wait_for_ever(server, tmp_path, standby):
    server.cluster.rbac = {"*": []}
    with pytest.raises(ConfigError) as err:
        refuse_if_held(lease(server, tmp_path, "a"), standby=standby)
    text = str(err.value)
    assert text.startswith("Lease rlscale/rlscale: cannot take or read it (forbidden 403: ") and "\n" not in text


def test_a_leader_killed_with_sigkill_is_replaced_once_its_lease_lapses_and_not_before(server, tmp_path):
    code = ("import sys, time; sys.path.insert(0, 'tests'); from rlscale.clusters.kubernetes.settings import LeaseSpec; "
            "from rlscale.clusters.kubernetes.lease import KubernetesLease; from rlscale.clusters.kubernetes.client import api_client; "
            "from kubernetes import client; "
            f"api = client.CoordinationV1Api(api_client({str(tmp_path / 'kubeconfig')!r}, None, 'x')); "
            f"lease = KubernetesLease(api, LeaseSpec(**{SPEC.model_dump()!r}), identity='a', request_timeout_s=0.5); "
            "assert lease.try_acquire(); print('leading', flush=True); time.sleep(60)")
    leader = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    b = lease(server, tmp_path, "b")
    try:
        assert leader.stdout.readline().strip() == "leading"
        assert not b.try_acquire()
        time.sleep(1.0)
        leader.kill()
        leader.wait()
        killed = time.time()
        waited = wait_for(b, threading.Event())
        took = time.time() - killed
        print(f"standby took over {took:.2f} s after the SIGKILL (waited {waited:.2f} s)")
        assert b.held()
        last_a, first_b = holder_writes(server, "a")[-1], holder_writes(server, "b")[0]
        assert first_b - last_a >= SPEC.duration_s, "never while the dead leader's last renewal was valid"
        assert took <= SPEC.duration_s + 3 * SPEC.retry_period_s + 1.0
        with server.cluster.lock:
            assert server.cluster.leases[("rlscale", "rlscale")]["spec"]["leaseTransitions"] == 1
    finally:
        if leader.poll() is None:
            leader.kill()
        b.release()


def test_a_clean_release_hands_the_lease_over_at_the_next_try(server, tmp_path):
    a, b = lease(server, tmp_path, "a"), lease(server, tmp_path, "b")
    assert a.try_acquire() and not b.try_acquire()
    a.release()
    assert not a.held()
    t0 = time.monotonic()
    assert b.try_acquire() and time.monotonic() - t0 < 1.0
    with server.cluster.lock:
        spec = server.cluster.leases[("rlscale", "rlscale")]["spec"]
    assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1 and spec["leaseDurationSeconds"] == SPEC.duration_s
    b.release()


def test_a_leader_cut_off_from_the_api_server_stops_acting_before_a_standby_can_start(server, tmp_path):
    a, b = lease(server, tmp_path, "a"), lease(server, tmp_path, "b")
    try:
        assert a.try_acquire() and not b.try_acquire()
        server.down()
        down_at = time.monotonic()
        while a.held():
            assert time.monotonic() - down_at < SPEC.renew_deadline_s + 1.0, "stops acting within the renew deadline"
            time.sleep(0.02)
        stopped = time.monotonic()
        renewed = a._renewed_at
        assert renewed is not None and stopped - renewed <= SPEC.renew_deadline_s + 0.1
        server.up()
        assert wait_for(b, threading.Event()) is not None
        assert b.held() and not a.held()
        assert time.monotonic() - renewed >= SPEC.duration_s, "the standby waited out the whole lease"
    finally:
        a.release()
        b.release()


def test_of_two_racing_for_a_free_lease_exactly_one_wins(server, tmp_path):
    wins = []
    for _ in range(10):
        racers = [lease(server, tmp_path, f"r{i}") for i in range(2)]
        start = threading.Barrier(2)
        results: dict[int, bool] = {}

        def race(i: int) -> None:
            start.wait()
            results[i] = racers[i].try_acquire()

        threads = [threading.Thread(target=race, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(results.values()) == [False, True], results
        wins.append(sum(r.held() for r in racers))
        for r in racers:
            r.release()
    assert wins == [1] * 10
    with server.cluster.lock:
        assert any(e["code"] == 409 for e in server.cluster.lease_log) or len(server.cluster.lease_log) >= 20


@pytest.mark.parametrize("lease_doc, field", [
    ({"duration_s": 10, "renew_deadline_s": 10}, "duration_s"),
    ({"renew_deadline_s": 2, "retry_period_s": 2}, "renew_deadline_s"),
    ({"duration_s": 0}, "duration_s"),
    ({"namespace": "Not_A_Namespace"}, "namespace"),
])
def test_lease_timings_that_client_go_would_refuse_are_one_line_errors(tmp_path, lease_doc, field):
    path = tmp_path / "cluster.yaml"
    services = [{"service": "api", "name": "api", "min_replicas": 1, "max_replicas": 4,
                 "queries": {"arrivals_rps": "a", "utilisation": "u"}}]
    path.write_text(yaml.safe_dump({"prometheus": {"url": "http://127.0.0.1:9"}, "services": services, "lease": lease_doc}))
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert "\n" not in str(err.value) and field in str(err.value) and str(path) in str(err.value)


# --------------------------------------------------------------------------- two real controllers

@pytest.mark.slow
def test_two_serve_processes_one_decides_the_standby_takes_over_within_two_intervals_of_a_sigkill(tmp_path):
    from test_kubernetes import NS, Fake

    fake = Fake(tmp_path, speedup=300.0)  # 900 cluster seconds per decision = 3 s of wall time
    interval_wall = 3.0
    config = fake.config(tmp_path, lease={"namespace": "rlscale", "duration_s": 2, "renew_deadline_s": 1.5, "retry_period_s": 0.2})
    procs: list[subprocess.Popen] = []

    def serve(name: str, *extra: str) -> tuple[subprocess.Popen, Path]:
        audit = tmp_path / f"{name}.jsonl"
        cmd = [sys.executable, "-m", "rlscale.cli", "serve", "--cluster", "kubernetes", "--cluster-config", str(config),
               "--scenario", "mixed-pools", "--policy", "hpa", "--interval", "900", "--port", "0", "--audit-log", str(audit), *extra]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=open(tmp_path / f"{name}.out", "w"), stderr=open(tmp_path / f"{name}.err", "w"))
        procs.append(proc)
        return proc, audit

    def records(audit: Path) -> list[dict]:
        return [json.loads(x) for x in audit.read_text().splitlines() if x.strip()] if audit.exists() else []

    def decisions(audit: Path) -> list[dict]:
        return [r for r in records(audit) if r["kind"] == "decision"]

    def wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, what
            time.sleep(0.05)

    try:
        leader, leader_audit = serve("leader")
        wait(lambda: len(decisions(leader_audit)) >= 2, 90, "the leader decides")
        refused = subprocess.run([sys.executable, "-m", "rlscale.cli", "serve", "--cluster", "kubernetes", "--cluster-config", str(config),
                                  "--scenario", "mixed-pools", "--policy", "static", "--port", "0",
                                  "--audit-log", str(tmp_path / "refused.jsonl")], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert "another controller decides for this cluster" in refused.stderr
        standby, standby_audit = serve("standby", "--standby")
        wait(lambda: any(r.get("event") == "lease_standby" for r in records(standby_audit)), 90, "the second stands by")
        time.sleep(2 * interval_wall)
        assert decisions(standby_audit) == []
        leader.send_signal(signal.SIGKILL)
        leader.wait()
        killed = time.time()
        with fake.cluster.lock:
            replicas = [fake.cluster.deployments[(NS, s)].replicas for s in ("api", "batch")]
        wait(lambda: len(decisions(standby_audit)) >= 1, 2 * interval_wall, "the standby decides within two intervals")
        first = decisions(standby_audit)[0]
        print(f"standby's first decision {first['wall_time'] - killed:.2f} s after the SIGKILL")
        assert first["inputs"]["current_replicas"] == replicas  # from the counts the cluster has
        with fake.cluster.lock:
            assert not [e for e in fake.cluster.patch_log if e["code"] == 409], "no two writers"
            holders = [e["holder"] for e in fake.cluster.lease_log if e["code"] in (200, 201)]
        assert len(set(holders)) == 2 and holders == sorted(holders, key=holders.index)  # one hand-over, never back
        standby.send_signal(signal.SIGTERM)
        assert standby.wait(timeout=30) == 0
        with fake.cluster.lock:
            assert "holderIdentity" not in fake.cluster.leases[("rlscale", "rlscale")]["spec"], "released at a clean stop"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        fake.close()
