"""The cluster model: conservation, bounds, placement, rebalancing, provisioning and cold starts.

Property tests drive random scenarios with arbitrary actions (including
out-of-range replica counts and every rebalance verb) and arbitrary arrival
rates (zero, tiny, huge), and check the model's invariants after every step.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlscale.config import Scenario
from rlscale.sim import Simulator, StepResult
from rlscale.sim import kernel as K
from rlscale.sim.params import P_GPU, P_MEM, P_MIN, P_VCPU, S_CPU, S_GPU, S_MAX, S_MEM, S_MIN, S_QLIMIT
from rlscale.spaces import REBALANCE_CONSOLIDATE, REBALANCE_DRAIN, REBALANCE_NONE, REBALANCE_SPREAD, Action

EPS = 1e-9
PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- scenarios


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """Small random clusters: 1-3 pools (some with GPUs, spot or no delay), 1-3 online or batch services."""
    n_pools = draw(st.integers(1, 3))
    pools = []
    for i in range(n_pools):
        min_nodes = draw(st.integers(0, 2))
        pools.append({
            "name": f"pool{i}",
            "vcpu": draw(st.sampled_from([1.0, 2.0, 4.0, 16.0])),
            "memory_gib": draw(st.sampled_from([2.0, 8.0, 64.0])),
            "gpus": draw(st.sampled_from([0, 0, 1, 4])),
            "price_per_hour": draw(st.sampled_from([0.0, 0.1, 3.0])),
            "provision_delay_s": draw(st.sampled_from([0.0, 30.0, 90.0, 400.0])),
            "min_nodes": min_nodes,
            "max_nodes": min_nodes + draw(st.integers(1, 6)),
            "speed": draw(st.sampled_from([0.5, 1.0, 2.0])),
            "spot_interruptions_per_hour": draw(st.sampled_from([0.0, 0.0, 1.0])),
            "idle_release_s": draw(st.sampled_from([0.0, 60.0, 300.0])),
        })
    services = []
    for j in range(draw(st.integers(1, 3))):
        order = draw(st.permutations(range(n_pools)))
        allowed = order[: draw(st.integers(1, n_pools))]
        home = pools[allowed[0]]
        kind = draw(st.sampled_from(["online", "batch"]))
        min_r = draw(st.integers(0, 3))
        services.append({
            "name": f"svc{j}",
            "kind": kind,
            "work_s": draw(st.sampled_from([0.001, 0.05, 1.0, 30.0])),
            "replica": {  # sized to fit its first pool, so the scenario is valid
                "cpu": min(draw(st.sampled_from([0.25, 0.5, 1.0, 3.0])), home["vcpu"]),
                "memory_gib": min(draw(st.sampled_from([0.5, 2.0, 8.0])), home["memory_gib"]),
                "gpus": min(draw(st.sampled_from([0, 0, 1])), home["gpus"]),
            },
            "cold_start_s": draw(st.sampled_from([0.0, 30.0, 150.0])),
            "min_replicas": min_r,
            "max_replicas": max(1, min_r) + draw(st.integers(0, 30)),
            "queue_limit": draw(st.sampled_from([1.0, 500.0, 1e6])),
            "slo": {"p95_latency_s": 0.5} if kind == "online" else {"max_backlog_age_s": 600.0},
            "pools": [f"pool{i}" for i in allowed],
            "workload": {"peak_rps": 10.0},
        })
    return Scenario.model_validate({
        "name": "random",
        "step_s": draw(st.sampled_from([10.0, 60.0, 300.0])),
        "substeps": draw(st.integers(1, 6)),
        "pools": pools,
        "services": services,
        "reward": {"cost_scale": 1.0},
        "imbalance": {
            "drift_sigma": draw(st.sampled_from([0.0, 0.05, 0.5])),
            "drift_reversion": 0.05,
            "contention": draw(st.sampled_from([0.0, 0.2, 0.9])),
        },
    })


ARRIVAL_REGIMES = ("zero", "tiny", "moderate", "huge", "mixed")


def arrival_sequence(sim: Simulator, rng: np.random.Generator, regime: str, steps: int) -> np.ndarray:
    """[steps, N, S] arrival rates; 'moderate' spans idle to twice the capacity of max replicas."""
    cap = np.array([s.replica_rps * s.max_replicas for s in sim.scenario.services])
    shape = (steps, sim.n, len(cap))
    options = {
        "zero": np.zeros(shape),
        "tiny": rng.uniform(0.0, 1e-6, shape),
        "moderate": rng.uniform(0.0, 2.0, shape) * cap,
        "huge": rng.uniform(1e5, 1e8, shape),
    }
    if regime != "mixed":
        return options[regime]
    pick = rng.integers(0, 4, shape)
    return np.choose(pick, [options["zero"], options["tiny"], options["moderate"], options["huge"]])


def action_sequence(sim: Simulator, rng: np.random.Generator, steps: int) -> list[Action]:
    """Desired replicas anywhere in [-3, max + 5] (held for a while at random), rebalance verbs at random."""
    hi = sim.params.svc_f[:, S_MAX].astype(np.int64)
    actions = []
    desired = rng.integers(-3, hi + 6, (sim.n, hi.shape[0]))
    for _ in range(steps):
        change = rng.random(desired.shape) < 0.3
        desired = np.where(change, rng.integers(-3, hi + 6, desired.shape), desired)
        verbs = rng.choice([REBALANCE_NONE, REBALANCE_CONSOLIDATE, REBALANCE_SPREAD, REBALANCE_DRAIN], size=sim.n,
                           p=[0.7, 0.1, 0.1, 0.1])
        actions.append(Action(desired.astype(np.int64), verbs.astype(np.int64)))
    return actions


def start(scenario: Scenario, n: int, seed: int, initial: np.ndarray | None = None) -> Simulator:
    sim = Simulator(scenario, n)
    rng = np.random.default_rng(seed)
    for i in range(n):
        init = initial if initial is not None else rng.integers(0, sim.params.svc_f[:, S_MAX].astype(np.int64) + 3)
        sim.reset(i, int(rng.integers(0, 2**63 - 1)), init)
    return sim


# --------------------------------------------------------------------------- invariants


def assert_state_invariants(sim: Simulator) -> None:
    """What must hold between steps: replica accounting, node bounds, node capacity, placement in allowed pools."""
    p = sim.params
    rep, warming, state = sim.rep, sim.warming, sim.node_state
    svc_f, pool_f = p.svc_f, p.pool_f
    desired = sim.svc_i[:, :, K.I_DESIRED]
    unplaced = sim.svc_i[:, :, K.I_UNPLACED]
    assert (desired >= svc_f[:, S_MIN]).all() and (desired <= svc_f[:, S_MAX]).all()
    assert (rep >= 0).all() and (warming >= 0).all() and (warming <= rep).all() and (unplaced >= 0).all()
    np.testing.assert_array_equal(rep.sum(axis=2) + unplaced, desired)
    absent = state == K.ABSENT
    assert not rep[np.broadcast_to(absent[:, None, :], rep.shape)].any(), "replica on an absent node"
    for s, svc in enumerate(sim.scenario.services):
        allowed = np.isin(p.node_pool, [sim.scenario.pool_index(name) for name in svc.pools])
        assert (rep[:, s, ~allowed] == 0).all(), f"{svc.name} placed outside its pools"
    node_caps = pool_f[p.node_pool]  # [M, 9]
    for col_s, col_p in ((S_CPU, P_VCPU), (S_MEM, P_MEM), (S_GPU, P_GPU)):
        used = np.einsum("nsm,s->nm", rep, svc_f[:, col_s])
        assert (used <= node_caps[:, col_p] + EPS).all(), f"node over capacity in column {col_p}"
    for q, (lo, hi) in enumerate(p.pool_range):
        alive = (~absent[:, lo:hi]).sum(axis=1)
        assert (alive <= hi - lo).all()
        assert (alive >= pool_f[q, P_MIN]).all(), f"pool {q} below min_nodes: {alive}"


def assert_step_invariants(
    sim: Simulator, result: StepResult, action: Action, backlog_before: np.ndarray, rebalancing_before: np.ndarray
) -> None:
    """What each interval's outputs must satisfy."""
    svc_f = sim.params.svc_f
    arrived, served, dropped, backlog = result.arrived, result.served, result.dropped, result.backlog
    scale = 1.0 + arrived + backlog_before
    np.testing.assert_array_less(np.abs(arrived - served - dropped - (backlog - backlog_before)), 1e-9 * scale)
    assert (served >= 0).all() and (dropped >= 0).all() and (backlog >= 0).all()
    assert (backlog <= svc_f[:, S_QLIMIT] * (1 + EPS)).all()
    clamped = np.clip(action.replicas, svc_f[:, S_MIN].astype(np.int64), svc_f[:, S_MAX].astype(np.int64))
    np.testing.assert_array_equal(result.desired, clamped)
    assert (result.ready >= 0).all() and (result.ready <= result.desired).all()
    p95 = result.latency_p95_s
    assert np.isfinite(p95).all() and (p95 >= 0).all()
    util = result.per_service[:, :, K.O_UTIL]
    assert ((util >= 0) & (util <= 1 + EPS)).all()
    c = result.cluster
    for col in (K.O_COST, K.O_COST_RATE, K.O_PAID_CPU, K.O_USEFUL_CPU, K.O_HOT_SPOT):
        assert np.isfinite(c[:, col]).all() and (c[:, col] >= 0).all(), f"cluster column {col}"
    assert (c[:, K.O_USEFUL_CPU] <= c[:, K.O_PAID_CPU] * (1 + EPS) + EPS).all()
    np.testing.assert_array_less(dropped - arrived, 1e-9 * scale, err_msg="dropped more than arrived")
    assert ((c[:, K.O_DROPPED_FRACTION] >= 0) & (c[:, K.O_DROPPED_FRACTION] <= 1)).all()
    assert (c[rebalancing_before > 0, K.O_REBALANCED] == 0).all(), "a rebalance started during a running one"
    pool = result.per_pool
    assert (pool[:, :, K.O_NODES_READY] + pool[:, :, K.O_NODES_PROV] <= sim.params.pool_range[:, 1] - sim.params.pool_range[:, 0]).all()


