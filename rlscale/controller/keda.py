"""KEDA's external-scaler gRPC service over the control loop's decisions (``rlscale serve --keda-grpc HOST:PORT``).

A ``ScaledObject`` with an ``external`` trigger pointing here gets the
policy's desired replicas exactly: ``GetMetricSpec`` says the target is 1 per
replica (``targetSizeFloat = 1``) and ``GetMetrics`` returns the desired count
(``metricValueFloat = desired``), so the HPA KEDA creates computes
``ceil(desired / 1) = desired`` (with ``tolerance: 0`` in the ScaledObject's
HPA behaviour, which a default 10% band would otherwise swallow).

This is a thin face over a cache, as in KEDA's HTTP add-on: the control loop
publishes each decision to a ``DecisionBoard`` and the handlers only read it;
there is no decision logic here and a handler never waits for the loop. A
ScaledObject names its service in ``scalerMetadata.service`` (default: the
ScaledObject's own name); an unknown service is ``NOT_FOUND``. Before the
first decision, or when the loop has not decided for ``max_age_s``, the
answer is ``UNAVAILABLE``, so KEDA's ``fallback`` replicas apply; the guard
rails behind the decisions never rely on that fallback.

The server is grpc.aio on its own thread and event loop (streams for
``StreamIsActive`` cost no thread each). The generated modules in
``externalscaler/`` are committed (``externalscaler.proto`` says how to
regenerate them); they need ``grpcio`` and ``protobuf`` (``rlscale[keda]``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlscale.config import ConfigError

METRIC_NAME = "rlscale-desired-replicas"


@dataclass(frozen=True)
class Snapshot:
    """One decision as the gRPC face sees it: desired replicas per service, and when it was published."""

    replicas: dict[str, int]
    published: float
    seq: int


class DecisionBoard:
    """The last decided replicas per service; written by the control loop, read by any thread (one reference swap)."""

    def __init__(self, services: tuple[str, ...] | list[str]) -> None:
        self.services = tuple(services)
        self._snapshot: Snapshot | None = None
        self._seq = 0

    def publish(self, decision: Any) -> None:
        """Take a ``Decision``'s final replicas (a decision without any, e.g. nothing known yet, changes nothing)."""
        replicas = getattr(decision, "replicas", None)
        if replicas is None:
            return
        self.set(dict(zip(decision.services, (int(r) for r in replicas))))

    def set(self, replicas: dict[str, int]) -> None:
        self._seq += 1
        self._snapshot = Snapshot(dict(replicas), time.monotonic(), self._seq)

    def snapshot(self) -> Snapshot | None:
        return self._snapshot


def _messages() -> tuple[Any, Any]:
    try:
        from rlscale.controller.externalscaler import externalscaler_pb2 as pb
        from rlscale.controller.externalscaler import externalscaler_pb2_grpc as pb_grpc
    except ImportError as err:
        raise ConfigError(f"--keda-grpc needs grpcio and protobuf: pip install 'rlscale[keda]' ({err})") from None
    except RuntimeError as err:  # the generated code's own version check
        raise ConfigError(f"--keda-grpc: {' '.join(str(err).split())[:200]}") from None
    return pb, pb_grpc


