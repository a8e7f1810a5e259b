"""Replay an arrival-rate trace as open-loop HTTP requests, in compressed time.

``plan`` turns a trace (a scenario's first workload, generated as the
simulator would, or a ``timestamp,value`` CSV) into per-interval rates;
``--speedup N`` plays each trace interval in ``step/N`` real seconds, so a
day's shape plays in minutes while the rates stay real requests/s.
``schedule`` draws the send times: a Poisson process within each interval.
``replay`` sends them (asyncio + aiohttp) without waiting for answers, which
is what "open loop" means: a slow cluster does not slow the arrivals, so
queueing shows up as latency instead of as fewer requests. Latency is
measured from each request's *scheduled* time, so a late client does not
hide latency (no coordinated omission).

Everything is bounded: ``duration_s`` of real time, ``max_requests``, a
per-request timeout and ``max_in_flight`` (requests beyond it are not sent
and count as failed with status ``-1``). Loopback targets only.
"""

from __future__ import annotations

import asyncio
import math
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlscale.atomic import check_output_file, finite, write_output_json
from rlscale.config import ConfigError, load_scenario
from rlscale.workload import generate, load_csv

STATUS_OVERLOAD, STATUS_TIMEOUT, STATUS_ERROR = -1, -2, -3
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
OUT_FORMAT = "rlscale-loadgen/1"


@dataclass(frozen=True)
class Plan:
    """Rates (requests/s, real) for consecutive intervals of ``interval_s`` real seconds."""

    rates: np.ndarray
    interval_s: float
    source: str
    trace_step_s: float
    speedup: float
    duration_s: float


