"""HTTP API: ``POST /v1/decide`` for external controllers, ``GET /healthz``, ``GET /metrics`` (Prometheus).

``/v1/decide`` is stateless with respect to the control loop: it has its own
``Decider`` and every request starts a fresh history, like the first interval
of an episode (the request's arrivals fill the load history), unless the
request brings ``history_rps``, the arrivals of the preceding intervals.
Guard rails that need a history of our own actions (per-minute limit,
scale-down cooldown) are the caller's business: it owns that history. The
request's ``desired`` (when valid) stands for "the replicas last set", so a
fallback on stale or missing metrics answers "hold at ``desired``". Every
request's decision is written to the audit log with ``source: "api"``.

In front of the app, ``RequestGate`` checks the bearer token (every path but
``/healthz``) and the body size (413 beyond ``max_body``) before any parsing;
header size and count, time and connections are limited earlier still, in
the HTTP protocol (``limits.py``). Every refusal is counted and logged
without the token (``reject``).

``/healthz`` answers 200 while the controller decides, with ``status:
"degraded"`` when the audit log cannot be written (its lines wait in memory):
a liveness probe must not restart a controller for a full disk, which a
restart does not cure, but an operator must see it.
"""

from __future__ import annotations

import hmac
import itertools
import math
import operator
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rlscale.controller.audit import AuditLog, dumps_bytes
from rlscale.controller.decision import Decider
from rlscale.controller.guards import CLUSTER_WIDE, PER_POOL, PER_SERVICE, GuardState, valid_desired
from rlscale.controller.telemetry import Telemetry
from rlscale.spaces import HISTORY_LEN, Metrics

MAX_BODY_BYTES = 64 * 1024
MAX_ITEMS = 256

Values = list[float | None]


class DecideRequest(BaseModel):
    """One cluster's metrics for one interval. Only ``desired`` is required; a missing field means "not measured"."""

    model_config = ConfigDict(extra="forbid", strict=True)

    services: list[str] | None = Field(None, max_length=MAX_ITEMS, description="service names, checked against the policy's")
    desired: list[float] = Field(..., max_length=MAX_ITEMS, description="current replicas per service (spec.replicas)")
    ready: Values | None = Field(None, max_length=MAX_ITEMS)
    arrivals_rps: Values | None = Field(None, max_length=MAX_ITEMS)
    utilisation: Values | None = Field(None, max_length=MAX_ITEMS)
    latency_p95_s: Values | None = Field(None, max_length=MAX_ITEMS)
    backlog: Values | None = Field(None, max_length=MAX_ITEMS)
    dropped: Values | None = Field(None, max_length=MAX_ITEMS)
    nodes_ready: Values | None = Field(None, max_length=MAX_ITEMS)
    nodes_provisioning: Values | None = Field(None, max_length=MAX_ITEMS)
    packing: Values | None = Field(None, max_length=MAX_ITEMS)
    time_s: float | None = Field(None, description="seconds since Monday 00:00 (or any time with that phase)")
    cost_rate_usd_h: float | None = None
    hot_spot: float | None = None
    rebalancing: float | None = None
    age_s: float = Field(0.0, description="how old the metrics are, in seconds")
    history_rps: list[Values] | None = Field(
        None, max_length=HISTORY_LEN - 1, description="arrivals of the preceding intervals, oldest first"
    )


REQUEST_SCHEMA = DecideRequest.model_json_schema(ref_template="#/components/schemas/{model}")


def _errors(errors: list[Any]) -> list[dict[str, Any]]:
    """Validation errors without the offending input (it may be huge, or NaN, which JSON cannot carry)."""
    return [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))} for e in errors[:20]]


def _array(values: list[float | None] | None, width: int, name: str) -> np.ndarray | None:
    if values is None:
        return None
    if len(values) != width:
        raise HTTPException(422, f"{name}: expected {width} values, got {len(values)}")
    if None not in values:
        return np.array([values], dtype=np.float64)
    return np.array([[np.nan if v is None else v for v in values]], dtype=np.float64)


def _scalar(value: float | None) -> np.ndarray | None:
    return None if value is None else np.array([value], dtype=np.float64)


def request_metrics(body: DecideRequest, services: tuple[str, ...], n_pools: int) -> tuple[Metrics, np.ndarray | None]:
    """The request as batched ``Metrics`` (N = 1; missing fields stay None) and its history ``[H, S]``."""
    if body.services is not None and tuple(body.services) != services:
        raise HTTPException(422, f"services: expected {list(services)} (the served policy's), got {body.services[:16]}")
    S = len(services)
    history = None
    if body.history_rps:
        rows = [_array(row, S, "history_rps[]") for row in body.history_rps]
        history = np.concatenate([r for r in rows if r is not None])
        if not np.isfinite(history).all() or (history < 0).any():
            raise HTTPException(422, "history_rps: expected finite, non-negative arrival rates")
    return _complete_metrics(body, S, n_pools) or _partial_metrics(body, S, n_pools), history


def _complete_metrics(body: DecideRequest, S: int, P: int) -> Metrics | None:
    """Every field given and measured: one array for all of them, each field a view of it (a decision's
    metrics cost one conversion, not fourteen); None otherwise."""
    per_service, per_pool, cluster = _SERVICE_OF(body), _POOL_OF(body), _CLUSTER_OF(body)
    if None in cluster or not all(v is not None and len(v) == S and None not in v for v in per_service):
        return None
    if not all(v is not None and len(v) == P and None not in v for v in per_pool):
        return None
    n = len(PER_SERVICE) * S + len(PER_POOL) * P
    flat = np.fromiter(itertools.chain(*per_service, *per_pool, cluster), np.float64, n + len(CLUSTER_WIDE))
    services = list(flat[: len(PER_SERVICE) * S].reshape(len(PER_SERVICE), 1, S))
    pools = list(flat[len(PER_SERVICE) * S : n].reshape(len(PER_POOL), 1, P))
    time_s, cost, hot, rebalancing = flat[n:].reshape(len(CLUSTER_WIDE), 1)
    return Metrics(time_s, *services, *pools, cost, hot, rebalancing)


