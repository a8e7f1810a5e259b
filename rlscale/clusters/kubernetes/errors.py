"""The one place that turns a failed Kubernetes API call into a reason the guard rails and the audit log use.

The official client raises ``ApiException`` (``.status`` is the HTTP code;
0 for a TLS failure) or, below it, urllib3's errors for timeouts and refused
connections. kubectl's rule applies: branch on the status, never parse the
message. Each outcome has a short name (the audit log's ``kubernetes.*.reason``)
and an effect:

* a failed **read** (scale subresource, pods) means the interval has no
  trustworthy replica count: ``read_metrics`` returns None, the decision is
  ``metrics_missing`` and the HPA fallback holds every service at the
  replicas last set (``rlscale.controller.guards.fallback_metrics``);
* a failed **write** (scale patch) leaves that service where it was; the
  next interval re-reads the object (a 409 means someone else changed it
  since our read, so we do not overwrite them blindly);
* a 429 from the Eviction API means a PodDisruptionBudget forbids the
  eviction now: wait (``Retry-After`` when the server gives one), never force.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any

import urllib3

from rlscale.clusters.base import METRICS_MISSING

# reason names (the audit log's words)
NOT_FOUND = "not_found"
FORBIDDEN = "forbidden"
UNAUTHORIZED = "unauthorized"
CONFLICT = "conflict"
INVALID = "invalid"
TOO_MANY_REQUESTS = "too_many_requests"
SERVER_ERROR = "server_error"
TIMEOUT = "timeout"
UNREACHABLE = "unreachable"
BAD_RESPONSE = "bad_response"
OTHER = "api_error"

_BY_STATUS = {
    401: (UNAUTHORIZED, "the credentials were refused; check the kubeconfig or the ServiceAccount token"),
    403: (FORBIDDEN, "RBAC forbids this call; compare the Role with deploy/kubernetes/rbac.yaml"),
    404: (NOT_FOUND, "the object does not exist (deleted or renamed?)"),
    409: (CONFLICT, "the object changed since it was read; re-read next interval"),
    422: (INVALID, "the API server rejected the value"),
    429: (TOO_MANY_REQUESTS, "the server asks us to wait (a disruption budget, or API priority and fairness)"),
}

HOLD, REREAD, WAIT = "held", "held; re-read next interval", "wait"
_EFFECT = {CONFLICT: REREAD, TOO_MANY_REQUESTS: WAIT}


@dataclass(frozen=True)
class ApiProblem:
    """One failed call, classified: what went wrong, what it means, what the controller does about it."""

    reason: str
    status: int | None
    message: str
    hint: str
    retry_after_s: float | None = None

    @property
    def read_reason(self) -> str:
        """The guard rails' fallback reason when a read fails this way (always: nothing trustworthy to act on)."""
        return METRICS_MISSING

    @property
    def write_effect(self) -> str:
        return _EFFECT.get(self.reason, HOLD)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reason": self.reason, "status": self.status, "message": self.message[:300], "hint": self.hint}
        if self.retry_after_s is not None:
            out["retry_after_s"] = self.retry_after_s
        return out

    def __str__(self) -> str:
        code = f" {self.status}" if self.status else ""
        return f"{self.reason}{code}: {self.message[:200]}"


def classify(err: BaseException) -> ApiProblem:
    """Any exception a client call can raise, as an ``ApiProblem`` (never raises)."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(err, ApiException):
        status = int(err.status or 0)
        status_obj = _status_body(getattr(err, "body", None))
        message = str(status_obj.get("message") or err.reason or "no message")
        retry = _retry_after(err, status_obj)
        if status == 0:
            return ApiProblem(UNREACHABLE, None, message, "TLS or connection failure before any HTTP response")
        if status in _BY_STATUS:
            reason, hint = _BY_STATUS[status]
            return ApiProblem(reason, status, message, hint, retry)
        if status >= 500:
            return ApiProblem(SERVER_ERROR, status, message, "the API server failed; retried next interval", retry)
        return ApiProblem(OTHER, status, message, "unexpected status", retry)
    if isinstance(err, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ProtocolError, ConnectionError)):
        # NewConnectionError subclasses urllib3's ConnectTimeoutError: "refused" must be tested before "timed out"
        return ApiProblem(UNREACHABLE, None, _text(err), "the API server cannot be reached")
    if isinstance(err, (urllib3.exceptions.TimeoutError, socket.timeout, TimeoutError)):
        return ApiProblem(TIMEOUT, None, _text(err), "no answer within request_timeout_s; the outcome of a write is unknown until re-read")
    if isinstance(err, urllib3.exceptions.MaxRetryError):
        inner = err.reason
        if isinstance(inner, BaseException):
            return classify(inner)
        return ApiProblem(UNREACHABLE, None, _text(inner or err), "the API server cannot be reached")
    if isinstance(err, (urllib3.exceptions.HTTPError, ConnectionError, OSError)):
        return ApiProblem(UNREACHABLE, None, _text(err), "the API server cannot be reached")
    return ApiProblem(BAD_RESPONSE, None, f"{type(err).__name__}: {_text(err)}", "the answer could not be understood")


def _text(err: BaseException | None) -> str:
    return " ".join(str(err).split())[:300] if err is not None else ""


def _status_body(body: Any) -> dict[str, Any]:
    """The ``Status`` object an API server sends with an error (empty if the body is something else)."""
    if not body:
        return {}
    try:
        data = json.loads(body)
    except (TypeError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("kind") == "Status" else {}


def _retry_after(err: Any, status_obj: dict[str, Any]) -> float | None:
    headers = getattr(err, "headers", None) or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    if value is None:
        value = (status_obj.get("details") or {}).get("retryAfterSeconds")
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
