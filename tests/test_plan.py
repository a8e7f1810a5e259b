"""`rlscale plan`: the VPA-style sizing, the exact pool mix, the checks on usage readings, the planned scenario."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from rlscale.assess.packing import Demand, NodeShape, cheapest_mix, fits_in
from rlscale.assess.plan import Method, Samples, histogram_percentiles, recommend_cpu, recommend_memory
from rlscale.assess.planning import make_plan, planned_data, write_planned
from rlscale.assess.usage import Usage, clean, read_usage, write_usage
from rlscale.config import ConfigError, Scenario, load_scenario, parse_model, read_yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_assess import FakePrometheus, N, days, end, one_line_error, run_cli, service_yaml, synthetic_history  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DAY = 86_400.0


def _samples(values: np.ndarray, step_s: float = 60.0) -> Samples:
    return Samples(values, np.ones(values.size), np.arange(values.size) * step_s)


def test_histogram_percentile_is_the_upper_edge_of_the_bucket_reaching_it() -> None:
    values = np.linspace(0.01, 1.0, 1000)
    q = histogram_percentiles(values, np.ones(values.size), np.array([0.5, 0.95]), 0.001, 1.05)
    exact = np.quantile(values, [0.5, 0.95])
    assert np.all(q >= exact) and np.all(q <= exact * 1.05 + 1e-12)


def test_cpu_target_is_the_percentile_plus_margin_with_bounds_around_it() -> None:
    rng = np.random.default_rng(0)
    use = rng.uniform(0.2, 0.8, 2880)  # two days of minutes
    s = recommend_cpu(_samples(use), declared=2.0, step_s=60.0)
    p98 = np.quantile(use, 0.98)
    assert p98 * 1.15 <= s.target <= p98 * 1.15 * 1.05 + 1e-9
    assert s.lower < s.target < s.upper
    assert math.isclose(s.risk, float((use > s.target).mean()))
    assert math.isclose(s.slack_before, 1 - use.mean() / 2.0) and math.isclose(s.slack_after, 1 - use.mean() / s.target)
    assert "p98" in s.method and "VPA" in s.method


def test_recent_usage_weighs_more_than_old_usage() -> None:
    old, new = np.full(1440, 1.0), np.full(1440, 0.5)
    s = recommend_cpu(_samples(np.concatenate([old, new])), declared=1.0, step_s=60.0,
                      method=Method(half_life_s=3600.0))
    assert s.target < 0.5 * 1.15 * 1.06


def test_memory_is_never_below_the_peak_working_set_plus_the_margin_even_for_one_spike() -> None:
    ws = np.full(4 * 1440, 1.0)
    ws[100] = 3.0  # one minute's spike, four days ago: the decay and every percentile would ignore it
    s = recommend_memory(_samples(ws), declared=4.0, step_s=60.0)
    assert s.target >= 3.0 * 1.15 - 1e-12
    assert s.lower <= s.target <= s.upper
    assert s.risk == 0.0


def test_the_planned_scenario_keeps_a_memory_spike_plus_the_margin() -> None:
    raw, sc = _oversized()
    n = 4 * 1440
    mem = np.full(n, 1.0)
    mem[100] = 3.0  # four days before the end of the history
    plan = make_plan(sc, {"api": _usage(n=n, cpu=0.7, mem=mem)}, source="u.csv")
    data = planned_data(raw, ROOT / "envs" / "web-diurnal.yaml", ROOT / "envs" / "x-planned.yaml", plan, "rlscale plan")
    assert data["services"][0]["replica"]["memory_gib"] >= 3.0 * 1.15
    assert data["services"][0]["replica"]["cpu"] < 1.0  # CPU, a percentile, does follow the usual use


def test_a_short_history_widens_the_bounds() -> None:
    use = np.random.default_rng(1).uniform(0.4, 0.6, 600)
    short = recommend_cpu(_samples(use, step_s=6.0), declared=1.0, step_s=6.0)  # one hour
    long = recommend_cpu(_samples(use, step_s=600.0), declared=1.0, step_s=600.0)  # ~4 days
    assert short.upper / short.target > long.upper / long.target


# --------------------------------------------------------------------------- pool mix


def _brute_force(demands: list[Demand], shapes: list[NodeShape], most: int) -> float:
    best = math.inf
    for counts in itertools.product(range(most + 1), repeat=len(shapes)):
        cost = sum(c * s.price_per_hour for c, s in zip(counts, shapes))
        if cost < best and fits_in({s.name: c for s, c in zip(shapes, counts)}, demands, shapes):
            best = cost
    return best


def test_pool_mix_picks_the_cheaper_total_where_the_cheaper_per_vcpu_shape_packs_badly() -> None:
    # 3-core replicas: the 4-vCPU node is cheaper per vCPU (0.040 vs 0.045) but holds one replica, wasting a quarter
    small = NodeShape("small-4", 4, 16, 0.16)
    big = NodeShape("big-6", 6, 24, 0.27)
    for replicas in range(1, 8):
        demands = [Demand("api", 3.0, 2.0, replicas)]
        mix = cheapest_mix(demands, [small, big])
        assert math.isclose(mix.cost_per_hour, _brute_force(demands, [small, big], replicas), abs_tol=1e-9)
        assert fits_in(mix.nodes, demands, [small, big])
    mix = cheapest_mix([Demand("api", 3.0, 2.0, 6)], [small, big])
    assert mix.nodes == {"big-6": 3} and math.isclose(mix.cpu_efficiency, 1.0)
    per_vcpu_cheapest = 6 * small.price_per_hour
    assert mix.cost_per_hour < per_vcpu_cheapest
    mix = cheapest_mix([Demand("api", 3.0, 2.0, 5)], [small, big])
    assert mix.nodes == {"big-6": 2, "small-4": 1} and math.isclose(mix.cost_per_hour, 0.70)  # a mix is cheapest


def test_pool_mix_of_two_services_matches_brute_force() -> None:
    shapes = [NodeShape("a", 4, 8, 0.20), NodeShape("b", 8, 16, 0.37), NodeShape("c", 2, 8, 0.11)]
    demands = [Demand("api", 1.5, 1.0, 5), Demand("worker", 2.5, 5.0, 3, pools=("a", "b"))]
    mix = cheapest_mix(demands, shapes)
    assert mix.method.startswith("exact")
    assert math.isclose(mix.cost_per_hour, _brute_force(demands, shapes, 6), abs_tol=1e-9)
    assert fits_in(mix.nodes, demands, shapes)


def test_a_replica_no_node_holds_is_named() -> None:
    with pytest.raises(ValueError, match="'big'"):
        cheapest_mix([Demand("big", 9.0, 1.0, 1)], [NodeShape("a", 4, 16, 0.2)])


# --------------------------------------------------------------------------- readings


def test_nan_and_rare_readings_above_the_node_are_excluded_and_said() -> None:
    v = np.full(1000, 0.5)
    v[:10] = np.nan
    v[10:15] = 9.0
    s = clean(v, np.ones(v.size), np.arange(v.size, dtype=float), "cpu_cores", 4.0, "cores", "u.csv")
    assert s.size == 985
    assert any("10 of 1000 samples empty or NaN" in e for e in s.excluded)
    assert any("5 samples above the largest node (4 cores" in e for e in s.excluded)


@pytest.mark.parametrize("values,message", [
    (np.full(50, np.nan), "no samples"),
    (np.full(50, 6.0), "exceed the largest node"),
])
def test_unusable_readings_are_refused_in_one_line(values: np.ndarray, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        clean(values, np.ones(values.size), np.arange(values.size, dtype=float), "cpu_cores", 4.0, "cores", "u.csv")
    assert "\n" not in str(err.value) and "u.csv" in str(err.value)


def _usage(n: int = 1440, cpu: float | np.ndarray = 0.7, mem: float | np.ndarray = 1.5, replicas: float = 3.0) -> Usage:
    t = 1.7e9 + 60.0 * np.arange(n)
    return Usage("api", 60.0, t, ["all"] * n, np.broadcast_to(np.asarray(cpu, float), (n,)).copy(),
                 np.broadcast_to(np.asarray(mem, float), (n,)).copy(), np.full(n, replicas))


def _oversized() -> tuple[dict, Scenario]:
    raw = read_yaml(ROOT / "envs" / "web-diurnal.yaml")
    raw["services"][0]["replica"] = {"cpu": 2.0, "memory_gib": 4.0}
    return raw, parse_model(Scenario, raw, "web-diurnal")


def test_the_usage_file_round_trips_and_an_unqueried_resource_is_kept_as_declared(tmp_path: Path) -> None:
    u = _usage()
    u.memory_gib[:] = np.nan
    u.measured = {"cpu_cores": True, "memory_bytes": False}
    write_usage(tmp_path / "u.csv", [u])
    back = read_usage(tmp_path / "u.csv", 60.0)["api"]
    assert np.allclose(back.cpu_cores, u.cpu_cores) and back.measured == {"cpu_cores": True, "memory_bytes": False}
    _, sc = _oversized()
    plan = make_plan(sc, {"api": back}, source="u.csv")
    sp = plan.sized("api")
    assert sp is not None and sp.cpu is not None and sp.memory is None
    assert any("memory request kept as declared" in n for n in sp.notes)


def test_a_queried_resource_that_read_only_nan_is_refused(tmp_path: Path) -> None:
    u = _usage(cpu=np.nan)
    write_usage(tmp_path / "u.csv", [u])
    assert "nan" in (tmp_path / "u.csv").read_text().splitlines()[1]
    _, sc = _oversized()
    with pytest.raises(ConfigError, match="cpu_cores: no samples"):
        make_plan(sc, read_usage(tmp_path / "u.csv", 60.0), source="u.csv")


def test_a_summed_query_is_refused_not_sized() -> None:
    _, sc = _oversized()
    with pytest.raises(ConfigError, match="summing over replicas"):
        make_plan(sc, {"api": _usage(cpu=5.5)}, source="u.csv")  # 5.5 cores on 4-vCPU nodes: three replicas summed


def test_the_plan_halves_a_2x_oversized_replica_and_packs_twice_as_many_per_node() -> None:
    _, sc = _oversized()
    cpu = 0.7 + 0.15 * np.sin(np.arange(1440) / 60.0)  # up to 0.85 of a core
    plan = make_plan(sc, {"api": _usage(cpu=cpu, mem=1.6)}, source="u.csv")
    sp = plan.sized("api")
    assert sp is not None and sp.cpu is not None and sp.memory is not None
    assert 0.85 * 1.15 * 0.95 <= sp.cpu.target <= 0.85 * 1.15 * 1.05
    assert math.isclose(sp.memory.target, 1.6 * 1.15)
    assert plan.today is not None and plan.planned is not None
    assert plan.today.nodes == {"on-demand": 2} and plan.planned.nodes == {"on-demand": 1}  # 3 replicas: 2 per node -> 4


# --------------------------------------------------------------------------- the planned scenario and the command


def test_planned_scenario_is_written_atomically_and_never_over_a_file_it_did_not_write(tmp_path: Path) -> None:
    raw, sc = _oversized()
    plan = make_plan(sc, {"api": _usage()}, source="u.csv")
    src = ROOT / "envs" / "web-diurnal.yaml"
    out = tmp_path / "web-planned.yaml"
    written = write_planned(out, planned_data(raw, src, out, plan, "rlscale plan"), "rlscale plan")
    assert written.name == "web-diurnal-planned" and written.services[0].replica.cpu < 1.0
    write_planned(out, planned_data(raw, src, out, plan, "rlscale plan"), "rlscale plan")  # its own: replaced
    foreign = tmp_path / "mine.yaml"
    foreign.write_text("name: mine\n")
    with pytest.raises(ConfigError, match="not written by `rlscale plan`"):
        write_planned(foreign, planned_data(raw, src, foreign, plan, "rlscale plan"), "rlscale plan")
    assert foreign.read_text() == "name: mine\n"


def test_plan_command_writes_the_planned_scenario_the_generalist_accepts(tmp_path: Path) -> None:
    raw, _ = _oversized()
    raw["services"][0]["workload"].pop("trace", None)
    scenario = tmp_path / "svc.yaml"
    scenario.write_text(yaml.safe_dump(raw))
    write_usage(tmp_path / "svc-usage.csv", [_usage(n=600)])
    pools = tmp_path / "pools.yaml"
    pools.write_text(yaml.safe_dump({"pools": [
        {"name": "m4", "vcpu": 4, "memory_gib": 16, "price_per_hour": 0.192, "max_nodes": 40, "provision_delay_s": 90},
        {"name": "c6", "vcpu": 6, "memory_gib": 12, "price_per_hour": 0.27, "max_nodes": 40, "provision_delay_s": 90}]}))
    run = subprocess.run([sys.executable, "-m", "rlscale.cli", "plan", "--scenario", str(scenario), "--pools", str(pools),
                          "--report", str(tmp_path / "report")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "api cpu: 2 ->" in run.stdout and "generalist: accepted" in run.stdout
    planned = load_scenario(tmp_path / "svc-planned.yaml")
    assert planned.services[0].replica.cpu < 1.0 and {p.name for p in planned.pools} <= {"m4", "c6"}
    assert (tmp_path / "report" / "plan.md").exists()
    again = subprocess.run([sys.executable, "-m", "rlscale.cli", "plan", "--scenario", str(scenario), "--usage",
                            str(tmp_path / "missing.csv")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert again.returncode == 2 and "missing.csv: not found" in again.stderr + again.stdout
    assert "Traceback" not in again.stderr


# --------------------------------------------------------------------------- bad readings, from the query to the command


def _assess_then_plan(tmp: Path, usage: dict[str, object]) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`rlscale assess` against a Prometheus that answers the usage queries as ``usage`` says, then `rlscale plan`."""
    series: dict[str, object] = {**synthetic_history(tmp), **usage}
    config = yaml.safe_load(service_yaml(tmp).read_text())
    config["queries"].update({"cpu_cores": "cpu", "memory_bytes": "mem"})
    (tmp / "service.yaml").write_text(yaml.safe_dump(config))
    with FakePrometheus(series) as prom:
        fitted = run_cli("assess", "--prometheus", prom.url, "--config", str(tmp / "service.yaml"), "--days", days(),
                         "--end", end(), "--out", str(tmp / "svc.yaml"), "--report", str(tmp / "fit"))
    assert fitted.returncode == 0, fitted.stderr
    return run_cli("plan", "--scenario", str(tmp / "svc.yaml"), "--report", str(tmp / "plan")), tmp / "svc.yaml"