def run_checked(sim: Simulator, actions: list[Action], arrivals: np.ndarray) -> None:
    assert_state_invariants(sim)
    for action, lam in zip(actions, arrivals):
        backlog_before = sim.backlog.copy()
        rebalancing_before = sim.rebalance_left.copy()
        result = sim.step(action, lam)
        assert_step_invariants(sim, result, action, backlog_before, rebalancing_before)
        assert_state_invariants(sim)


@PROPERTY
@given(scenario=scenarios(), seed=st.integers(0, 2**32 - 1), regime=st.sampled_from(ARRIVAL_REGIMES))
def test_every_step_conserves_requests_and_respects_bounds_and_capacity(scenario: Scenario, seed: int, regime: str) -> None:
    sim = start(scenario, n=2, seed=seed)
    rng = np.random.default_rng(seed)
    steps = 80
    run_checked(sim, action_sequence(sim, rng, steps), arrival_sequence(sim, rng, regime, steps))


@PROPERTY
@given(scenario=scenarios(), seed=st.integers(0, 2**32 - 1))
def test_a_cluster_follows_the_same_trajectory_alone_or_in_a_batch(scenario: Scenario, seed: int) -> None:
    rng = np.random.default_rng(seed)
    batch = start(scenario, n=3, seed=seed)
    steps = 40
    actions = action_sequence(batch, rng, steps)
    arrivals = arrival_sequence(batch, rng, "mixed", steps)
    alone = Simulator(scenario, 1)
    alone.reset(0, int(batch.key[1]), batch.rep[1].sum(axis=1) + batch.svc_i[1, :, K.I_UNPLACED])
    for action, lam in zip(actions, arrivals):
        b = batch.step(action, lam)
        a = alone.step(action.row(1), lam[1:2])
        np.testing.assert_array_equal(a.per_service[0], b.per_service[1])
        np.testing.assert_array_equal(a.per_pool[0], b.per_pool[1])
        np.testing.assert_array_equal(a.cluster[0], b.cluster[1])


