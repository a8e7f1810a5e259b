"""One worker of the local cluster: an HTTP service whose requests cost real CPU time.

Run as a script (``python worker.py --port 8101 ...``) by the local backend.
It imports only the standard library, so a cold start is the interpreter's
start-up plus ``--warmup-s`` (the stand-in for loading a model or warming a
cache), not the import time of rlscale.

Why a request is partly CPU and partly waiting: a 2-core machine cannot give
ten CPU-bound workers a core each. Each worker serves ``--concurrency``
requests at a time (HAProxy's ``maxconn`` holds the rest in one shared
queue), and a request occupies its slot for ``cpu_s`` of real CPU work
(a busy loop on the thread's CPU clock) plus ``wait_s`` of waiting (I/O,
a downstream call). A worker's capacity is then ``concurrency / (cpu_s +
wait_s)`` requests/s and it uses at most ``concurrency * cpu_s / (cpu_s +
wait_s)`` cores, so capacity grows linearly with workers while the CPU they
use stays well under the machine's cores (DESIGN.md section 9).

Why the slot is a fixed wall time: a pod with a guaranteed CPU share does
not slow down when its neighbours get busy, and a worker should not either,
or a loaded laptop measures one capacity in calibration and another an
hour later. A request therefore holds its slot until ``cpu_s + wait_s``
after it started: CPU time the host's other processes take from the burn
comes out of the waiting part. Only when the burn alone outlasts the slot
(the host gives this worker less than ``cpu_s / (cpu_s + wait_s)`` of a
core, an eighth with the defaults) does the request take longer; it is
counted in ``rlscale_worker_overruns_total``, so a measurement can tell a
slow worker from an oversubscribed host.

Endpoints:

* ``GET /work``: one request. HAProxy stamps ``X-Request-Start: <epoch µs>``
  when the request arrives, so the latency recorded here includes the time it
  queued in HAProxy, which is what a client sees.
* ``GET /healthz``: 200 once warm.
* ``GET /metrics``: Prometheus text format (see ``_metrics``), with the
  process collector's ``process_cpu_seconds_total`` (user + system CPU) and
  ``process_resident_memory_bytes`` (resident set), the usage ``rlscale plan``
  sizes a replica from.
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import math
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
           0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class Stats:
    """Counters for ``/metrics``; one lock, since requests run on many threads.

    A slot is busy from the moment its request could start (it reached the
    load balancer, or, when it queued there, the slot's previous answer was
    written) until its own answer is written. The load balancer's hand-off
    is therefore part of busy time, as it is part of what keeps a slot from
    serving: at saturation a worker is 100% busy, and requests per busy
    second is the capacity closed-loop clients measure, on a quiet host or
    a loaded one.
    """

    def __init__(self, buckets: tuple[float, ...], slots: int = 1) -> None:
        self.lock = threading.Lock()
        self.freed = [0.0] * slots
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.latency_sum = 0.0
        self.requests = 0
        self.busy_s = 0.0
        self.in_flight = 0
        self.overruns = 0

    def start(self) -> float:
        """Take a slot; returns when it was last freed (epoch s; 0 if never used, inf if none is free)."""
        with self.lock:
            self.in_flight += 1
            return heapq.heappop(self.freed) if self.freed else math.inf

    def finish(self, latency_s: float, busy_from: float, done: float, overran: bool = False) -> None:
        """Give the slot back at ``done`` (epoch s), having been busy since ``busy_from``.

        Called before the answer is written: once it is, the load balancer may
        hand this slot its next request, which must find the slot's free time.
        """
        with self.lock:
            heapq.heappush(self.freed, done)
            self.in_flight -= 1
            self.requests += 1
            self.overruns += int(overran)
            self.busy_s += max(0.0, done - busy_from)
            self.latency_sum += latency_s
            self.counts[bisect.bisect_left(self.buckets, latency_s)] += 1


def burn_cpu(seconds: float) -> None:
    """Spin until this thread has used ``seconds`` of CPU (not wall) time."""
    end = time.thread_time() + seconds
    x = 0
    while time.thread_time() < end:
        for _ in range(200):
            x += 1


def hold_until(due: float) -> bool:
    """Sleep until ``due`` (``time.monotonic``); True if it had already passed (the CPU part overran the slot)."""
    left = due - time.monotonic()
    if left > 0:
        time.sleep(left)
    return left <= 0


def make_handler(args: argparse.Namespace, stats: Stats, started: float) -> type[BaseHTTPRequestHandler]:
    labels = f'service="{args.service}",worker="{args.name}"'

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes: Nagle + delayed ACK would add 40 ms

        def log_message(self, format: str, *a: object) -> None:  # noqa: A002 - stdlib signature
            return

        def _reply(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            path = self.path.split("?", 1)[0]
            if path == "/work":
                self._work()
            elif path == "/healthz":
                self._reply(200, b"ok\n")
            elif path == "/metrics":
                self._reply(200, _metrics(stats, labels, started).encode(), "text/plain; version=0.0.4")
            else:
                self._reply(404, b"not found\n")

        def _work(self) -> None:
            begin = time.time()
            due = time.monotonic() + args.cpu_s + args.wait_s
            stamp = self.headers.get("X-Request-Start", "")
            arrived = min(int(stamp) / 1e6 if stamp.isdigit() else begin, begin)
            freed = stats.start()
            burn_cpu(args.cpu_s)
            late = hold_until(due)
            end = time.time()
            stats.finish(end - arrived, min(begin, max(arrived, freed)), end, late)
            self._reply(200, b"done\n")

    return Handler


def _metrics(stats: Stats, labels: str, started: float) -> str:
    """Prometheus text exposition, written by hand to keep the worker import-free."""
    with stats.lock:
        counts = list(stats.counts)
        total, lat_sum, busy, in_flight, overruns = (stats.requests, stats.latency_sum, stats.busy_s, stats.in_flight,
                                                     stats.overruns)
    cpu = time.process_time()
    lines = [
        "# TYPE rlscale_worker_request_duration_seconds histogram",
    ]
    cum = 0
    for le, count in zip(stats.buckets, counts):
        cum += count
        lines.append(f'rlscale_worker_request_duration_seconds_bucket{{{labels},le="{le}"}} {cum}')
    lines.append(f'rlscale_worker_request_duration_seconds_bucket{{{labels},le="+Inf"}} {total}')
    lines.append(f"rlscale_worker_request_duration_seconds_sum{{{labels}}} {lat_sum}")
    lines.append(f"rlscale_worker_request_duration_seconds_count{{{labels}}} {total}")
    lines += [
        "# TYPE rlscale_worker_requests_total counter",
        f"rlscale_worker_requests_total{{{labels}}} {total}",
        "# TYPE rlscale_worker_busy_seconds_total counter",
        f"rlscale_worker_busy_seconds_total{{{labels}}} {busy}",
        "# TYPE rlscale_worker_overruns_total counter",
        f"rlscale_worker_overruns_total{{{labels}}} {overruns}",
        "# TYPE rlscale_worker_cpu_seconds_total counter",
        f"rlscale_worker_cpu_seconds_total{{{labels}}} {cpu}",
        "# TYPE rlscale_worker_in_flight gauge",
        f"rlscale_worker_in_flight{{{labels}}} {in_flight}",
        "# TYPE rlscale_worker_start_time_seconds gauge",
        f"rlscale_worker_start_time_seconds{{{labels}}} {started}",
        # the process collector's names (prometheus_client, node and cAdvisor alike): what `rlscale plan` sizes from
        "# TYPE process_cpu_seconds_total counter",
        f"process_cpu_seconds_total{{{labels}}} {cpu}",
    ]
    rss = resident_bytes()
    if rss is not None:
        lines += ["# TYPE process_resident_memory_bytes gauge", f"process_resident_memory_bytes{{{labels}}} {rss}"]
    return "\n".join(lines) + "\n"


def resident_bytes() -> int | None:
    """This process's resident set now (Linux ``/proc/self/statm``; None where there is no /proc)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="rlscale local-cluster worker")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--service", default="api")
    p.add_argument("--name", default="w0")
    p.add_argument("--cpu-s", type=float, default=0.005, help="real CPU seconds per request")
    p.add_argument("--wait-s", type=float, default=0.035, help="non-CPU seconds per request")
    p.add_argument("--warmup-s", type=float, default=0.0, help="delay before listening (cold start)")
    p.add_argument("--concurrency", type=int, default=1, help="slots (HAProxy's maxconn for this worker)")
    p.add_argument("--tag", default="", help="ignored; names the cluster in `ps` (its run directory)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    started = time.time()
    if args.warmup_s > 0:
        time.sleep(args.warmup_s)
    stats = Stats(BUCKETS, args.concurrency)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(args, stats, started))
    server.daemon_threads = True
    server.serve_forever(poll_interval=0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
