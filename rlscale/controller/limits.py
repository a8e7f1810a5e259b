"""Limits on what one HTTP client can make the controller hold: header size and count, time, connections.

The body-size limit and the token live in ``api.RequestGate``, but they only
run once the request's headers are parsed. Headers themselves are parsed by
uvicorn's protocol (httptools), which accepts headers of any size: a 64 MB
header took 3 s to parse and stalled every other request. So the limits
below sit inside the protocol, where the bytes arrive:

* **headers**: over ``max_header_bytes`` (request line + headers) or
  ``max_headers`` fields -> ``431`` and the connection is closed; at most one
  read buffer (256 KiB) beyond the limit is ever held;
* **time**: a request not fully received within ``request_timeout_s`` of its
  connection or its first byte (a slow-loris client) -> ``408``, closed;
* **connections**: beyond ``max_connections`` open connections a new one
  gets ``503`` and is closed at once.

Every refusal is counted (``on_reject(status)``, exported as
``rlscale_http_rejected_total{status}``) and logged at most once a second
per status, with the client address and the reason, never a header value
(the token is a header).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("rlscale.controller.http")

REASONS = {400: "Bad Request", 401: "Unauthorized", 408: "Request Timeout", 413: "Content Too Large",
           431: "Request Header Fields Too Large", 503: "Service Unavailable"}


@dataclass(frozen=True)
class HttpLimits:
    """The defaults fit ``/v1/decide`` callers: a few small headers, one JSON body of at most 64 KiB."""

    max_header_bytes: int = 16 * 1024
    max_headers: int = 64
    request_timeout_s: float = 10.0
    max_connections: int = 128


class RejectLog:
    """Counts refusals and logs them without flooding: one line per status per second, with how many were folded in."""

    def __init__(self, count: Callable[[int], None] | None = None, interval_s: float = 1.0) -> None:
        self.count = count
        self.interval_s = interval_s
        self._last: dict[int, float] = {}
        self._folded: dict[int, int] = {}

    def __call__(self, status: int, client: Any, reason: str) -> None:
        if self.count is not None:
            self.count(status)
        now = time.monotonic()
        if now - self._last.get(status, -1e9) < self.interval_s:
            self._folded[status] = self._folded.get(status, 0) + 1
            return
        folded = self._folded.pop(status, 0)
        self._last[status] = now
        who = f"{client[0]}:{client[1]}" if isinstance(client, (tuple, list)) and len(client) >= 2 else "unknown client"
        more = f" (and {folded} more since the last line)" if folded else ""
        log.warning("rejected %d from %s: %s%s", status, who, reason, more)


class _Reject(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def limited_protocol(limits: HttpLimits, reject: RejectLog) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with ``limits`` enforced; pass it as ``uvicorn.Config(http=...)``."""

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        _head_bytes = 0
        _head_done = False
        _timer: Any = None
        _deadline: float | None = None
        _closed_by_us = False

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                self._refuse(503, f"over {limits.max_connections} open connections")
                return
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._closed_by_us:
                return
            self._unset_keepalive_if_required()
            if not self._head_done:
                self._head_bytes += len(data)
            try:
                self.parser.feed_data(data)
            except _Reject as err:
                self._refuse(err.status, err.reason)
                return
            except Exception as err:  # noqa: BLE001 - httptools wraps a callback's exception
                inner = err.__context__
                if isinstance(inner, _Reject):
                    self._refuse(inner.status, inner.reason)
                    return
                import httptools

                if isinstance(err, httptools.HttpParserUpgrade):
                    self._unsupported_upgrade_warning()
                    return
                if isinstance(err, httptools.HttpParserError):
                    self._refuse(400, "invalid HTTP request")
                    return
                raise
            if not self._head_done and self._head_bytes > limits.max_header_bytes:
                self._refuse(431, f"headers over {limits.max_header_bytes} bytes")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_done = False
            if self._deadline is None:
                self._deadline = self.loop.time() + limits.request_timeout_s

        def on_headers_complete(self) -> None:
            # the count is checked here, not per header: the byte limit in data_received already bounds the list
            self._head_done = True
            if len(self.headers) > limits.max_headers:
                raise _Reject(431, f"over {limits.max_headers} header fields")
            size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
            if size > limits.max_header_bytes:
                raise _Reject(431, f"headers over {limits.max_header_bytes} bytes")
            self._head_bytes = 0
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._deadline = None
            super().on_message_complete()

        def _arm(self) -> None:
            """One timer per connection, re-armed when it fires: a request only sets or clears ``_deadline``
            (a timer per request cost a handle and a cancellation each, on the hot path)."""
            self._deadline = self.loop.time() + limits.request_timeout_s
            self._timer = self.loop.call_later(limits.request_timeout_s, self._check_deadline)

        def _disarm(self) -> None:
            self._deadline = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _check_deadline(self) -> None:
            self._timer = None
            if self._closed_by_us or self.transport.is_closing():
                return
            wait = limits.request_timeout_s
            responding = self.cycle is not None and self.cycle.response_started
            if self._deadline is not None and not responding:
                wait = self._deadline - self.loop.time()
                if wait <= 0:
                    self._refuse(408, f"request not received within {limits.request_timeout_s:g} s")
                    return
            self._timer = self.loop.call_later(wait, self._check_deadline)

        def _refuse(self, status: int, reason: str) -> None:
            if self._closed_by_us:
                return
            self._closed_by_us = True
            self._disarm()
            reject(status, self.client, reason)
            body = ('{"detail":"%s"}' % reason).encode()
            head = (f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
            if not self.transport.is_closing():
                self.transport.write(head + body)
                self.transport.close()

    return LimitedHttpToolsProtocol


def is_loopback(host: str) -> bool:
    """Loopback binds need no token; every other bind does (serve's HTTP and KEDA's gRPC alike)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