def _per_pod(values: np.ndarray, pods: int = 3) -> dict[str, np.ndarray]:
    return {f"p{i}": values.copy() for i in range(pods)}


def test_a_usage_query_that_returns_nothing_is_stated_and_that_resource_kept_as_declared(tmp_path: Path) -> None:
    mem = np.full(N, 0.3 * 2**30)
    mem[10:12] = np.nan  # two NaN readings: excluded and counted
    per_pod = _per_pod(mem)
    per_pod["p1"][50] = 40 * 2**30  # one scrape glitch above the 1 GiB node: excluded and counted
    planned, scenario = _assess_then_plan(tmp_path, {"mem": per_pod})  # no "cpu" series at all
    assert "queries.cpu_cores returned no series" in (tmp_path / "fit" / "report.md").read_text()
    assert planned.returncode == 0, planned.stderr
    out = " ".join(planned.stdout.split())  # the console wraps long lines
    assert "cpu_cores: no samples (no query, or it returned nothing): CPU request kept as declared" in out
    assert f"memory_bytes: 6 of {3 * N} samples empty or NaN, excluded" in out
    assert "memory_bytes: 1 samples above the largest node (1 GiB; up to 40) excluded" in out
    today, plan = load_scenario(scenario), load_scenario(tmp_path / "svc-planned.yaml")
    assert plan.services[0].replica.cpu == today.services[0].replica.cpu
    assert math.isclose(plan.services[0].replica.memory_gib, 0.3 * 1.15, rel_tol=0.01)


