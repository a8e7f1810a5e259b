"""Slow clients (issue 27.6): 200 slow-loris sockets must not starve the controller's normal callers.

The probe: 200 sockets that each send a request head one line at a time and
reconnect the moment they are closed held all 128 connection slots, and
normal callers got 31 answers, 13 503s and 119 connection resets. Here the
same attack runs with real sockets on loopback against real uvicorn with the
production limits (``HttpLimits()``), from one address, from the callers'
own address, and spread over eight addresses (each under the per-client
limit, together over the cap); every normal caller must be answered.
Loopback is all of 127.0.0.0/8 on Linux, so a socket bound to 127.0.0.2 is
another client address.
"""

from __future__ import annotations

import select
import socket
import sys
import threading
from pathlib import Path

import httpx
import pytest

from rlscale.controller.limits import HttpLimits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_http_limits import TOKEN, limited_server, rejected  # noqa: E402

SOCKETS = 200
CALLS = 40


class Slowloris:
    """``n`` sockets from ``sources`` (round robin), each sending one header line every ``every_s``, reconnecting when closed."""

    def __init__(self, address: tuple[str, int], sources: list[str], n: int = SOCKETS, every_s: float = 0.4) -> None:
        self.address, self.sources, self.every_s = address, sources, every_s
        self.socks: list[socket.socket | None] = [None] * n
        self.connects = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _connect(self, i: int) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(1.0)
        try:
            s.bind((self.sources[i % len(self.sources)], 0))
            s.connect(self.address)
            s.sendall(b"POST /v1/decide HTTP/1.1\r\nHost: x\r\n")
            s.setblocking(False)
        except OSError:
            s.close()
            return
        self.socks[i] = s
        self.connects += 1

    def closed(self) -> list[int]:
        """The sockets the server has closed or answered (readable: an answer or EOF; it never answers a head it lacks)."""
        open_ = [s for s in self.socks if s is not None]
        readable, _, _ = select.select(open_, [], [], 0) if open_ else ([], [], [])
        return [i for i, s in enumerate(self.socks) if s is not None and s in readable]

    def held(self) -> int:
        return sum(s is not None for s in self.socks) - len(self.closed())

    def _run(self) -> None:
        while not self.stop.is_set() and self.connects < 20 * len(self.socks):
            for i in self.closed():
                self.socks[i].close()  # type: ignore[union-attr]
                self.socks[i] = None
            for i, s in enumerate(self.socks):
                if s is None:
                    self._connect(i)
                else:
                    try:
                        s.send(b"X-Slow: 1\r\n")
                    except OSError:
                        s.close()
                        self.socks[i] = None
            self.stop.wait(self.every_s)

    def __enter__(self) -> "Slowloris":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        for s in self.socks:
            if s is not None:
                s.close()


def call(address: tuple[str, int], i: int) -> int:
    """One normal caller: a new connection, a whole request, the answer's status (-1: no answer)."""
    url = f"http://{address[0]}:{address[1]}"
    try:
        if i % 2:
            return httpx.get(f"{url}/healthz", timeout=5).status_code
        return httpx.post(f"{url}/v1/decide", json={"desired": [3]}, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).status_code
    except httpx.HTTPError:
        return -1


@pytest.mark.parametrize("sources", [["127.0.0.2"], ["127.0.0.1"], [f"127.0.0.{10 + k}" for k in range(8)]],
                         ids=["one-address", "the-callers-address", "eight-addresses"])
def test_200_slowloris_sockets_never_starve_normal_callers(sources):
    limits = HttpLimits()
    with limited_server(limits) as (address, telemetry), Slowloris(address, sources) as attack:
        deadline = threading.Event()
        while attack.connects < SOCKETS and not deadline.wait(0.1):
            pass
        deadline.wait(1.0)  # the attack at full strength: every slot it can get is taken
        codes = [call(address, i) for i in range(CALLS)]
        attack.stop.set()  # what it holds once its last reconnects have had their grace
        attack.thread.join(10)
        deadline.wait(limits.head_grace_s + 0.3)
        held = attack.held()
        made_room = rejected(telemetry, 408)
    print(f"{sources}: {attack.connects} attack connections, {held} held at the end, {made_room:.0f} closed to make room or late")
    assert attack.connects >= SOCKETS
    assert codes == [200] * CALLS, {c: codes.count(c) for c in set(codes)}
    if len(sources) == 1 and sources[0] != "127.0.0.1":
        assert held <= limits.max_connections_per_client
    assert held <= limits.max_connections