def test_parallel_kernel_matches_serial_kernel_bit_for_bit() -> None:
    """PARALLEL_FROM may pick either kernel, so both must compute the same thing."""
    scenario = fragmentable(cold_start_s=30.0)
    sims = [start(scenario, n=6, seed=3) for _ in range(2)]
    rng = np.random.default_rng(3)
    actions = action_sequence(sims[0], rng, 30)
    arrivals = arrival_sequence(sims[0], rng, "mixed", 30)
    kernels = (K.step_serial, K.step_parallel)
    for action, lam in zip(actions, arrivals):
        outs = []
        for sim, kernel in zip(sims, kernels):
            p = sim.params
            kernel(
                p.pool_f, p.pool_range, p.node_pool, p.svc_f, p.pref, p.fits, p.misc,
                sim.node_state, sim.node_f, sim.rep, sim.warming, sim.warm_left, sim.svc_i, sim.backlog,
                sim.rebalance_left, sim.key, sim.t, sim.time_s, action.replicas, action.rebalance, lam,
                sim.out_s, sim.out_p, sim.out_c, sim._buf_i, sim._buf_f, sim._buf_m,
            )
            outs.append((sim.out_s.copy(), sim.out_p.copy(), sim.out_c.copy()))
        for x, y in zip(*outs):
            np.testing.assert_array_equal(x, y)


