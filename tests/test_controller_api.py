"""The HTTP API on a real uvicorn server on 127.0.0.1: decisions, auth, size limits, Prometheus, and fuzzed bodies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from rlscale.config import load_scenario
from rlscale.controller import AuditLog, Decider, GuardConfig, Telemetry
from rlscale.controller.api import MAX_BODY_BYTES, create_app
from rlscale.controller.serve import _Server, bind_socket
from rlscale.policies.ppo import PPOPolicy
from rlscale.policies.network import load_exported
from rlscale.spaces import Metrics

TOKEN = "s3cret-token"
VALID = {
    "services": ["api"],
    "time_s": 50_400.0,
    "arrivals_rps": [820.0],
    "ready": [14],
    "desired": [14],
    "utilisation": [0.72],
    "latency_p95_s": [0.11],
    "backlog": [0.0],
    "dropped": [0.0],
    "nodes_ready": [4],
    "nodes_provisioning": [0],
    "packing": [0.87],
    "cost_rate_usd_h": 0.768,
    "hot_spot": 0.05,
    "rebalancing": 0,
}


@contextmanager
def running(app) -> Iterator[str]:
    sock = bind_socket("127.0.0.1", 0)
    server = _Server(app, sock)
    server.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One PPO policy behind two real servers: open (loopback, no token) and token-protected."""
    from helpers import export_random_policy

    root = tmp_path_factory.mktemp("api")
    policy_dir = export_random_policy(root / "policy")
    scenario = load_scenario("web-diurnal")
    config = GuardConfig.from_scenario(scenario)
    telemetry = Telemetry(config.services, "ppo:test", "v1", dry_run=False)
    audit = AuditLog(root / "audit.jsonl")
    exported = load_exported(policy_dir)
    open_app = create_app(Decider(scenario, PPOPolicy(exported), config), telemetry, audit, policy_name="ppo:test")
    locked_app = create_app(Decider(scenario, PPOPolicy(exported), config), telemetry, None, token=TOKEN)
    with running(open_app) as url, running(locked_app) as locked_url:
        with httpx.Client(base_url=url, timeout=10) as client, httpx.Client(base_url=locked_url, timeout=10) as locked:
            yield {"client": client, "locked": locked, "exported": exported, "scenario": scenario, "audit": root / "audit.jsonl"}
    audit.close()


def metrics_of(body: dict) -> Metrics:
    per = lambda k: np.array([body[k]], dtype=np.float64)  # noqa: E731
    return Metrics(
        time_s=np.array([body["time_s"]]), arrivals_rps=per("arrivals_rps"), ready=per("ready"), desired=per("desired"),
        utilisation=per("utilisation"), latency_p95_s=per("latency_p95_s"), backlog=per("backlog"), dropped=per("dropped"),
        nodes_ready=per("nodes_ready"), nodes_provisioning=per("nodes_provisioning"), packing=per("packing"),
        cost_rate_usd_h=np.array([body["cost_rate_usd_h"]]), hot_spot=np.array([body["hot_spot"]]),
        rebalancing=np.array([float(body["rebalancing"])]),
    )


def test_decide_returns_the_policy_action_of_a_fresh_episode(served):
    response = served["client"].post("/v1/decide", json=VALID)
    assert response.status_code == 200
    body = response.json()
    policy = PPOPolicy(served["exported"])
    policy.reset(1)
    expected = policy.act(metrics_of(VALID))
    assert body["services"] == ["api"] and body["acted_by"] == "policy" and body["fallback"] is None
    assert body["raw_action"]["replicas"] == expected.replicas[0].tolist()
    assert abs(body["replicas"][0] - 14) <= served["scenario"].actions.max_step and body["reason"]


def test_decide_uses_the_given_arrivals_history_like_the_preceding_intervals(served):
    history = [[300.0], [450.0], [600.0]]
    body = served["client"].post("/v1/decide", json={**VALID, "history_rps": history}).json()
    policy = PPOPolicy(served["exported"])
    policy.reset(1)
    for row in history:
        m = metrics_of(VALID)
        m.arrivals_rps = np.array([row])
        policy.builder.build(m)
    assert body["raw_action"]["replicas"] == policy.act(metrics_of(VALID)).replicas[0].tolist()


