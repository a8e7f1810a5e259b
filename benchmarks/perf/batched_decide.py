"""How the generalist's decision time grows with the number of services (numpy only).

One decision for 1,000 services is one batched forward pass over 1,000 rows,
so it should cost far less than 1,000 decisions for one service. Both are
timed in the same run, as a ratio, because absolute times differ 2-4x
between machines of the same kind. ``benchmarks/perf/decide_latency.py`` calls
``measure`` and reports the ratio; ``python benchmarks/perf/batched_decide.py``
runs it alone.

Anchor: one decision for one service, interleaved with the batched one in the same run (target: 1,000
services <= 20x one service's p50).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from rlscale.config import PROJECT_ROOT, load_scenario
from rlscale.policies.general import GeneralPolicy
from rlscale.policies.network import load_exported
from rlscale.spaces import Metrics

TARGET_RATIO = 20.0


def cluster_metrics(S: int, t: int, rng: np.random.Generator) -> Metrics:
    load = rng.uniform(50.0, 500.0, size=(1, S))
    ready = np.ceil(load / 14.0)
    return Metrics(
        time_s=np.array([60.0 * t]), arrivals_rps=load, ready=ready, desired=ready.copy(),
        utilisation=np.minimum(1.0, load / (20.0 * ready)), latency_p95_s=np.full((1, S), 0.1),
        backlog=np.zeros((1, S)), dropped=np.zeros((1, S)), nodes_ready=np.full((1, 1), 10.0),
        nodes_provisioning=np.zeros((1, 1)), packing=np.full((1, 1), 0.8), cost_rate_usd_h=np.ones(1),
        hot_spot=np.zeros(1), rebalancing=np.zeros(1),
    )


def policy_for(model: str, services: int) -> GeneralPolicy:
    sc = load_scenario("web-diurnal")
    svc = sc.services[0]
    many = sc.model_copy(update={"services": [svc.model_copy(update={"name": f"s{i}"}) for i in range(services)]})
    return GeneralPolicy(load_exported(model), many)


def p50_p99(policy: GeneralPolicy, S: int, decisions: int) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    batches = [cluster_metrics(S, t, rng) for t in range(32)]
    for m in batches[:8]:
        policy.act(m)
    times = np.empty(decisions)
    for i in range(decisions):
        m = batches[i % len(batches)]
        start = time.perf_counter()
        policy.act(m)
        times[i] = time.perf_counter() - start
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def measure(model: str, services: int = 1000, decisions: int = 400) -> dict[str, float]:
    """p50/p99 of one decision for 1 service and for ``services``, interleaved in rounds so load hits both alike."""
    one, many = policy_for(model, 1), policy_for(model, services)
    rows: dict[str, list[float]] = {"one_p50": [], "one_p99": [], "many_p50": [], "many_p99": []}
    for _ in range(3):
        a, b = p50_p99(one, 1, decisions), p50_p99(many, services, decisions // 4)
        rows["one_p50"].append(a[0])
        rows["one_p99"].append(a[1])
        rows["many_p50"].append(b[0])
        rows["many_p99"].append(b[1])
    out = {k: float(np.median(v)) for k, v in rows.items()}
    out["services"] = services
    out["ratio_p50"] = out["many_p50"] / out["one_p50"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(PROJECT_ROOT / "models" / "general"))
    parser.add_argument("--services", type=int, default=1000)
    args = parser.parse_args()
    if not Path(args.model).exists():
        raise SystemExit(f"--model {args.model}: not found (train and export the generalist first)")
    r = measure(args.model, args.services)
    print(f"1 service: p50 {1e6 * r['one_p50']:.0f} us, p99 {1e6 * r['one_p99']:.0f} us; "
          f"{args.services} services: p50 {1e6 * r['many_p50']:.0f} us, p99 {1e6 * r['many_p99']:.0f} us; "
          f"ratio {r['ratio_p50']:.1f}x (target <= {TARGET_RATIO:.0f}x)")


if __name__ == "__main__":
    main()