# --------------------------------------------------------------------------- hand-built clusters


def fragmentable(cold_start_s: float = 120.0, min_nodes: int = 0, **pool: Any) -> Scenario:
    """One pool of 4-vCPU nodes and one service of 1-vCPU replicas: four replicas fill a node."""
    pool_spec = {
        "name": "pool", "vcpu": 4, "memory_gib": 16, "price_per_hour": 0.2, "provision_delay_s": 0,
        "min_nodes": min_nodes, "max_nodes": 8, "idle_release_s": 60,
    }
    pool_spec.update(pool)
    return Scenario.model_validate({
        "name": "fragmentable",
        "step_s": 60,
        "substeps": 6,
        "pools": [pool_spec],
        "services": [{
            "name": "api", "work_s": 0.05, "replica": {"cpu": 1, "memory_gib": 2},
            "cold_start_s": cold_start_s, "min_replicas": 1, "max_replicas": 32,
            "slo": {"p95_latency_s": 0.5}, "pools": ["pool"], "workload": {"peak_rps": 50},
        }],
        "reward": {"cost_scale": 1.0},
        "imbalance": {"drift_sigma": 0.0, "contention": 0.0},
    })


def act(sim: Simulator, replicas: int, verb: int = REBALANCE_NONE, rps: float = 10.0) -> StepResult:
    return sim.step(Action(np.array([[replicas]], dtype=np.int64), np.array([verb], dtype=np.int64)), np.array([[rps]]))


def nodes_alive(sim: Simulator) -> int:
    return int((sim.node_state[0] != K.ABSENT).sum())


def max_node_packing(sim: Simulator) -> float:
    used = np.einsum("sm,s->m", sim.rep[0], sim.params.svc_f[:, S_CPU])
    return float((used / sim.params.pool_f[sim.params.node_pool, P_VCPU]).max())


def fragmented_cluster() -> Simulator:
    """Four replicas left one per node on four nodes by a ReplicaSet-style scale-down from 16."""
    sim = Simulator(fragmentable(), 1)
    sim.reset(0, 1, np.array([16]))
    assert nodes_alive(sim) == 4
    act(sim, 4)
    assert nodes_alive(sim) == 4 and (sim.rep[0, 0] > 0).sum() == 4
    assert sim.warming.sum() == 0 and sim.rebalance_left[0] == 0.0
    return sim


