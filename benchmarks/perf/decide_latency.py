"""Controller decision latency and HTTP ``/v1/decide`` throughput, each as a ratio to an anchor measured alongside.

1. In-process: metrics -> action through the observation builder, the policy
   and the guard rails (``Decider.decide``), over the metrics of a simulated
   day replayed in order, like the control loop. Anchor: SB3 ``PPO.predict``
   (after VecNormalize's arithmetic) on the same weights and the same
   observations, timed alternately with each decision so both see the same
   machine. Target: decision p99 <= 0.2 x SB3 predict's p99.
2. HTTP: ``rlscale serve --cluster none`` in its own process on 127.0.0.1,
   a bounded load (``--requests``, default 5,000) from ``--clients``
   keep-alive connections (default 4). Anchor: a FastAPI endpoint returning a
   constant under the same uvicorn (``anchors.BARE_SERVER``), loaded the same
   way; both servers run side by side and are loaded in alternating slices of
   a few hundred requests, so both see the same moment of the machine. The
   client writes pre-built HTTP/1.1 requests on raw sockets so that its own
   cost stays small next to the server's on a 2-core machine. Target: >= 0.6 x
   the bare endpoint's throughput. Every decide request is validated, decided
   and written to the audit log.

Usage: ``python benchmarks/perf/decide_latency.py [--model models/NAME] [--rounds 3] [--append docs/BENCHMARKS.md]``.
Without ``--model`` the shipped ``models/web-diurnal`` is used, or, where it
is absent, a random-weight policy in the export format (the same 2 x 64 tanh
network, so the same cost).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the project root: benchmarks.* and rlscale

sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.perf.batched_decide import TARGET_RATIO as BATCH_TARGET  # noqa: E402
from benchmarks.perf.batched_decide import measure as batched_measure  # noqa: E402
from benchmarks.perf.machine import cpu_model  # noqa: E402

BODY = {
    "services": ["api"], "time_s": 50_400.0, "arrivals_rps": [820.0], "ready": [14], "desired": [14], "utilisation": [0.72],
    "latency_p95_s": [0.11], "backlog": [0.0], "dropped": [0.0], "nodes_ready": [4], "nodes_provisioning": [0],
    "packing": [0.87], "cost_rate_usd_h": 0.768, "hot_spot": 0.05, "rebalancing": 0,
}


def policy_dir(model: str | None, tmp: Path) -> str:
    """The policy to measure: ``--model``, else the shipped ``models/web-diurnal``, else random weights of the same shape."""
    if model:
        return model
    shipped = ROOT / "models" / "web-diurnal"
    if (shipped / "policy.npz").is_file():
        return str(shipped)
    from helpers import export_random_policy

    return str(export_random_policy(tmp / "random-policy", "web-diurnal"))


def in_process(model: str, passes: int) -> dict[str, float]:
    """Decision latency over a replayed simulated day, and SB3 predict's on the same observations, alternately."""
    import torch

    from benchmarks.perf.anchors import sb3_predictor
    from rlscale.clusters.simulated import SimulatedCluster
    from rlscale.config import load_scenario
    from rlscale.controller import Decider, GuardConfig, GuardState
    from rlscale.controller.guards import record_applied
    from rlscale.policies.ppo import PPOPolicy
    from rlscale.policies.network import load_exported

    torch.set_num_threads(1)  # as in training; serving itself never imports torch
    scenario = load_scenario("web-diurnal")
    cluster = SimulatedCluster(scenario, seed=0)
    samples = []
    while not cluster.done:
        samples.append(cluster.read_metrics())
        cluster.hold()
    exported = load_exported(model)
    builder = PPOPolicy(exported).builder
    observations = [builder.build(sample.metrics)[0] for sample in samples]
    sb3 = sb3_predictor(exported.weights, exported.action_spec.nvec)
    decider = Decider(scenario, PPOPolicy(exported), GuardConfig.from_scenario(scenario))
    latencies, cpu, anchor = [], [], []
    for _ in range(passes):
        decider.policy.reset(1)
        state = GuardState()
        for sample, obs in zip(samples, observations):
            c0, t0 = time.thread_time(), time.perf_counter()
            decision = decider.decide(sample.metrics, 0.0, sample.observed_at, state)
            latencies.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
            state = record_applied(state, sample.observed_at, decision.current, decision.replicas)
            t0 = time.perf_counter()
            sb3(obs)
            anchor.append(time.perf_counter() - t0)
    skip = len(samples) // 10
    us, cpu_us, sb3_us = (np.array(x[skip:]) * 1e6 for x in (latencies, cpu, anchor))
    return {"decisions": float(us.size), "p50_us": float(np.percentile(us, 50)), "p99_us": float(np.percentile(us, 99)),
            "p999_us": float(np.percentile(us, 99.9)), "mean_us": float(us.mean()),
            "cpu_p50_us": float(np.percentile(cpu_us, 50)), "cpu_p99_us": float(np.percentile(cpu_us, 99)),
            "sb3_p50_us": float(np.percentile(sb3_us, 50)), "sb3_p99_us": float(np.percentile(sb3_us, 99)),
            "p99_vs_sb3": float(np.percentile(us, 99) / np.percentile(sb3_us, 99))}