def test_decide_falls_back_to_hpa_on_nan_and_stale_metrics_and_says_why(served):
    nan = served["client"].post("/v1/decide", content=json.dumps({**VALID, "utilisation": [float("nan")]}),
                                headers={"Content-Type": "application/json"}).json()
    assert nan["fallback"]["reason"] == "metrics_invalid" and nan["acted_by"] == "fallback:hpa"
    stale = served["client"].post("/v1/decide", json={**VALID, "age_s": 600}).json()
    assert stale["fallback"]["reason"] == "metrics_stale" and stale["replicas"] == [14]
    missing = served["client"].post("/v1/decide", json={"desired": [14]}).json()
    assert missing["fallback"]["reason"] == "metrics_missing"


def test_api_decisions_are_written_to_the_audit_log(served):
    served["client"].post("/v1/decide", json=VALID)
    last = json.loads(served["audit"].read_text().splitlines()[-1])
    assert last["kind"] == "decision" and last["source"] == "api" and last["inputs"]["metrics"]["desired"] == [14.0]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({**VALID, "services": ["web"]}, 422),
        ({**VALID, "desired": [1, 2]}, 422),
        ({**VALID, "unknown": 1}, 422),
        ({k: v for k, v in VALID.items() if k != "desired"}, 422),
        ({**VALID, "desired": "many"}, 422),
        ({**VALID, "history_rps": [[1.0]] * 20}, 422),
    ],
)
def test_malformed_requests_get_a_4xx_that_names_the_problem(served, body, status):
    response = served["client"].post("/v1/decide", json=body)
    assert response.status_code == status and response.json()["detail"]


def test_bodies_over_64_kib_are_refused_with_413_declared_or_streamed(served):
    big = b'{"desired": [1], "pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    assert served["client"].post("/v1/decide", content=big).status_code == 413
    chunks = (big[i : i + 4096] for i in range(0, len(big), 4096))
    assert served["client"].post("/v1/decide", content=chunks).status_code == 413


def test_with_a_token_every_endpoint_but_healthz_needs_the_bearer_token(served):
    locked = served["locked"]
    assert locked.get("/healthz").status_code == 200
    for method, path in (("POST", "/v1/decide"), ("GET", "/metrics"), ("GET", "/openapi.json")):
        assert locked.request(method, path, json=VALID).status_code == 401
        assert locked.request(method, path, json=VALID, headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = locked.post("/v1/decide", json=VALID, headers={"Authorization": f"bearer {TOKEN}"})
    assert ok.status_code == 200
    assert locked.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_metrics_endpoint_is_prometheus_exposition_with_the_controller_metrics(served):
    served["client"].post("/v1/decide", json=VALID)
    text = served["client"].get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("rlscale_decisions", "rlscale_fallbacks", "rlscale_replicas", "rlscale_decision_latency_seconds", "rlscale_policy_info"):
        assert name in families
    api = [s.value for s in families["rlscale_decisions"].samples if s.name == "rlscale_decisions_total" and s.labels["source"] == "api"]
    assert api and api[0] >= 1
    info = [s for s in families["rlscale_policy_info"].samples if s.name == "rlscale_policy_info"]
    assert info[0].labels == {"name": "ppo:test", "version": "v1"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=15), inner, max_size=5),
    max_leaves=25,
)


@st.composite
def mutated_valid(draw):
    body = dict(VALID)
    for key in draw(st.lists(st.sampled_from(sorted(VALID) + ["age_s", "history_rps", "extra"]), max_size=4)):
        action = draw(st.sampled_from(["drop", "replace", "nan"]))
        if action == "drop":
            body.pop(key, None)
        elif action == "replace":
            body[key] = draw(json_values)
        else:
            body[key] = [float("nan")] if isinstance(VALID.get(key), list) else float("inf")
    return json.dumps(body).encode()


bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    mutated_valid(),
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(body=bodies, content_type=st.sampled_from(["application/json", "text/plain", None]))
def test_fuzzed_bodies_never_get_a_500_and_the_server_stays_up(served, body, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = served["client"].post("/v1/decide", content=body, headers=headers)
    assert response.status_code in (200, 400, 413, 422), response.text
    payload = response.json()
    if response.status_code == 200:
        replicas = payload["replicas"]
        api = served["scenario"].services[0]
        assert replicas is None or (len(replicas) == 1 and api.min_replicas <= replicas[0] <= api.max_replicas)
    else:
        assert payload["detail"]
    assert served["client"].get("/healthz").status_code == 200