def test_consolidate_frees_nodes_and_restarts_the_replicas_it_moves() -> None:
    sim = fragmented_cluster()
    result = act(sim, 4, REBALANCE_CONSOLIDATE)
    assert result.rebalanced[0] == 1.0
    assert nodes_alive(sim) == 1, "the emptied nodes are released once idle"
    assert result.ready[0, 0] == 1, "the three moved replicas are still cold-starting"
    assert max_node_packing(sim) == 1.0
    assert act(sim, 4).ready[0, 0] == 4, "moved replicas are back after their 120 s cold start"


def test_drain_frees_only_the_emptiest_node_and_restarts_only_its_replicas() -> None:
    sim = Simulator(fragmentable(cold_start_s=120.0), 1)
    sim.reset(0, 1, np.array([16]))
    act(sim, 5)  # one node keeps 2 replicas, three keep 1
    before = sim.rep[0, 0].copy()
    assert sorted(before[before > 0]) == [1, 1, 1, 2]
    result = act(sim, 5, REBALANCE_DRAIN)
    assert result.rebalanced[0] == 1.0
    assert nodes_alive(sim) == 3, "one node emptied and released, not all that could be"
    assert result.ready[0, 0] == 4, "only the drained node's one replica restarts"
    after = sim.rep[0, 0]
    assert after.sum() == 5 and after.max() == 3, "it moved into the fullest node"
    assert act(sim, 5, REBALANCE_DRAIN).rebalanced[0] == 0.0, "refused while the moved replica cold-starts"


def test_drain_refuses_when_the_emptiest_nodes_replicas_fit_nowhere() -> None:
    sim = Simulator(fragmentable(), 1)
    sim.reset(0, 1, np.array([8]))
    layout = sim.rep.copy()
    assert act(sim, 8, REBALANCE_DRAIN).rebalanced[0] == 0.0
    np.testing.assert_array_equal(sim.rep, layout)


def test_spread_lowers_the_most_packed_nodes_load() -> None:
    sim = Simulator(fragmentable(min_nodes=4), 1)
    sim.reset(0, 1, np.array([8]))
    before = max_node_packing(sim)
    result = act(sim, 8, REBALANCE_SPREAD)
    assert result.rebalanced[0] == 1.0
    assert before == 1.0 and max_node_packing(sim) == 0.5


def test_a_rebalance_during_a_running_one_is_refused() -> None:
    sim = Simulator(fragmentable(min_nodes=4, cold_start_s=120.0), 1)
    sim.reset(0, 1, np.array([8]))
    assert act(sim, 8, REBALANCE_SPREAD).rebalanced[0] == 1.0
    layout = sim.rep.copy()
    refused = act(sim, 8, REBALANCE_CONSOLIDATE)
    assert refused.rebalanced[0] == 0.0
    np.testing.assert_array_equal(sim.rep, layout)
    assert act(sim, 8, REBALANCE_CONSOLIDATE).rebalanced[0] == 1.0, "accepted once the first has finished"


def test_consolidate_on_a_packed_cluster_moves_nothing() -> None:
    sim = Simulator(fragmentable(), 1)
    sim.reset(0, 1, np.array([8]))
    layout = sim.rep.copy()
    result = act(sim, 8, REBALANCE_CONSOLIDATE)
    assert result.rebalanced[0] == 0.0 and result.ready[0, 0] == 8
    np.testing.assert_array_equal(sim.rep, layout)


