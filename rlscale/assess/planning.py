"""``rlscale plan``: a scenario and its usage history -> right-sized replicas, the cheapest pool mix, a planned scenario.

The sizing is ``rlscale.assess.plan`` (the VPA recommender's method), the
pool mix ``rlscale.assess.packing`` (an exact search at the history's peak);
this module reads the files, checks the readings (``rlscale.assess.usage``),
and writes the planned scenario (same services, traces, policies' inputs;
new requests and, when the user lists available pools, the pools of the
cheapest mix) so that ``rlscale evaluate`` and ``rlscale shadow-report
--planned`` can set today's sizing against it. A service without usage keeps
its declared sizes, and the plan says so.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rlscale.assess.packing import Demand, Mix, NodeShape, cheapest_mix
from rlscale.assess.plan import Method, Samples, Sizing, recommend_cpu, recommend_memory
from rlscale.assess.usage import Usage, clean, read_usage
from rlscale.atomic import staged_dir, write_json, write_text
from rlscale.config import MODELS_DIR, ConfigError, PoolSpec, Scenario, Strict, parse_model, read_yaml, resolve_scenario_path

HEADER = "# Written by `rlscale plan`"


class PoolsFile(Strict):
    """``--pools``: the node pools a plan may choose from (the scenario's pool schema)."""

    pools: list[PoolSpec]


@dataclass
class ServicePlan:
    service: str
    peak_replicas: int
    cpu: Sizing | None
    memory: Sizing | None
    notes: list[str] = field(default_factory=list)


@dataclass
class Plan:
    scenario: Scenario
    services: list[ServicePlan]
    today: Mix | None
    planned: Mix | None
    pools: list[PoolSpec]
    pools_from: str
    method: Method
    notes: list[str] = field(default_factory=list)

    def sized(self, name: str) -> ServicePlan | None:
        return next((s for s in self.services if s.service == name), None)


def round_up(value: float, quantum: float) -> float:
    return math.ceil(value / quantum - 1e-9) * quantum


def make_plan(scenario: Scenario, usages: dict[str, Usage], method: Method = Method(), pools: list[PoolSpec] | None = None,
              source: str = "usage") -> Plan:
    """Size every service that has usage, and pack the peak both as declared and as planned."""
    unknown = sorted(set(usages) - {s.name for s in scenario.services})
    notes = [f"usage for {name!r} ignored: the scenario has no such service" for name in unknown]
    by_pool = {p.name: p for p in scenario.pools}
    services: list[ServicePlan] = []
    for svc in scenario.services:
        usage = usages.get(svc.name)
        if usage is None:
            services.append(ServicePlan(svc.name, 0, None, None, ["no usage history: kept as declared"]))
            continue
        own = [by_pool[n] for n in svc.pools] + list(pools or [])
        vcpu, mem = max(p.vcpu for p in own), max(p.memory_gib for p in own)
        where = f"{source} ({svc.name})"
        cpu_s = _checked(usage.cpu_cores, usage, "cpu_cores", vcpu, "cores", where)
        mem_s = _checked(usage.memory_gib, usage, "memory_bytes", mem, "GiB", where)
        plan = ServicePlan(svc.name, usage.peak_replicas(), None, None, list(usage.notes))
        if cpu_s is None:
            plan.notes.append("cpu_cores: no samples (no query, or it returned nothing): CPU request kept as declared")
        else:
            plan.notes += cpu_s.excluded
            plan.cpu = recommend_cpu(cpu_s, svc.replica.cpu, usage.step_s, method)
        if mem_s is None:
            plan.notes.append("memory_bytes: no samples (no query, or it returned nothing): memory request kept as declared")
        else:
            plan.notes += mem_s.excluded
            plan.memory = recommend_memory(mem_s, svc.replica.memory_gib, usage.step_s, method)
        if svc.replica.gpus > 0:
            plan.notes.append("GPU replica: its GPUs are kept; only its CPU and memory requests are sized")
        services.append(plan)
    if not any(s.cpu or s.memory for s in services):
        raise ConfigError(f"{source}: no service of {scenario.name!r} has usage to size (services: "
                          f"{[s.name for s in scenario.services]}, usage for: {sorted(usages)})")
    available = list(pools) if pools else list(scenario.pools)
    result = Plan(scenario, services, None, None, available, "--pools" if pools else "the scenario's pools", method, notes)
    result.today, result.planned = _mixes(result, restrict=pools is None)
    return result


def _checked(values: np.ndarray, usage: Usage, name: str, node: float, unit: str, where: str) -> Samples | None:
    """None for a resource that was never measured (the query is absent); else ``clean``'s samples or its one-line refusal.

    A column that exists but holds only NaN is a query that returned nothing usable: refused, not skipped.
    """
    if usage.size and not np.isfinite(values).any() and not usage.measured.get(name, False):
        return None
    return clean(values, usage.weight, usage.t, name, node, unit, where)


def planned_request(scenario: Scenario, plan: Plan, name: str) -> tuple[float, float]:
    """The (CPU, memory GiB) request the planned scenario gives ``name``: the targets, rounded up to 1 m-core and 1 MiB."""
    svc = next(s for s in scenario.services if s.name == name)
    sp = plan.sized(name)
    cpu = round_up(sp.cpu.target, 0.001) if sp is not None and sp.cpu is not None else svc.replica.cpu
    mem = round_up(sp.memory.target, 1 / 1024) if sp is not None and sp.memory is not None else svc.replica.memory_gib
    return cpu, mem


def _mixes(plan: Plan, restrict: bool) -> tuple[Mix | None, Mix | None]:
    sc = plan.scenario
    shapes = [NodeShape(p.name, p.vcpu, p.memory_gib, p.price_per_hour, p.max_nodes) for p in plan.pools]
    today, planned = [], []
    for svc in sc.services:
        sp = plan.sized(svc.name)
        peak = sp.peak_replicas if sp is not None else 0
        allowed = tuple(svc.pools) if restrict else None
        today.append(Demand(svc.name, svc.replica.cpu, svc.replica.memory_gib, peak, allowed))
        cpu, mem = planned_request(sc, plan, svc.name)
        planned.append(Demand(svc.name, cpu, mem, peak, allowed))
    out: list[Mix | None] = []
    for demands, label in ((today, "today"), (planned, "planned")):
        try:
            out.append(cheapest_mix(demands, shapes))
        except ValueError as err:
            plan.notes.append(f"pool mix ({label} sizes): {err}")
            out.append(None)
    return out[0], out[1]


# --------------------------------------------------------------------------- the planned scenario


def planned_data(raw: dict[str, Any], source: Path, out: Path, plan: Plan, command: str) -> dict[str, Any]:
    """The original scenario's YAML data with planned requests (and the mix's pools when ``--pools`` was given)."""
    data = yaml.safe_load(yaml.safe_dump(raw))
    sc = plan.scenario
    data["name"] = f"{sc.name}-planned"
    changes = []
    for i, svc in enumerate(sc.services):
        cpu, mem = planned_request(sc, plan, svc.name)
        replica = data["services"][i]["replica"]
        replica["cpu"], replica["memory_gib"] = float(f"{cpu:.6g}"), float(f"{mem:.6g}")
        if svc.replica.gpus == 0 and svc.replica.cpu_used is None and cpu != svc.replica.cpu:
            # the plan changes what is reserved, not what a replica does: it keeps serving as many requests at once
            replica["cpu_used"] = svc.replica.cpu
        changes.append(f"{svc.name} {svc.replica.cpu:g}->{cpu:g} CPU, {svc.replica.memory_gib:g}->{mem:.4g} GiB")
        trace = data["services"][i].get("workload", {}).get("trace")
        if trace and not Path(trace).is_absolute() and source.parent.resolve() != out.parent.resolve():
            data["services"][i]["workload"]["trace"] = os.path.relpath((source.parent / trace).resolve(), out.parent.resolve())
    if plan.pools_from == "--pools" and plan.planned is not None:
        used = [p for p in plan.pools if plan.planned.nodes.get(p.name)] or plan.pools
        data["pools"] = [p.model_dump(mode="json") for p in used]
        for i, svc in enumerate(sc.services):
            cpu, mem = planned_request(sc, plan, svc.name)
            fits = [p for p in used if cpu <= p.vcpu and mem <= p.memory_gib]
            fits.sort(key=lambda p: p.price_per_hour / max(1.0, min(p.vcpu // cpu, p.memory_gib // mem)))
            data["services"][i]["pools"] = [p.name for p in fits]
    data["description"] = (f"Planned by `{command}` from {sc.name!r}: {'; '.join(changes)}. "
                           f"{(' ' + str(raw.get('description', ''))).strip()}")
    return data


def write_planned(out: Path, data: dict[str, Any], command: str) -> Scenario:
    """Write atomically; never over a file this command did not write. Returns the scenario as loaded back."""
    if out.exists() or out.is_symlink():
        if out.is_symlink() or not out.is_file():
            raise ConfigError(f"--out {out}: exists and is not a regular file; choose another path")
        try:
            first = out.read_text(errors="replace").split("\n", 1)[0]
        except OSError as err:
            raise ConfigError(f"--out {out}: cannot read ({err.strerror})") from None
        if not first.startswith(HEADER):
            raise ConfigError(f"--out {out}: exists and was not written by `rlscale plan`; remove it or choose another path")
    header = f"{HEADER} ({command}); edit by re-running it.\n"
    write_text(out, header + yaml.safe_dump(data, sort_keys=False, width=110))
    from rlscale.config import load_scenario

    try:
        return load_scenario(out)
    except ConfigError as err:
        raise ConfigError(f"plan wrote a scenario that does not load ({err}); please report this") from None


def generalist_check(scenario: Scenario, model: str | Path) -> str:
    """Whether the generalist serves ``scenario`` as it is (its card's range), in one line."""
    from rlscale.policies import make_policy

    try:
        make_policy(f"ppo:{model}", scenario)
    except ConfigError as err:
        return f"refused: {err}"
    return f"accepted: {model} serves {scenario.name!r} without retraining (every trait inside its card's range)"


# --------------------------------------------------------------------------- reporting


def lines(plan: Plan) -> list[str]:
    """The plan as plain lines: per service and resource, target [bounds], change, slack, risk; the mixes."""
    out = []
    for sp in plan.services:
        if sp.cpu is None and sp.memory is None:
            out.append(f"{sp.service}: kept as declared ({'; '.join(sp.notes)})")
            continue
        for s in (sp.cpu, sp.memory):
            if s is None:
                continue
            out.append(
                f"{sp.service} {s.resource}: {s.declared:.4g} -> {s.target:.4g} {s.unit} ({s.change:+.0%}) "
                f"[bounds {s.lower:.4g}..{s.upper:.4g}]; slack {s.slack_before:.0%} -> {s.slack_after:.0%}; "
                f"risk {s.risk:.1%} of samples above it; {s.samples} samples over {s.days:.2g} days")
        out += [f"{sp.service} note: {n}" for n in sp.notes]
        out.append(f"{sp.service}: peak {sp.peak_replicas} replicas")
    for label, mix in (("today", plan.today), ("planned", plan.planned)):
        if mix is not None:
            nodes = ", ".join(f"{k} x{v}" for k, v in mix.nodes.items()) or "none"
            out.append(f"pool mix at the peak, {label} sizes ({plan.pools_from}): {nodes}; {mix.cost_per_hour:.4g} USD/h; "
                       f"packing {mix.cpu_efficiency:.0%} CPU, {mix.memory_efficiency:.0%} memory; {mix.method}")
            out += [f"note: {n}" for n in mix.notes]
    if plan.today is not None and plan.planned is not None and plan.today.cost_per_hour > 0:
        out.append(f"at the peak the planned sizes cost {1 - plan.planned.cost_per_hour / plan.today.cost_per_hour:.0%} less")
    out += [f"note: {n}" for n in plan.notes]
    return out


def as_json(plan: Plan) -> dict[str, Any]:
    def mix(m: Mix | None) -> dict[str, Any] | None:
        if m is None:
            return None
        return {"nodes": m.nodes, "cost_per_hour": m.cost_per_hour, "cpu_efficiency": m.cpu_efficiency,
                "memory_efficiency": m.memory_efficiency, "method": m.method, "notes": list(m.notes),
                "patterns": [[n, list(a)] for n, a in m.patterns]}

    return {
        "scenario": plan.scenario.name,
        "method": plan.method.__dict__,
        "pools_from": plan.pools_from,
        "services": [{"service": s.service, "peak_replicas": s.peak_replicas, "notes": s.notes,
                      "cpu": s.cpu.as_dict() if s.cpu else None, "memory": s.memory.as_dict() if s.memory else None}
                     for s in plan.services],
        "mix_today": mix(plan.today),
        "mix_planned": mix(plan.planned),
        "notes": plan.notes,
    }


# --------------------------------------------------------------------------- the command


def run_plan(scenario: str, usage: str | None, out: str | None, pools: str | None, report: str | None, method: Method,
             model: str | None, command: str) -> tuple[Plan, Path, Path, str]:
    """Read, plan, write; returns (plan, planned scenario path, report folder, the generalist's verdict)."""
    src = resolve_scenario_path(scenario)
    from rlscale.config import load_scenario

    sc = load_scenario(src)
    raw = read_yaml(src)
    usage_path = Path(usage) if usage else src.with_name(f"{src.stem}-usage.csv")
    if not usage_path.exists():
        raise ConfigError(f"--usage {usage_path}: not found (`rlscale assess` writes <scenario>-usage.csv when service.yaml's "
                          f"cpu_cores or memory_bytes queries return series; its fit report says when they did not)")
    usages = read_usage(usage_path, sc.step_s)
    available = None
    if pools is not None:
        pdata = read_yaml(Path(pools))
        available = parse_model(PoolsFile, pdata, pools).pools
        names = [p.name for p in available]
        if len(set(names)) != len(names):
            raise ConfigError(f"{pools}: pool names must be unique, got {names}")
    plan = make_plan(sc, usages, method, available, str(usage_path))
    out_path = Path(out) if out else src.with_name(f"{src.stem}-planned.yaml")
    if out_path.resolve() == src.resolve():
        raise ConfigError(f"--out {out_path}: is the scenario being planned; choose another path")
    if out_path.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"--out {out_path}: expected a .yaml path, e.g. envs/my-service-planned.yaml")
    planned = write_planned(out_path, planned_data(raw, src, out_path, plan, command), command)
    verdict = generalist_check(planned, model or MODELS_DIR / "general")
    folder = Path(report) if report else Path("reports") / f"plan-{src.stem}"
    text = "\n".join([f"# Plan: {sc.name}", "", f"Command: `{command}`", "", f"Usage: `{usage_path}`; planned scenario: "
                      f"`{out_path}`", "", *[f"- {x}" for x in lines(plan)], f"- generalist: {verdict}", ""])
    with staged_dir(folder) as tmp:
        write_text(tmp / "plan.md", text)
        write_json(tmp / "plan.json", {**as_json(plan), "planned_scenario": str(out_path), "generalist": verdict,
                                       "command": command})
    return plan, out_path, folder, verdict
