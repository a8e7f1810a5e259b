"""Limits on what one HTTP client can make the controller hold: header size and count, time, connections.

The body-size limit and the token live in ``api.RequestGate``, but they only
run once the request's headers are parsed. Headers themselves are parsed by
uvicorn's protocol (httptools), which accepts headers of any size: a 64 MB
header took 3 s to parse and stalled every other request. So the limits
below sit inside the protocol, where the bytes arrive:

* **headers**: over ``max_header_bytes`` (request line + headers) or
  ``max_headers`` fields -> ``431`` and the connection is closed; at most one
  read buffer (256 KiB) beyond the limit is ever held;
* **time**: a request head (request line and headers) not received within
  ``header_timeout_s`` of its connection or its first byte, or a whole
  request not within ``request_timeout_s`` (a slow-loris client) -> ``408``,
  closed;
* **connections**: at most ``max_connections`` open connections, and at most
  ``max_connections_per_client`` from one address. A new connection beyond
  either limit first makes room: the oldest connection still waiting for a
  request head (of the newcomer's address for the per-client limit; of the
  address holding the most connections for the cap) is closed with ``408``,
  the way nginx closes idle keep-alive connections first when it runs out.
  Only when every connection is inside a request does the newcomer get
  ``503``, closed at once.
* **grace**: a connection younger than ``head_grace_s`` is never closed to
  make room. While only young connections wait, the newcomer is let in over
  the limit, and room is made as soon as the oldest of them has waited its
  grace; a hard cap of twice ``max_connections`` bounds what is let in.

The deadlines alone cannot keep the cap free: a slow-loris client reconnects
the moment it is closed, and 200 such sockets held the 128 slots (normal
callers got 31 answers, 13 503s and 119 resets). Making room does: a socket
that sends no request holds its slot only until someone needs it, oldest
first, so a caller whose head arrives within its round trip is served; and
one address never holds more than a quarter of the slots once its newest
connections have had their grace. The grace is what makes "oldest first" hold
for a caller that shares the attacker's address: asyncio accepts a burst of
connections before it reads any of them, so without it, a burst of reconnects
right after the caller's connect closed the caller before its head, already
sent, was read (1 call in 40 got 408 on a loaded CI host).

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
    header_timeout_s: float = 5.0
    max_connections_per_client: int = 32
    head_grace_s: float = 0.25


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

    head_s = min(limits.header_timeout_s, limits.request_timeout_s)
    hard_cap = 2 * limits.max_connections
    open_by: dict[str, int] = {}  # open connections per client address; one we closed no longer counts
    live: list[Any] = []  # the open connections, oldest first
    pending: list[Any] = []  # the one timer that makes room once young connections have had their grace

    def waiting(address: str | None, now: float, ripe_only: bool, exclude: Any = None) -> list[Any]:
        """Connections waiting for a request head (past their grace if ``ripe_only``): of ``address``,
        else of the address holding the most."""
        idle = [c for c in live if c is not exclude and c._idle_since is not None
                and (address is None or c._address == address)
                and (not ripe_only or now - c._idle_since >= limits.head_grace_s)]
        if address is None and idle:
            most = max(open_by[c._address] for c in idle)
            idle = [c for c in idle if open_by[c._address] == most]
        return idle

    def is_over(address: str | None) -> bool:
        """``None``: the cap; an address: its per-client limit."""
        if address is None:
            return len(live) > limits.max_connections
        return open_by.get(address, 0) > limits.max_connections_per_client

    def make_room(address: str | None, now: float, ripe_only: bool, exclude: Any = None) -> bool:
        """Close the oldest connection waiting for a request head (``waiting``'s)."""
        return close_oldest(waiting(address, now, ripe_only, exclude), address, now)

    def close_oldest(idle: list[Any], address: str | None, now: float) -> bool:
        if not idle:
            return False
        victim = min(idle, key=lambda c: c._idle_since)
        victim._refuse(408, f"no request head for {now - victim._idle_since:.1f} s while the connections "
                            f"{'from its address ' if address else ''}were at their limit; closed to make room")
        return True

    def ripen_later(loop: Any, young: list[Any], now: float) -> None:
        """Come back to make room when the oldest of ``young`` has had its grace (one timer for all)."""
        if not young:
            return
        when = max(min(c._idle_since for c in young) + limits.head_grace_s, now) + 1e-3
        if pending and pending[0].when() <= when:
            return
        for timer in pending:
            timer.cancel()
        pending[:] = [loop.call_at(when, settle, loop)]

    def settle(loop: Any) -> None:
        pending.clear()
        now = loop.time()
        for address in [None, *[a for a in open_by if is_over(a)]]:
            while is_over(address) and make_room(address, now, ripe_only=True):
                pass
            if is_over(address):
                ripen_later(loop, waiting(address, now, False), now)

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        _head_bytes = 0
        _head_done = False
        _timer: Any = None
        _deadline: float | None = None
        _since = 0.0
        _idle_since: float | None = None
        _closed_by_us = False
        _counted = False
        _address = ""

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._address = str(self.client[0]) if self.client else ""
            self._idle_since = now = self.loop.time()
            open_by[self._address] = open_by.get(self._address, 0) + 1
            live.append(self)
            self._counted = True
            for address, limit in ((None, limits.max_connections), (self._address, limits.max_connections_per_client)):
                if not is_over(address) or make_room(address, now, ripe_only=True, exclude=self):
                    continue
                young = waiting(address, now, False, exclude=self)
                if not young:
                    self._refuse(503, f"over {limit} open connections{' from one address' if address else ''}")
                    return
                if len(live) > hard_cap:
                    close_oldest(young, address, now)
                else:
                    ripen_later(self.loop, young, now)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._uncount()
            super().connection_lost(exc)

        def _uncount(self) -> None:
            if not self._counted:
                return
            self._counted = False
            live.remove(self)
            open_by[self._address] -= 1
            if not open_by[self._address]:
                del open_by[self._address]

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._idle_since = self.loop.time()  # waiting for the next request on a kept-alive connection

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
                self._since = self.loop.time()
                self._deadline = self._since + head_s

        def on_headers_complete(self) -> None:
            # the count is checked here, not per header: the byte limit in data_received already bounds the list
            self._head_done = True
            self._idle_since = None
            self._deadline = self._since + limits.request_timeout_s
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
            self._since = self.loop.time()
            self._deadline = self._since + head_s
            self._timer = self.loop.call_later(head_s, self._check_deadline)

        def _disarm(self) -> None:
            self._deadline = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _check_deadline(self) -> None:
            self._timer = None
            if self._closed_by_us or self.transport.is_closing():
                return
            wait = head_s
            responding = self.cycle is not None and self.cycle.response_started
            if self._deadline is not None and not responding:
                wait = self._deadline - self.loop.time()
                if wait <= 0:
                    what = f"request not received within {limits.request_timeout_s:g} s" if self._head_done else \
                        f"request head not received within {head_s:g} s"
                    self._refuse(408, what)
                    return
            self._timer = self.loop.call_later(wait, self._check_deadline)

        def _refuse(self, status: int, reason: str) -> None:
            if self._closed_by_us:
                return
            self._closed_by_us = True
            self._disarm()
            self._uncount()
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