def test_the_fit_check_costs_no_reference_counting_per_node() -> None:
    """``_has_room`` inlined in a node loop calls NRT_incref no more often than reading the same arrays in place.

    A fit check whose array reads sit behind short-circuits left four
    incref/decref pairs per (replica, node) in consolidate, spread and drain,
    and made them about 8x slower.
    """
    from numba import njit

    @njit
    def fit_check(s, used_cpu, used_mem, used_gpu, svc_f, pool_f, node_pool, pref):
        k = 0
        for m in range(used_cpu.shape[0]):
            if K._has_room(s, m, used_cpu, used_mem, used_gpu, svc_f, pool_f, node_pool, pref):
                k += 1
        return k

    @njit
    def reads_in_place(s, used_cpu, used_mem, used_gpu, svc_f, pool_f, node_pool, pref):
        k = 0.0
        for m in range(used_cpu.shape[0]):
            p = node_pool[m]
            k += used_cpu[m] + used_mem[m] + used_gpu[m] + svc_f[s, S_CPU] + pool_f[p, P_VCPU] + pref[s, 0]
        return k

    pool_f = np.zeros((2, 9))
    pool_f[:, [P_VCPU, P_MEM, P_GPU]] = [[4.0, 16.0, 0.0], [8.0, 32.0, 1.0]]
    svc_f = np.zeros((1, 12))
    svc_f[0, [S_CPU, S_MEM, S_GPU]] = [1.0, 2.0, 0.0]
    args = (0, np.array([0.0, 3.5, 2.0, 7.5]), np.zeros(4), np.zeros(4), svc_f, pool_f,
            np.array([0, 0, 1, 1]), np.array([[1, -1]]))
    assert fit_check(*args) == 1, "only node 2: nodes 0 and 1 are in another pool, node 3 is full"
    reads_in_place(*args)

    def increfs(fn) -> int:
        return fn.inspect_llvm(fn.signatures[0]).count("call void @NRT_incref(")

    assert increfs(fit_check) <= increfs(reads_in_place)


@pytest.mark.parametrize(("delay_s", "cold_s"), [(90.0, 30.0), (40.0, 50.0), (0.0, 20.0), (200.0, 0.0)])
def test_replicas_on_a_new_node_are_ready_after_provisioning_plus_cold_start(delay_s: float, cold_s: float) -> None:
    scenario = fragmentable(cold_start_s=cold_s, provision_delay_s=delay_s).model_copy(update={"step_s": 10.0, "substeps": 1})
    sim = Simulator(scenario, 1)
    sim.reset(0, 1, np.array([4]))
    assert nodes_alive(sim) == 1
    ready_at = delay_s + cold_s
    for k in range(1, 40):
        result = act(sim, 6)
        assert nodes_alive(sim) == 2
        expected = 6 if k * 10.0 >= ready_at else 4
        assert result.ready[0, 0] == expected, f"after {k * 10:.0f} s"
        prov = result.per_pool[0, 0, K.O_NODES_PROV]
        assert prov == (1.0 if k * 10.0 < delay_s else 0.0), f"node still provisioning after {k * 10:.0f} s"


def test_replicas_on_an_existing_node_wait_only_for_their_cold_start() -> None:
    scenario = fragmentable(cold_start_s=30.0, provision_delay_s=300.0).model_copy(update={"step_s": 10.0, "substeps": 1})
    sim = Simulator(scenario, 1)
    sim.reset(0, 1, np.array([2]))
    readies = [act(sim, 4).ready[0, 0] for _ in range(4)]
    assert readies == [2, 2, 4, 4] and nodes_alive(sim) == 1


def test_every_node_is_paid_for_while_provisioning() -> None:
    scenario = fragmentable(provision_delay_s=600.0, price_per_hour=3.6)
    sim = Simulator(scenario, 1)
    sim.reset(0, 1, np.array([4]))
    result = act(sim, 8)
    assert result.per_pool[0, 0, K.O_NODES_PROV] == 1.0
    assert result.cost_usd[0] == pytest.approx(2 * 3.6 * 60 / 3600)