def test_usage_queries_that_all_return_nothing_leave_plan_one_line_and_no_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "svc-usage.csv"
    write_usage(stale, [_usage(n=N)])  # an earlier run's usage: must not be sized as this history's
    planned, _ = _assess_then_plan(tmp_path, {})
    assert not stale.exists()
    report = (tmp_path / "fit" / "report.md").read_text()
    assert "queries.cpu_cores returned no series" in report and "removed svc-usage.csv of an earlier run" in report
    assert "svc-usage.csv: not found" in one_line_error(planned)


def test_a_usage_query_reading_only_nan_is_refused_in_one_line(tmp_path: Path) -> None:
    h = synthetic_history(tmp_path)
    planned, _ = _assess_then_plan(tmp_path, {"cpu": _per_pod(h["util"]), "mem": _per_pod(np.full(N, np.nan))})
    line = one_line_error(planned)
    assert f"svc-usage.csv (api): memory_bytes: no samples (all {3 * N} empty or NaN)" in line
    assert not (tmp_path / "svc-planned.yaml").exists()


def test_a_usage_query_summed_over_replicas_is_refused_in_one_line(tmp_path: Path) -> None:
    h = synthetic_history(tmp_path)
    planned, _ = _assess_then_plan(tmp_path, {"cpu": h["util"] * h["ready"], "mem": _per_pod(np.full(N, 0.3 * 2**30))})
    line = one_line_error(planned)  # 2 to 12 replicas' cores in one series, on nodes of two
    assert "svc-usage.csv (api): cpu_cores:" in line and "of samples exceed the largest node (" in line
    assert "summing over replicas" in line
    assert not (tmp_path / "svc-planned.yaml").exists()