def make_servicer(board: DecisionBoard, max_age_s: float, push_interval_s: float = 5.0) -> Any:
    """The ``ExternalScaler`` servicer (grpc.aio) reading ``board``."""
    import grpc

    pb, pb_grpc = _messages()

    class ExternalScaler(pb_grpc.ExternalScalerServicer):  # type: ignore[misc,name-defined]
        async def _desired(self, ref: Any, context: Any) -> int:
            service = ref.scalerMetadata.get("service") or ref.name
            if service not in board.services:
                await context.abort(grpc.StatusCode.NOT_FOUND,
                                    f"service {service!r} (scalerMetadata.service, default the ScaledObject's name) "
                                    f"is not one of {list(board.services)}")
            snap = board.snapshot()
            if snap is None:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "no decision yet: the control loop has not decided; KEDA's fallback applies")
            age = time.monotonic() - snap.published
            if age > max_age_s:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"the last decision is {age:.0f} s old (limit {max_age_s:.0f} s)")
            return snap.replicas[service]

        async def IsActive(self, request: Any, context: Any) -> Any:  # noqa: N802 - the RPC's name
            return pb.IsActiveResponse(result=await self._desired(request, context) > 0)

        async def StreamIsActive(self, request: Any, context: Any) -> Any:  # noqa: N802
            last: bool | None = None
            sent_at = 0.0
            while True:
                active = await self._desired(request, context) > 0
                now = time.monotonic()
                if active != last or now - sent_at >= push_interval_s:
                    yield pb.IsActiveResponse(result=active)
                    last, sent_at = active, now
                await asyncio.sleep(min(0.5, push_interval_s))

        async def GetMetricSpec(self, request: Any, context: Any) -> Any:  # noqa: N802
            await self._desired(request, context)
            return pb.GetMetricSpecResponse(metricSpecs=[pb.MetricSpec(metricName=METRIC_NAME, targetSize=1, targetSizeFloat=1.0)])

        async def GetMetrics(self, request: Any, context: Any) -> Any:  # noqa: N802
            desired = await self._desired(request.scaledObjectRef, context)
            name = request.metricName or METRIC_NAME
            return pb.GetMetricsResponse(metricValues=[pb.MetricValue(metricName=name, metricValue=desired, metricValueFloat=float(desired))])

    return ExternalScaler()


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[v6]:PORT`` -> (host, port); ConfigError naming the flag otherwise."""
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--keda-grpc {address}: expected HOST:PORT, e.g. 127.0.0.1:9090")
    return host, int(port)


def _credentials(tls_dir: str | None) -> Any:
    """mTLS from a folder laid out like a kubernetes.io/tls Secret plus the CA: tls.crt, tls.key, ca.crt."""
    if tls_dir is None:
        return None
    import grpc

    folder = Path(tls_dir)
    files = {}
    for name in ("tls.crt", "tls.key", "ca.crt"):
        try:
            files[name] = (folder / name).read_bytes()
        except OSError as err:
            raise ConfigError(f"--keda-tls {tls_dir}: cannot read {name} ({err.strerror})") from None
    return grpc.ssl_server_credentials([(files["tls.key"], files["tls.crt"])], root_certificates=files["ca.crt"],
                                       require_client_auth=True)


class KedaServer:
    """The gRPC server on its own thread; ``start`` returns once it listens (``port`` is then the bound port)."""

    def __init__(self, board: DecisionBoard, address: str, *, max_age_s: float, tls_dir: str | None = None,
                 push_interval_s: float = 5.0) -> None:
        self.host, requested = parse_address(address)
        from rlscale.controller.limits import is_loopback

        if not is_loopback(self.host) and tls_dir is None:
            raise ConfigError(f"--keda-grpc {address}: a non-loopback address needs --keda-tls DIR (tls.crt, tls.key, ca.crt: KEDA's mTLS)")
        self.board = board
        self.requested_port = requested
        self.max_age_s = float(max_age_s)
        self.push_interval_s = float(push_interval_s)
        self.credentials = _credentials(tls_dir)
        _messages()
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="rlscale-keda-grpc", daemon=True)

    def start(self, timeout_s: float = 10.0) -> "KedaServer":
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise ConfigError(f"--keda-grpc {self.host}:{self.requested_port}: the gRPC server did not start")
        if self._error is not None:
            raise ConfigError(f"--keda-grpc {self.host}:{self.requested_port}: cannot listen ({self._error})")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(timeout=10)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        import grpc

        _, pb_grpc = _messages()
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        pb_grpc.add_ExternalScalerServicer_to_server(make_servicer(self.board, self.max_age_s, self.push_interval_s), server)
        target = f"[{self.host}]:{self.requested_port}" if ":" in self.host else f"{self.host}:{self.requested_port}"
        try:
            if self.credentials is None:
                self.port = server.add_insecure_port(target)
            else:
                self.port = server.add_secure_port(target, self.credentials)
            if not self.port:
                raise OSError(f"cannot bind {target}")
            await server.start()
        except Exception as err:  # noqa: BLE001 - handed to start()
            self._error = err
            self._ready.set()
            return
        self._ready.set()
        await self._stopping.wait()
        await server.stop(grace=1.0)