def plan(
    trace: str,
    speedup: float,
    duration_s: float,
    peak_rps: float | None = None,
    seed: int = 0,
    start_s: float = 0.0,
) -> Plan:
    """The trace's rates for ``duration_s`` real seconds; ``trace`` is a scenario name/YAML or a CSV path.

    A scenario's trace is its first service's workload, generated as the
    simulator would (seeded by ``seed``); ``start_s`` is the trace time to
    start at (seconds since Monday 00:00 for generated traces). ``peak_rps``
    scales the replayed part so that its highest rate is exactly that: a hard
    bound the machine can be sized for, flash crowds included.
    """
    if not speedup > 0:
        raise ConfigError(f"--speedup {speedup}: expected a factor > 0")
    if not duration_s > 0:
        raise ConfigError(f"--duration {duration_s}: expected seconds > 0")
    if peak_rps is not None and not peak_rps > 0:
        raise ConfigError(f"--peak-rps {peak_rps}: expected requests/s > 0")
    if trace.endswith(".csv"):
        ts, values = load_csv(trace)
        step = float(ts[1] - ts[0])
        n = max(1, math.ceil(duration_s * speedup / step))
        rates = np.asarray(values, dtype=np.float64)[(int(start_s // step) + np.arange(n)) % values.size]
    else:
        sc = load_scenario(trace)
        step = float(sc.step_s)
        n = max(1, math.ceil(duration_s * speedup / step))
        rates = generate(sc.services[0].workload, n, step, np.random.default_rng(seed), start_s=start_s)
    if peak_rps is not None:
        top = float(rates.max())
        if not top > 0:
            raise ConfigError(f"{trace}: the replayed part of the trace has no traffic to scale to --peak-rps")
        rates = rates * (peak_rps / top)
    return Plan(rates=rates, interval_s=step / speedup, source=trace, trace_step_s=step, speedup=float(speedup),
                duration_s=min(float(duration_s), n * step / speedup))


def schedule(p: Plan, rng: np.random.Generator, max_requests: int) -> np.ndarray:
    """Send times (real seconds from the start): a Poisson process at each interval's rate, capped at ``max_requests``."""
    counts = rng.poisson(np.maximum(p.rates, 0.0) * p.interval_s)
    starts = np.repeat(np.arange(p.rates.size) * p.interval_s, counts)
    times = np.sort(starts + rng.uniform(0.0, p.interval_s, size=starts.size))
    return times[times < p.duration_s][:max_requests]


@dataclass
class LoadResult:
    """What happened to every request, and the per-interval view the benchmarks use."""

    plan: Plan
    target: str
    send_s: np.ndarray
    latency_s: np.ndarray
    status: np.ndarray
    wall_s: float
    late_p99_s: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> np.ndarray:
        return (self.status >= 200) & (self.status < 400)

    def summary(self) -> dict[str, Any]:
        ok = self.ok
        lat = self.latency_s[ok]
        q = (lambda x: float(np.quantile(lat, x))) if lat.size else (lambda x: math.nan)
        return {
            "requests": int(self.status.size),
            "ok": int(ok.sum()),
            "failed": int((~ok).sum()),
            "failed_fraction": float((~ok).mean()) if self.status.size else 0.0,
            "client_overload": int((self.status == STATUS_OVERLOAD).sum()),
            "timeouts": int((self.status == STATUS_TIMEOUT).sum()),
            "latency_p50_s": q(0.5),
            "latency_p95_s": q(0.95),
            "latency_p99_s": q(0.99),
            "latency_mean_s": float(lat.mean()) if lat.size else math.nan,
            "wall_s": self.wall_s,
            "send_lateness_p99_s": self.late_p99_s,
        }

    def intervals(self, interval_s: float | None = None) -> dict[str, list[float]]:
        """Per-interval sent/ok/failed counts, achieved rate and p95 latency (NaN when nothing succeeded)."""
        width = interval_s or self.plan.interval_s
        n = max(1, math.ceil(self.plan.duration_s / width - 1e-9))
        idx = np.minimum((self.send_s // width).astype(np.int64), n - 1)
        ok = self.ok
        p95 = []
        for k in range(n):
            sel = (idx == k) & ok
            p95.append(float(np.quantile(self.latency_s[sel], 0.95)) if sel.any() else math.nan)
        sent = np.bincount(idx, minlength=n)
        return {
            "t_s": [float(k * width) for k in range(n)],
            "planned_rps": [float(r) for r in _planned(self.plan, width, n)],
            "sent": sent.tolist(),
            "ok": np.bincount(idx[ok], minlength=n).tolist(),
            "failed": np.bincount(idx[~ok], minlength=n).tolist(),
            "rps": (sent / width).tolist(),
            "latency_p95_s": p95,
        }

    def slo_violation_rate(self, slo_s: float, interval_s: float | None = None) -> float:
        """Share of intervals with traffic whose p95 exceeds ``slo_s`` (failures count as violations)."""
        iv = self.intervals(interval_s)
        flags = [
            (failed > 0.01 * sent) or (p95 > slo_s)
            for sent, failed, p95 in zip(iv["sent"], iv["failed"], iv["latency_p95_s"])
            if sent > 0
        ]
        return float(np.mean(flags)) if flags else 0.0

    def to_dict(self, raw: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": self.target,
            "trace": self.plan.source,
            "speedup": self.plan.speedup,
            "trace_step_s": self.plan.trace_step_s,
            "interval_s": self.plan.interval_s,
            "duration_s": self.plan.duration_s,
            **self.meta,
            "summary": self.summary(),
            "intervals": self.intervals(),
        }
        if raw:
            out["per_request"] = {
                "send_s": np.round(self.send_s, 4).tolist(),
                "latency_s": np.round(self.latency_s, 5).tolist(),
                "status": self.status.tolist(),
            }
        return finite(out)


def _planned(p: Plan, width: float, n: int) -> np.ndarray:
    centres = (np.arange(n) + 0.5) * width
    return p.rates[np.minimum((centres // p.interval_s).astype(np.int64), p.rates.size - 1)]


def resolve_target(target: str, wait_s: float = 60.0, say: Callable[[str], None] | None = None,
                   every_s: float = 10.0) -> str:
    """``target`` as a URL: itself, or the first service's URL of the local cluster whose run directory it names.

    ``rlscale serve --cluster local --run-dir DIR`` (or ``rlscale cluster up``)
    writes ``DIR/cluster.json`` once the cluster is up, so ``--target DIR``
    needs no copying of a printed port, and may be started right after
    ``serve ... &``: it waits up to ``wait_s`` for the file, saying what it
    waits for through ``say`` at once and every ``every_s``, since a
    mistyped directory otherwise looks like a cluster that is slow to start.
    """
    if "://" in target:
        return target
    import json
    from pathlib import Path

    path = Path(target) / "cluster.json"
    start = time.monotonic()
    told = -math.inf
    while True:
        try:
            services = json.loads(path.read_text())["services"]
            return str(next(iter(services.values())))
        except (OSError, ValueError, KeyError, StopIteration):
            waited = time.monotonic() - start
            if waited >= wait_s:
                raise ConfigError(f"--target {target}: no local cluster there ({path} did not appear within "
                                  f"{wait_s:g} s); expected a URL or the --run-dir of `rlscale serve --cluster local` "
                                  "or `rlscale cluster up`") from None
            if say is not None and waited - told >= every_s:
                where = "" if Path(target).is_dir() else f" ({target} does not exist yet)"
                say(f"still waiting for {path}{where}: {waited:.0f} of {wait_s:g} s" if told >= 0 else
                    f"waiting up to {wait_s:g} s for {path}{where}, which `rlscale serve --cluster local --run-dir "
                    f"{target}` or `rlscale cluster up --run-dir {target}` writes once the cluster is up")
                told = waited
            time.sleep(0.25)


def check_target(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in LOOPBACK:
        raise ConfigError(f"--target {url!r}: expected an http:// URL on loopback (127.0.0.1 or localhost)")
    return url


def replay(
    p: Plan,
    target: str,
    seed: int = 0,
    max_requests: int = 200_000,
    timeout_s: float = 10.0,
    max_in_flight: int = 1000,
    say: Callable[[str], None] | None = None,
    every_s: float = 10.0,
) -> LoadResult:
    """Send the plan's requests to ``target`` in real time and wait for the last answer (or timeout).

    With ``say``, a line every ``every_s`` of the run: time, requests sent,
    answered and failed so far, and the p95 of the last ``every_s``.
    """
    check_target(target)
    planned = schedule(p, np.random.default_rng(seed + 1), 2**62)
    send = planned[:max_requests]
    latency = np.full(send.size, math.nan)
    status = np.zeros(send.size, dtype=np.int64)
    ticker = None if say is None else (say, every_s, p.duration_s)
    wall, late = asyncio.run(_run(send, target, latency, status, timeout_s, max_in_flight, ticker))
    meta: dict[str, Any] = {}
    if planned.size > send.size:
        # the cap ended the replay early: say so, or a short run looks like the whole asked duration
        meta["capped"] = {"max_requests": int(max_requests), "planned_requests": int(planned.size),
                          "stopped_at_s": float(send[-1]) if send.size else 0.0, "duration_s": float(p.duration_s)}
    return LoadResult(p, target, send, latency, status, wall, late, meta)


def progress_line(send: np.ndarray, latency: np.ndarray, status: np.ndarray, now_s: float, window_s: float,
                  duration_s: float) -> str:
    """One line of a run in progress: what was sent and answered so far, and the last window's p95 latency."""
    sent = int(np.searchsorted(send, now_s, side="right"))
    done = status[:sent] != 0
    ok = done & (status[:sent] >= 200) & (status[:sent] < 400)
    recent = ok & (send[:sent] >= now_s - window_s)
    p95 = f"p95 {np.quantile(latency[:sent][recent], 0.95) * 1000:.0f} ms" if recent.any() else "no answer"
    return (f"{now_s:.0f} of {duration_s:.0f} s: {sent} sent, {int(ok.sum())} ok, {int((done & ~ok).sum())} failed; "
            f"{p95} in the last {window_s:.0f} s")


async def _run(send: np.ndarray, target: str, latency: np.ndarray, status: np.ndarray,
               timeout_s: float, max_in_flight: int,
               ticker: tuple[Callable[[str], None], float, float] | None = None) -> tuple[float, float]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0, force_close=False, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    in_flight = 0
    lateness = np.zeros(send.size)
    loop = asyncio.get_running_loop()

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(i: int, t0: float) -> None:
            nonlocal in_flight
            in_flight += 1
            try:
                async with session.get(target) as resp:
                    await resp.read()
                    status[i] = resp.status
            except asyncio.TimeoutError:
                status[i] = STATUS_TIMEOUT
            except (aiohttp.ClientError, OSError):
                status[i] = STATUS_ERROR
            finally:
                in_flight -= 1
                latency[i] = loop.time() - t0

        tasks = set()
        start = loop.time()

        async def tick() -> None:
            assert ticker is not None
            say, every_s, duration_s = ticker
            while True:
                await asyncio.sleep(every_s)
                say(progress_line(send, latency, status, loop.time() - start, every_s, duration_s))

        beat = asyncio.create_task(tick()) if ticker is not None else None
        for i, at in enumerate(send):
            delay = start + at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            lateness[i] = max(0.0, loop.time() - start - at)
            if in_flight >= max_in_flight:
                status[i] = STATUS_OVERLOAD
                continue
            task = asyncio.create_task(one(i, start + at))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(list(tasks), timeout=timeout_s + 1.0)
        wall = loop.time() - start
        if beat is not None:
            beat.cancel()
    return wall, float(np.quantile(lateness, 0.99)) if send.size else 0.0


def run(
    trace: str,
    target: str,
    speedup: float,
    duration_s: float,
    peak_rps: float | None = None,
    seed: int = 0,
    start_s: float = 0.0,
    max_requests: int = 200_000,
    timeout_s: float = 10.0,
    out: str | None = None,
    force: bool = False,
    wait_s: float = 60.0,
    say: Callable[[str], None] | None = None,
    every_s: float = 10.0,
) -> LoadResult:
    """The ``rlscale loadgen`` command as a function: plan, replay, optionally write JSON (``--out``, checked first).

    ``say`` hears what it waits for (``resolve_target``) and a line every ``every_s`` of the run (``replay``).
    """
    if out:
        check_output_file(out, "--out", ours=OUT_FORMAT, force=force)
    p = plan(trace, speedup, duration_s, peak_rps, seed, start_s)
    target = check_target(resolve_target(target, wait_s, say, every_s))
    if say is not None:
        say(f"replaying {p.source} at {p.speedup:g}x for {p.duration_s:.0f} s against {target}")
    result = replay(p, target, seed=seed, max_requests=max_requests, timeout_s=timeout_s, say=say, every_s=every_s)
    result.meta["started_at_unix"] = time.time() - result.wall_s
    if out:
        write_output_json(out, result.to_dict(), "--out", fmt=OUT_FORMAT, force=force)
    return result


def closed_loop(target: str, clients: int, duration_s: float, timeout_s: float = 10.0) -> tuple[int, int, float]:
    """``clients`` concurrent clients each sending back-to-back for ``duration_s``: (ok, failed, wall_s).

    This saturates the target (used to measure capacity); ``replay`` is the open-loop load.
    """
    check_target(target)
    return asyncio.run(_closed(target, clients, duration_s, timeout_s))


async def _closed(target: str, clients: int, duration_s: float, timeout_s: float) -> tuple[int, int, float]:
    import aiohttp

    counts = [0, 0]
    loop = asyncio.get_running_loop()
    end = loop.time() + duration_s
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:

        async def client() -> None:
            while loop.time() < end:
                try:
                    async with session.get(target) as resp:
                        await resp.read()
                        counts[0 if resp.status < 400 else 1] += 1
                except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                    counts[1] += 1

        start = loop.time()
        await asyncio.gather(*(client() for _ in range(clients)))
        return counts[0], counts[1], loop.time() - start