def test_beyond_the_queue_limit_requests_are_dropped_and_the_backlog_carries_over() -> None:
    scenario = fragmentable(cold_start_s=0.0)
    scenario = scenario.model_copy(update={"services": [scenario.services[0].model_copy(update={"queue_limit": 1000.0})]})
    sim = Simulator(scenario, 1)
    sim.reset(0, 1, np.array([1]))  # 1 replica serves 20 rps
    first = act(sim, 1, rps=30.0)
    assert first.backlog[0, 0] == pytest.approx(600.0) and first.dropped[0, 0] == 0.0
    second = act(sim, 1, rps=30.0)
    assert second.backlog[0, 0] == pytest.approx(1000.0) and second.dropped[0, 0] == pytest.approx(200.0)
    third = act(sim, 4, rps=0.0)
    assert third.backlog[0, 0] == 0.0 and third.served[0, 0] == pytest.approx(1000.0)


def test_a_constant_service_time_waits_half_as_long_as_an_exponential_one() -> None:
    """Kingman: the wait scales by (1 + cv^2) / 2; the default cv 1 is M/M/c exactly, the same bits as before cv existed."""
    base = fragmentable(cold_start_s=0.0)
    runs = {}
    for cv in (None, 1.0, 0.0):
        svc = base.services[0] if cv is None else base.services[0].model_copy(update={"service_cv": cv})
        sim = Simulator(base.model_copy(update={"services": [svc]}), 1)
        sim.reset(0, 1, np.array([2]))  # 2 replicas serve 40 rps: 34 rps is 85% busy, so requests wait
        runs[cv] = act(sim, 2, rps=34.0)
    work = base.services[0].work_s
    assert runs[None].latency_p95_s.tobytes() == runs[1.0].latency_p95_s.tobytes()
    wait_exp, wait_const = runs[1.0].latency_p95_s[0, 0] - work, runs[0.0].latency_p95_s[0, 0] - work
    assert wait_exp > 0.2 * work
    assert wait_const == pytest.approx(0.5 * wait_exp, rel=1e-9)
    assert runs[0.0].served.tobytes() == runs[1.0].served.tobytes()  # only latency changes, not throughput


# --------------------------------------------------------------------------- malformed scenarios at the CLI


RLSCALE = Path(sys.executable).parent / "rlscale"


def valid_scenario() -> dict[str, Any]:
    return {
        "name": "cli-check",
        "pools": [{"name": "general", "vcpu": 4, "memory_gib": 16, "price_per_hour": 0.2, "max_nodes": 10}],
        "services": [{
            "name": "api", "work_s": 0.05, "replica": {"cpu": 1, "memory_gib": 2}, "max_replicas": 20,
            "slo": {"p95_latency_s": 0.3}, "pools": ["general"], "workload": {"peak_rps": 100},
        }],
        "reward": {"cost_scale": 0.05},
    }


def broken(path: tuple[str | int, ...], value: Any, delete: bool = False) -> dict[str, Any]:
    data = valid_scenario()
    node: Any = data
    for part in path[:-1]:
        node = node[part]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(RLSCALE), *args], capture_output=True, text=True, timeout=120)


def test_a_valid_scenario_file_simulates(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(valid_scenario()))
    proc = run_cli("simulate", "--scenario", str(path), "--steps", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["scenario"] == "cli-check"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        pytest.param(broken(("pools", 0, "vcpu"), "four"), "pools[0].vcpu", id="wrong-type"),
        pytest.param(broken(("pools", 0, "colour"), "red"), "pools[0].colour", id="unknown-key"),
        pytest.param(broken(("pools", 0, "price_per_hour"), -0.1), "pools[0].price_per_hour", id="negative-price"),
        pytest.param(broken(("services", 0, "pools"), ["gpu"]), "services[0].pools", id="unknown-pool"),
        pytest.param(broken(("pools",), None, delete=True), "pools", id="missing-pools"),
        pytest.param(broken(("services", 0, "replica", "cpu"), 8), "services[0].replica", id="replica-fits-no-node"),
    ],
)
def test_a_malformed_scenario_exits_2_with_one_line_naming_the_field(tmp_path: Path, data: dict, field: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = run_cli("simulate", "--scenario", str(path), "--steps", "5")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert field in lines[0] and str(path) in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_an_unknown_policy_exits_2_with_one_line() -> None:
    proc = run_cli("simulate", "--policy", "magic", "--steps", "5")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "magic" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
