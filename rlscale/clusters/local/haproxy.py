"""HAProxy for the local cluster: its generated config and a client for its runtime API.

One frontend and one backend per service. Workers are *dynamic servers*
(``add server`` / ``del server`` on the admin socket), so scaling never
reloads HAProxy. Each server gets ``maxconn`` = the worker's concurrency, so
requests beyond what the workers can take wait in the backend's one shared
queue, as in the simulator's model (one queue per service), and requests
that wait longer than ``timeout queue`` get a 503: those are the drops.

The frontend stamps ``X-Request-Start`` (epoch microseconds) on each request
before it can queue, so the latency the workers record is what a client sees.
A separate frontend serves HAProxy's built-in Prometheus exporter.
"""

from __future__ import annotations

import csv
import io
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from rlscale.config import ConfigError

NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
EXPORTER_FRONTEND = "rlscale_metrics"


class HAProxyError(RuntimeError):
    """The runtime API could not be reached, or refused a command."""


def check_name(name: str, what: str = "service name") -> str:
    if not NAME_RE.match(name) or name == EXPORTER_FRONTEND:
        raise ConfigError(f"{what} {name!r}: the local cluster needs letters, digits, '_', '.', ':' or '-' (max 64)")
    return name


def render_config(
    socket_path: Path,
    frontends: dict[str, int],
    exporter_port: int,
    queue_timeout_s: float,
    host: str = "127.0.0.1",
    health_inter_ms: int = 500,
) -> str:
    """The haproxy.cfg text: ``frontends`` maps service name -> listening port."""
    lines = [
        "global",
        f"    stats socket {socket_path} mode 600 level admin expose-fd listeners",
        "    stats timeout 30s",
        "    maxconn 8192",
        "    nbthread 1",
        "",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout client 60s",
        "    timeout server 60s",
        f"    timeout queue {int(queue_timeout_s * 1000)}ms",
        "    timeout http-request 10s",
        "    retries 2",
        "    option redispatch",
        "",
    ]
    for service, port in frontends.items():
        check_name(service)
        lines += [
            f"frontend {service}",
            f"    bind {host}:{port}",
            "    http-request set-header X-Request-Start %[date(0,us)]",
            f"    default_backend {service}",
            "",
            f"backend {service}",
            "    balance roundrobin",
            "    option httpchk GET /healthz",
            f"    # workers are added at run time: add server {service}/<name> <addr> check inter {health_inter_ms}",
            "",
        ]
    lines += [
        f"frontend {EXPORTER_FRONTEND}",
        f"    bind {host}:{exporter_port}",
        "    http-request use-service prometheus-exporter if { path /metrics }",
        "    http-request return status 404",
        "",
    ]
    return "\n".join(lines)


class HAProxyAdmin:
    """The runtime API over the admin socket: one connection per command, retried with back-off.

    Thread-safe (no shared connection), so the supervisor and ``read_metrics``
    can both use it.
    """

    def __init__(self, socket_path: Path, timeout_s: float = 2.0, retries: int = 3, backoff_s: float = 0.05) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s

    def raw(self, command: str) -> str:
        """Send one command, return HAProxy's answer; raises HAProxyError after the retries."""
        delay = self.backoff_s
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                return self._once(command)
            except OSError as err:
                last = err
                if attempt < self.retries:
                    time.sleep(delay)
                    delay *= 2
        raise HAProxyError(f"haproxy runtime API at {self.socket_path}: {last}")

    def _once(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout_s)
            s.connect(str(self.socket_path))
            s.sendall(command.encode() + b"\n")
            chunks = []
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks).decode(errors="replace")

    def command(self, command: str, ok: tuple[str, ...] = ("",)) -> str:
        """A command whose answer must be one of ``ok`` (after stripping), else HAProxyError."""
        answer = self.raw(command).strip()
        if answer not in ok:
            raise HAProxyError(f"haproxy: {command!r} -> {answer.splitlines()[0] if answer else ''!r}")
        return answer

    def ping(self) -> bool:
        try:
            return "Name: HAProxy" in self._once("show info")
        except OSError:
            return False

    # ---- the verbs the backend uses

    def add_server(self, backend: str, server: str, addr: str, port: int, maxconn: int, weight: int = 100,
                   inter_ms: int = 500) -> None:
        self.command(
            f"add server {backend}/{server} {addr}:{port} check inter {inter_ms} fall 2 rise 1 "
            f"maxconn {maxconn} weight {weight}",
            ok=("New server registered.",),
        )
        self.command(f"enable health {backend}/{server}")
        self.command(f"set server {backend}/{server} state ready")

    def drain(self, backend: str, server: str) -> None:
        self.command(f"set server {backend}/{server} state drain")

    def remove_server(self, backend: str, server: str) -> None:
        """Maintenance, then delete; a server that is already gone counts as removed."""
        answer = self.raw(f"set server {backend}/{server} state maint").strip()
        if answer and "No such server" not in answer:
            raise HAProxyError(f"haproxy: maint {backend}/{server} -> {answer!r}")
        if "No such server" in answer:
            return
        self.raw(f"disable health {backend}/{server}")
        answer = self.raw(f"del server {backend}/{server}").strip()
        if answer not in ("Server deleted.",) and "No such server" not in answer:
            raise HAProxyError(f"haproxy: del server {backend}/{server} -> {answer!r}")

    def set_weight(self, backend: str, server: str, weight: int) -> None:
        self.command(f"set server {backend}/{server} weight {int(weight)}")

    def stats(self) -> list["ServerStat"]:
        return parse_show_stat(self.raw("show stat"))


@dataclass(frozen=True)
class ServerStat:
    """One row of ``show stat``: a frontend, a backend, or one server of a backend."""

    proxy: str
    name: str  # FRONTEND, BACKEND or the server name
    qcur: int
    scur: int
    stot: int
    req_tot: int
    hrsp_5xx: int
    status: str
    weight: int
    slim: int
    ttime_ms: int
    rtime_ms: int

    @property
    def kind(self) -> str:
        return self.name if self.name in ("FRONTEND", "BACKEND") else "server"


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


def parse_show_stat(text: str) -> list[ServerStat]:
    """Parse the CSV of ``show stat`` (its header starts with ``# ``)."""
    body = text.lstrip("# ")
    rows = []
    for row in csv.DictReader(io.StringIO(body)):
        if not row.get("pxname"):
            continue
        rows.append(
            ServerStat(
                proxy=row["pxname"],
                name=row["svname"],
                qcur=_int(row.get("qcur", "")),
                scur=_int(row.get("scur", "")),
                stot=_int(row.get("stot", "")),
                req_tot=_int(row.get("req_tot", "")),
                hrsp_5xx=_int(row.get("hrsp_5xx", "")),
                status=row.get("status", ""),
                weight=_int(row.get("weight", "")),
                slim=_int(row.get("slim", "")),
                ttime_ms=_int(row.get("ttime", "")),
                rtime_ms=_int(row.get("rtime", "")),
            )
        )
    return rows