_SERVICE_OF, _POOL_OF, _CLUSTER_OF = (operator.attrgetter(*names) for names in (PER_SERVICE, PER_POOL, CLUSTER_WIDE))


def _partial_metrics(body: DecideRequest, S: int, P: int) -> Metrics:
    """Metrics with what the request has: missing fields None, unmeasured values NaN; a field of the wrong
    length is a 422 that names it."""
    per_service = {k: _array(getattr(body, k), S, k) for k in PER_SERVICE}
    per_pool = {k: _array(getattr(body, k), P, k) for k in PER_POOL}
    cluster = {k: _scalar(getattr(body, k)) for k in CLUSTER_WIDE}
    return Metrics(**per_service, **per_pool, **cluster)  # type: ignore[arg-type]


class RequestGate:
    """ASGI middleware: bearer token and body-size limit, checked before the app parses anything.

    ``direct`` maps (method, path) to a handler of the whole body that returns
    a status and a JSON body: the hot ``POST /v1/decide`` is answered here, after
    the gate's checks, without FastAPI's middleware stack (about 60 us of CPU per
    request of the bare endpoint's 120, for features this route does not use).
    Other methods on that path still reach the app (405).
    """

    def __init__(
        self,
        app: ASGIApp,
        token: str | None,
        max_body: int = MAX_BODY_BYTES,
        open_paths: tuple[str, ...] = ("/healthz",),
        reject: Callable[[int, Any, str], None] | None = None,
        direct: dict[tuple[str, str], Callable[[bytes], tuple[int, bytes]]] | None = None,
    ) -> None:
        self.app = app
        self.reject = reject
        self.direct = direct or {}
        self.expected = None if token is None else token.encode()
        self.max_body = max_body
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.expected is not None and scope.get("path") not in self.open_paths:
            scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.expected):
                await self._refuse(scope, receive, send, 401, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})
                return
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await self._refuse(scope, receive, send, 400, "invalid Content-Length")
                return
            if declared > self.max_body:
                await self._refuse(scope, receive, send, 413, f"request body over {self.max_body} bytes")
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await self._refuse(scope, receive, send, 413, f"request body over {self.max_body} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        handler = self.direct.get((scope["method"], scope["path"]))
        if handler is not None:
            status, payload = handler(body)
            await send({"type": "http.response.start", "status": status, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        if self.reject is not None:
            self.reject(status, scope.get("client"), detail)
        await JSONResponse({"detail": detail}, status_code=status, headers=headers)(scope, receive, send)


class DecideEndpoint:
    """``POST /v1/decide``: request body in, status and JSON body out (pydantic-core validates straight from bytes)."""

    def __init__(self, decider: Decider, telemetry: Telemetry, audit: AuditLog | None, policy_name: str) -> None:
        self.decider = decider
        self.telemetry = telemetry
        self.audit = audit
        self.policy_name = policy_name
        self.n_pools = len(decider.config.max_nodes)

    def __call__(self, raw: bytes) -> tuple[int, bytes]:
        try:
            body = DecideRequest.model_validate_json(raw)
        except ValidationError as err:
            return 422, dumps_bytes({"detail": _errors(err.errors())})
        decider = self.decider
        try:
            m, history = request_metrics(body, decider.services, self.n_pools)
        except HTTPException as err:
            return err.status_code, dumps_bytes({"detail": err.detail})
        t = float(body.time_s) if body.time_s is not None and math.isfinite(body.time_s) else 0.0
        state = GuardState(last_replicas=valid_desired(m.desired, decider.config))
        decision = decider.decide(m, float(body.age_s), t, state, source="api", fresh=True, history_rps=history)
        if self.audit is not None:
            self.audit.write(decision.audit())
        self.telemetry.record("api", decision.latency_s, decision.fallback_reason, [a.guard for a in decision.adjustments])
        return 200, dumps_bytes({"policy": self.policy_name, **decision.response()})


def create_app(
    decider: Decider,
    telemetry: Telemetry,
    audit: AuditLog | None = None,
    *,
    token: str | None = None,
    max_body: int = MAX_BODY_BYTES,
    status: Callable[[], dict[str, Any]] | None = None,
    policy_name: str = "",
    reject: Callable[[int, Any, str], None] | None = None,
) -> ASGIApp:
    """The ASGI app: FastAPI routes behind ``RequestGate``."""
    app = FastAPI(title="rlscale controller", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _errors(exc.errors())}, status_code=422)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        health = None if audit is None else audit.health()
        state = "ok" if health is None or health["ok"] else "degraded"
        return {"status": state, **(status() if status is not None else {}), **({} if health is None else {"audit": health})}

    @app.get("/v1/status")
    async def status_view() -> dict[str, Any]:
        """The control loop and what the policy knows of each service's past (history or history-free)."""
        return status() if status is not None else {}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(telemetry.exposition(), media_type=telemetry.content_type)

    endpoint = DecideEndpoint(decider, telemetry, audit, policy_name)

    @app.post("/v1/decide", openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": REQUEST_SCHEMA}}}})
    async def decide(request: Request) -> Response:
        """The schema's entry and other methods' 405; the gate answers POST itself with the same endpoint."""
        status, payload = endpoint(await request.body())
        return Response(payload, status_code=status, media_type="application/json")

    return RequestGate(app, token, max_body, reject=reject, direct={("POST", "/v1/decide"): endpoint})