async def _client(host: str, port: int, request: bytes, count: int, latencies: list[float], statuses: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            status = int(status_line.split()[1])
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def _load(host: str, port: int, requests: int, clients: int) -> tuple[float, list[float], dict[int, int]]:
    body = json.dumps(BODY).encode()
    request = (
        f"POST /v1/decide HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    per = [requests // clients + (1 if i < requests % clients else 0) for i in range(clients)]
    t0 = time.perf_counter()
    await asyncio.gather(*[_client(host, port, request, n, latencies, statuses) for n in per])
    return time.perf_counter() - t0, latencies, statuses


def _start(cmd: list[str]) -> tuple[subprocess.Popen, str, int]:
    """Start a server process that prints its URL on its first line."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    match = re.search(r"http://([\d.]+):(\d+)", line)
    if not match:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r} {proc.stderr.read()}")
    return proc, match.group(1), int(match.group(2))


def _summary(slices: list[tuple[float, list[float], dict[int, int], float]], clients: int) -> dict[str, float]:
    elapsed = sum(s[0] for s in slices)
    latencies = [x for s in slices for x in s[1]]
    ms = np.array(latencies) * 1e3
    non_200 = sum(v for s in slices for k, v in s[2].items() if k != 200)
    cpu = sum(s[3] for s in slices)
    return {"requests": float(len(latencies)), "clients": float(clients), "seconds": elapsed, "rps": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "non_200": float(non_200),
            "server_cpu_us_per_request": cpu / max(len(latencies), 1) * 1e6}


def http(model: str, requests: int, clients: int, tmp: Path, rounds: int, slices: int = 10) -> dict[str, object]:
    """``rounds`` rounds, each ``requests`` per side in ``slices`` alternating slices (decide, bare, decide, ...).

    Both servers run the whole time (the idle one costs nothing); alternating every few hundred requests puts
    both sides in the same second of the machine, whose speed on a shared host moved by half between one
    second and the next (whole-round alternation gave ratios from 0.46 to 0.81 for the same code).
    """
    from benchmarks.perf.anchors import BARE_SERVER

    serve = [sys.executable, "-m", "rlscale.cli", "serve", "--cluster", "none", "--model", model, "--port", "0",
             "--audit-log", str(tmp / "audit.jsonl")]
    bare = [sys.executable, "-c", BARE_SERVER]
    servers = {}
    try:
        for name, cmd in (("decide", serve), ("bare", bare)):
            servers[name] = _start(cmd)
            asyncio.run(_load(*servers[name][1:], 200, clients))  # warm-up
        per_slice = max(requests // slices, clients)
        runs = []
        for _ in range(rounds):
            load = os.getloadavg()[0]
            taken: dict[str, list] = {"decide": [], "bare": []}
            for _ in range(slices):
                for name in ("decide", "bare"):
                    proc, host, port = servers[name]
                    cpu0 = _cpu_seconds(proc.pid)
                    elapsed, latencies, statuses = asyncio.run(_load(host, port, per_slice, clients))
                    taken[name].append((elapsed, latencies, statuses, _cpu_seconds(proc.pid) - cpu0))
            decide, anchor = _summary(taken["decide"], clients), _summary(taken["bare"], clients)
            runs.append({"load_avg_1min": load, "decide": decide, "bare": anchor, "ratio": decide["rps"] / anchor["rps"]})
    finally:
        for proc, _, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=30)
    best = max(runs, key=lambda r: r["decide"]["rps"])
    best_bare = max(r["bare"]["rps"] for r in runs)
    return {"rounds": runs, "decide": best["decide"], "bare_rps": best_bare,
            "ratio_of_bests": best["decide"]["rps"] / best_bare,
            "ratio_median": float(np.median([r["ratio"] for r in runs]))}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux), so the server's own cost shows apart from the machine's load."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def machine() -> str:
    cpu = cpu_model()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def markdown(local: dict[str, float], remote: dict[str, object], where: str, loads: str, command: str) -> str:
    decide = remote["decide"]
    lat_ok = "met" if local["p99_vs_sb3"] <= 0.2 else "MISSED"
    rps_ok = "met" if remote["ratio_median"] >= 0.6 else "MISSED"
    rounds = ", ".join(f"{r['ratio']:.2f}" for r in remote["rounds"])
    return (
        "\n## Controller decision latency\n\n"
        f"Machine: {where}; 1-min load average {loads}. Command: `{command}`.\n\n"
        "| measure | ratio to its anchor | target | ours | anchor |\n|---|---:|---|---:|---:|\n"
        f"| in-process decision p99 (builder + PPO 2x64 + guard rails) vs SB3 `predict` p99 (same weights, same observations) "
        f"| {local['p99_vs_sb3']:.2f} | <= 0.2 ({lat_ok}) | {local['p99_us']:.0f} us | {local['sb3_p99_us']:.0f} us |\n"
        f"| in-process p50 | {local['p50_us'] / local['sb3_p50_us']:.2f} | | {local['p50_us']:.0f} us | {local['sb3_p50_us']:.0f} us |\n"
        f"| HTTP `/v1/decide` throughput vs a bare FastAPI endpoint returning a constant ({decide['requests']:.0f} requests, "
        f"{decide['clients']:.0f} keep-alive clients; median of rounds {rounds}) "
        f"| {remote['ratio_median']:.2f} | >= 0.6 ({rps_ok}) | {decide['rps']:.0f} req/s | {remote['bare_rps']:.0f} req/s |\n"
        "\nSecondary, absolute (this machine only):\n\n"
        "| measure | value |\n|---|---|\n"
        f"| in-process decision p99.9 | {local['p999_us']:.0f} us |\n"
        f"| in-process decision CPU time p50 / p99 (thread time: excludes waiting for a core) "
        f"| {local['cpu_p50_us']:.0f} / {local['cpu_p99_us']:.0f} us |\n"
        f"| HTTP latency p50 / p99 | {decide['p50_ms']:.2f} / {decide['p99_ms']:.2f} ms |\n"
        f"| server CPU per request (parse, validate, decide, audit line, respond) | {decide['server_cpu_us_per_request']:.0f} us "
        f"(= {1e6 / max(decide['server_cpu_us_per_request'], 1e-9):.0f} req/s on one free core) |\n"
        f"| bare endpoint's server CPU per request (median of rounds) "
        f"| {float(np.median([r['bare']['server_cpu_us_per_request'] for r in remote['rounds']])):.0f} us |\n"
        f"| non-200 responses | {decide['non_200']:.0f} |\n"
        "\nHTTP rounds (each: the two servers side by side, alternating slices of requests):\n\n"
        "| round | 1-min load | decide req/s | bare req/s | ratio | decide server CPU/request (us) | bare server CPU/request (us) |\n"
        "|---:|---:|---:|---:|---:|---:|---:|\n"
        + "".join(
            f"| {i} | {r['load_avg_1min']:.1f} | {r['decide']['rps']:,.0f} | {r['bare']['rps']:,.0f} | {r['ratio']:.2f} "
            f"| {r['decide']['server_cpu_us_per_request']:.0f} | {r['bare']['server_cpu_us_per_request']:.0f} |\n"
            for i, r in enumerate(remote["rounds"], 1)
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="exported policy (default: models/web-diurnal, else random weights)")
    parser.add_argument("--passes", type=int, default=5, help="replays of the simulated day for the in-process measure")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="HTTP rounds of --requests per side each")
    parser.add_argument("--slices", type=int, default=10, help="alternating slices (decide, bare) per round")
    parser.add_argument("--append", default=None, help="append a Markdown section to this file (one write)")
    args = parser.parse_args()
    where = machine()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        model = policy_dir(args.model, Path(tmp))
        local = in_process(model, args.passes)
        remote = http(model, args.requests, args.clients, Path(tmp), args.rounds, args.slices)
    general = ROOT / "models" / "general"
    services = batched_measure(str(general)) if (general / "card.json").is_file() else None
    loads = f"{load_start:.1f} at start, {os.getloadavg()[0]:.1f} at the end"
    print(json.dumps({"in_process": local, "http": remote, "services": services, "load": loads}, indent=2))
    command = "python benchmarks/perf/decide_latency.py" + ("" if not args.model else f" --model {args.model}")
    text = markdown(local, remote, where, loads, command)
    if services is not None:
        text += (
            "\nThe generalist (`models/general`), one decision for 1 service and for "
            f"{services['services']:.0f} services (one batched forward pass), interleaved in the same run:\n\n"
            "| services | p50 | p99 | ratio to one service (p50) | target |\n|---:|---:|---:|---:|---|\n"
            f"| 1 | {1e6 * services['one_p50']:.0f} us | {1e6 * services['one_p99']:.0f} us | 1.0 | |\n"
            f"| {services['services']:.0f} | {1e6 * services['many_p50']:.0f} us | {1e6 * services['many_p99']:.0f} us | "
            f"{services['ratio_p50']:.1f}x | <= {BATCH_TARGET:.0f}x: {'met' if services['ratio_p50'] <= BATCH_TARGET else 'missed'} |\n"
        )
    print(text)
    if args.append:
        with open(args.append, "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
