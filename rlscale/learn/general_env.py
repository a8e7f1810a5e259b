"""The generalist's training environment: randomised clusters and traffic, one row per service.

Each of ``engines`` slots runs ``clusters`` episodes of one randomly drawn
single-service cluster (its pools, prices, delays, limits and load all
drawn from ``sample_cluster``) on traffic from ``rlscale.learn.traffic``;
when the slot's episodes end, it draws a new cluster. The simulator runs
the *true* cluster while the policy is told a declaration whose per-replica
capacity is off by up to 20%, as a user's would be. Observations, actions
and the node drain go through ``GeneralPolicy``, the object that serves the
exported policy, so training and serving share one code path.

The reward is scale-free: cost over what running the episode's mean demand at
70% utilisation would cost, plus weighted SLO violations, dropped fraction and
scaling actions (a count, not replicas moved). With ``general.constraint`` the
SLO and drop weights are Lagrange multipliers (``dual_step``): they rise while
the policy violates or drops more than the rule twin on the same episodes and
fall while it does less, so the exchange rate between money and SLO is the one
that holds the policy to the rule's rates instead of one picked by hand.
"""

from __future__ import annotations

import math
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces

from rlscale.config import PROJECT_ROOT, ConfigError, ConstraintSpec, GeneralSpec, Scenario, load_scenario, parse_model
from rlscale.episode import ClusterEpisodes
from rlscale.learn.general_eval import EXCESS_FLOOR, policy_history
from rlscale.learn.traffic import Replay, make_sampler
from rlscale.learn.sb3_env import InProcessVecEnv
from rlscale.policies.general import FixedSetting, GeneralPolicy
from rlscale.policies.relative import CLIP, LEVELS as NVEC_LEVELS, n_features, nvec

REFERENCE_UTILISATION = 0.7
CALIBRATED_CLUSTERS = 3
"""``train_calibration_days``: the slot's first clusters whose histories calibrate the base of all its clusters."""


def dual_step(weight: float, ours: float, theirs: float, c: ConstraintSpec) -> float:
    """One step of dual ascent on a multiplier, in log space so it stays positive and moves by ratios.

    The excess is relative (the policy's rate over the twin's, less one, with the
    checkpoint score's ``EXCESS_FLOOR`` under the twin's rate) and clipped to [-1, 1], so one window of a rare event cannot swing the weight
    by more than ``exp(lr)``.
    """
    g = float(np.clip((ours - theirs) / max(theirs, EXCESS_FLOOR) - c.slack, -1.0, 1.0))
    return float(np.clip(weight * math.exp(c.lr * g), *c.bounds))


def excess_credit(ours: Any, twin: Any, weights: np.ndarray) -> np.ndarray:
    """What ``twin_penalty: excess`` takes back from the difference reward: the credit for fewer violations or drops.

    With it the policy pays for every interval it violates or drops where the
    rule did not, and earns nothing where it is safer than the rule, so it
    cannot buy a hot setting in one cluster with caution in another: the
    target is the rule's rates in every case, not on average.
    """
    return (weights[0] * np.minimum(0.0, ours.slo_violation - twin.slo_violation)
            + weights[1] * np.minimum(0.0, ours.dropped_fraction - twin.dropped_fraction))


def resolve_trace(path: str) -> Path:
    """A training trace by path, relative to the working directory or else to the project root."""
    p = Path(path)
    if not p.is_absolute() and not p.exists() and (PROJECT_ROOT / p).exists():
        p = PROJECT_ROOT / p
    if not p.is_file():
        raise ConfigError(f"general.trace: {path}: file not found")
    return p
NODE_VCPUS = (2, 4, 8, 16, 32, 64)
REPLICA_CPUS = (0.25, 0.5, 1.0, 2.0, 4.0)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def sample_cluster(rng: np.random.Generator, spec: GeneralSpec) -> tuple[Scenario, Scenario, float]:
    """(true scenario, declared scenario, peak rps): one single-service cluster of the training distribution."""
    r = spec.ranges
    step_s = float(rng.choice(r.step_s))
    batch = rng.random() < spec.batch_fraction
    cpu = float(rng.choice(REPLICA_CPUS))
    work = _log_uniform(rng, 0.005, 0.5) * (20.0 if batch else 1.0)
    rps = cpu / work
    peak_replicas = _log_uniform(rng, 2.0, r.peak_replicas)
    min_r = int(rng.integers(1, 4))
    headroom = float(rng.uniform(1.8, 3.0)) if rng.random() > 0.1 else float(rng.uniform(1.2, 1.6))
    max_r = int(min(r.max_replicas, max(min_r + 2, math.ceil(peak_replicas * headroom))))
    slo = work * _log_uniform(rng, *r.slo_over_work)
    vcpus = [v for v in NODE_VCPUS if v >= cpu and math.ceil(max_r / (v // cpu)) + 2 <= 250]
    vcpu = float(rng.choice(vcpus[: max(1, len(vcpus) - 1)] if len(vcpus) > 1 else vcpus))
    price_vcpu = _log_uniform(rng, 0.01, 0.1)
    delay = float(rng.uniform(*r.provision_delay_s))
    cold = float(rng.uniform(*r.cold_start_s))
    per_node = int(vcpu // cpu)
    nodes = math.ceil(max_r / per_node) + 2
    pools: list[dict[str, Any]] = [dict(
        name="on-demand", vcpu=vcpu, memory_gib=4 * vcpu, price_per_hour=price_vcpu * vcpu,
        provision_delay_s=delay, min_nodes=int(rng.integers(0, 2)), max_nodes=nodes,
        idle_release_s=float(rng.uniform(60, 600)),
    )]
    order = ["on-demand"]
    if rng.random() < spec.spot_fraction:
        pools.append(dict(
            name="spot", vcpu=vcpu, memory_gib=4 * vcpu, price_per_hour=price_vcpu * vcpu * float(rng.uniform(0.3, 0.7)),
            provision_delay_s=delay * float(rng.uniform(0.8, 1.5)), max_nodes=nodes,
            spot_interruptions_per_hour=float(rng.uniform(0.0, 0.2)), idle_release_s=float(rng.uniform(60, 600)),
        ))
        order = ["spot", "on-demand"] if rng.random() < 0.5 else ["on-demand", "spot"]
    if rng.random() < spec.extra_pool_fraction:
        big = float(min(64.0, vcpu * 2))
        if math.ceil(max_r / int(big // cpu)) + 2 <= 250:
            pools.append(dict(
                name="large", vcpu=big, memory_gib=4 * big, price_per_hour=price_vcpu * big * float(rng.uniform(0.85, 1.3)),
                provision_delay_s=delay * float(rng.uniform(1.0, 2.0)), max_nodes=math.ceil(max_r / int(big // cpu)) + 2,
                idle_release_s=float(rng.uniform(60, 600)),
            ))
            order.append("large")
    slo_spec = {"max_backlog_age_s": slo * 50} if batch else {"p95_latency_s": slo}
    service: dict[str, Any] = dict(
        name="svc", kind="batch" if batch else "online", work_s=work, replica=dict(cpu=cpu, memory_gib=2 * cpu),
        cold_start_s=cold, min_replicas=min_r, max_replicas=max_r, queue_limit=max(1000.0, peak_replicas * rps * 60),
        slo=slo_spec, pools=order, workload=dict(peak_rps=peak_replicas * rps),
    )
    declared = parse_model(Scenario, dict(
        name="general-train", step_s=step_s, episode_steps=spec.episode_steps, pools=pools, services=[service],
        reward=dict(cost_scale=1.0), imbalance=dict(drift_sigma=float(rng.uniform(0.0, 0.04)),
                                                     drift_reversion=0.05, contention=float(rng.uniform(0.0, 0.3))),
    ), "general training cluster")
    off = float(rng.uniform(1.0 - r.capacity_error, 1.0 + r.capacity_error))
    true_svc = declared.services[0].model_copy(update={"work_s": work * off})
    true = declared.model_copy(update={"services": [true_svc]})
    return true, declared, peak_replicas * rps


def peak_sampler(shape: Any, peak: float) -> Any:
    """A drawn cluster's traffic: the training shape (``traffic.make_sampler``) scaled to its peak, one service."""

    def sampler(r: np.random.Generator, n: int, step_s: float, start_s: float) -> np.ndarray:
        return (peak * shape(r, n, step_s, start_s))[:, None]

    return sampler


def calibrated_rule_base(declared: Scenario, episodes: ClusterEpisodes, start: int, days: float, clusters: int,
                         history: dict[str, Any] | None = None) -> float:
    """The start-level rule's base as serving would calibrate it, on the first ``clusters`` histories of ``episodes``.

    The coolest of their calibrated bases serves every cluster of a training
    slot (one cluster and one traffic family): calibrating all of them would
    cost more simulation than the training itself.
    """
    from rlscale.rollout import calibrate

    rule = FixedSetting(declared, start, calibration={"days": days, "min_days": 1.0, "start_level": start},
                        history=history)
    rule.reset(episodes.n)
    episodes.give_history(rule)
    m = min(clusters, episodes.n)
    rule.past[m:] = [None] * (episodes.n - m)
    calibrate(rule, declared)
    return float(rule.base[:m].min())


START_PREFERENCE = 4.0


def start_at_rule(model: Any, level: int, history: bool = False, preference: float = START_PREFERENCE) -> None:
    """Bias a fresh policy's action layer towards target ``level`` (``general.start_level``) and no rebalance.

    With these fixed, the decoder alone is a sound rule (at or below HPA's cost
    at no more SLO violations on the shipped scenarios), so PPO starts from a
    safe rule and learns when to deviate, instead of from uniform actions that
    rebalance two intervals in three.
    """
    import torch

    with torch.no_grad():
        bias = model.policy.action_net.bias
        bias[level] += preference
        bias[len(NVEC_LEVELS)] += 2 * START_PREFERENCE
        if history:
            bias[len(NVEC_LEVELS) + 3] += preference / 2  # size for demand now until the forecast earns trust


class GeneralVecEnv(InProcessVecEnv):
    """``engines * clusters`` rows for SB3; each slot re-draws its cluster when its episodes end."""

    render_mode = None

    def __init__(self, spec: GeneralSpec | dict[str, Any], engines: int, clusters: int, seed: int = 0) -> None:
        self.spec = spec if isinstance(spec, GeneralSpec) else parse_model(GeneralSpec, spec, "general")
        self.engines_n, self.clusters = engines, clusters
        self.history = policy_history(self.spec)
        self.hold = int(self.history["hold_steps"]) if self.history else 1
        self.heads = len(nvec(self.history is not None))
        obs = spaces.Box(-CLIP, CLIP, shape=(n_features(self.history is not None, self.spec.base_feature),), dtype=np.float32)
        super().__init__(engines * clusters, obs, spaces.MultiDiscrete(nvec(self.history is not None)))
        replay = Replay(str(resolve_trace(self.spec.trace)), self.spec.trace_train_days) if self.spec.trace else None
        self._shape = make_sampler(replay)
        self._named = [load_scenario(name) for name in self.spec.scenarios]
        for sc in self._named:
            if len(sc.services) != 1:
                raise ConfigError(f"general.scenarios: {sc.name!r} has {len(sc.services)} services; "
                                  "the training env runs single-service clusters")
        self._seed = seed
        self.seed(seed)
        self._actions: np.ndarray | None = None
        self.multipliers = np.array([self.spec.w_slo, self.spec.w_drop])
        self._tally = np.zeros(5)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs beyond the generators: the multipliers and their running window."""
        return {"multipliers": self.multipliers.tolist(), "tally": self._tally.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.multipliers = np.asarray(state["multipliers"], dtype=np.float64)
        self._tally = np.asarray(state["tally"], dtype=np.float64)

    def _account(self, ours: Any, twin: Any) -> None:
        """Add one interval of every slot's rates to the window; at its end, one dual step per multiplier."""
        c = self.spec.constraint
        if c is None:
            return
        self._tally += [ours.slo_violation.sum(), twin.slo_violation.sum(), ours.dropped_fraction.sum(),
                        twin.dropped_fraction.sum(), ours.slo_violation.size]
        if self._tally[4] >= c.every * self.num_envs:
            n = self._tally[4]
            self.multipliers = np.array([
                dual_step(self.multipliers[0], self._tally[0] / n, self._tally[1] / n, c),
                dual_step(self.multipliers[1], self._tally[2] / n, self._tally[3] / n, c),
            ])
            self._tally[:] = 0.0

    # the generators are the whole random state: checkpoints save and restore them
    @property
    def rngs(self) -> list[np.random.Generator]:
        return self._slot_rngs

    def seed(self, seed: int | None = None) -> Sequence[None | int]:
        self._seed = self._seed if seed is None else int(seed)
        self._slot_rngs = [np.random.default_rng([self._seed, k]) for k in range(self.engines_n)]
        return [self._seed] * self.num_envs

    def _build(self, k: int) -> None:
        rng = self._slot_rngs[k]
        named = bool(self.spec.scenarios) and rng.random() < self.spec.scenario_fraction
        sampler: Any = None
        if named:
            # a shipped scenario with its own workload and randomisation (seeds far from the evaluation ones)
            true = declared = self._named[int(rng.integers(len(self._named)))]
        else:
            true, declared, peak = sample_cluster(rng, self.spec)
            sampler = peak_sampler(self._shape, peak)

        seeds = [int(rng.integers(0, 2**63 - 1)) for _ in range(self.clusters)]
        days, calibrating = 0.0, self.spec.train_calibration_days
        if self.history is not None:
            u = rng.random()
            days = (0.0 if u < self.spec.history_none_fraction else
                    float(rng.uniform(1.0, 2.0)) if u < self.spec.history_none_fraction + self.spec.history_short_fraction
                    else self.spec.history_days)

        def run() -> tuple[ClusterEpisodes, GeneralPolicy]:
            """The slot's episodes (traffic and simulator noise fixed by ``seeds``) and a fresh policy for them."""
            episodes = ClusterEpisodes(true, self.clusters, episode_steps=self.spec.episode_steps, randomise=named,
                                       sampler=sampler, history_days=max(days, calibrating))
            for i in range(self.clusters):
                episodes.set_rng(i, np.random.default_rng(seeds[i]))
                episodes.reset(i)
            pol = GeneralPolicy(None, declared, history=self.history, sees_base=self.spec.base_feature)
            pol.reset(self.clusters)
            episodes.give_history(pol)
            return episodes, pol

        eng, policy = run()
        # the rule twin: the same episodes, run by the fixed start-level rule
        twin = run() if self.spec.rule_twin else None
        base = None
        if self.spec.train_bases:  # a base as calibration would set it: the start level (the twin's) reads as it
            base = np.full(self.clusters, NVEC_LEVELS[self.spec.train_bases[int(rng.integers(len(self.spec.train_bases)))]])
        elif calibrating:
            base = np.full(self.clusters, calibrated_rule_base(declared, eng, self.spec.start_level, calibrating,
                                                               CALIBRATED_CLUSTERS))
        if base is not None:
            for pol in [policy, *([twin[1]] if twin else [])]:
                pol.start = self.spec.start_level
                pol.settle(base)
        self._twins[k] = twin
        pool = declared.pools[declared.pool_index(declared.services[0].pools[0])]
        per_replica_h = pool.price_per_hour / max(1.0, pool.vcpu // declared.services[0].replica.cpu)
        mean_replicas = eng.arrivals[:, : eng.episode_steps].mean(axis=1)[:, 0] / (true.services[0].replica_rps * REFERENCE_UTILISATION)
        ref = np.maximum(mean_replicas, 1.0) * per_replica_h * declared.step_s / 3600.0
        self._slots[k] = (eng, policy, ref)
        self._ep_reward[k] = 0.0
        self._ep_len[k] = 0

    def reset(self) -> np.ndarray:
        self._slots: list[Any] = [None] * self.engines_n
        self._twins: list[Any] = [None] * self.engines_n
        self._ep_reward = np.zeros((self.engines_n, self.clusters))
        self._ep_len = np.zeros(self.engines_n, dtype=np.int64)
        for k in range(self.engines_n):
            self._build(k)
        return np.concatenate([pol.observe(eng.metrics()) for eng, pol, _ in self._slots])

    def _twin_reward(self, k: int, ref: np.ndarray) -> tuple[Any, np.ndarray]:
        """The rule's reward on the same episode: a baseline that does not depend on the policy's actions.

        Subtracting it leaves the optimum where it was and removes most of the
        variance the traffic and the cluster draw put into the return, so PPO
        sees how much better or worse than the rule each action was.
        """
        eng, pol = self._twins[k]
        pol.observe(eng.metrics())
        level = np.full((self.clusters, 1), self.spec.start_level, dtype=np.int64)
        none = np.zeros((self.clusters, 1), dtype=np.int64) if self.history is not None else None
        terms, _, reward = self._advance(eng, pol, level, np.zeros(self.clusters, dtype=np.int64), ref, none)
        return terms, reward

    def _advance(self, eng: ClusterEpisodes, pol: GeneralPolicy, levels: np.ndarray, verbs: np.ndarray,
                 ref: np.ndarray, ahead: np.ndarray | None = None) -> tuple[Any, np.ndarray, np.ndarray]:
        """One interval of a slot's clusters (observed already): reward terms, truncation flags, scale-free reward."""
        w = self.spec
        before = eng.sim.desired.copy()
        _, terms, truncated = eng.step_action(pol.step_raw(eng.metrics(), pol.read_picks(levels), verbs, ahead))
        changed = (eng.sim.desired != before).sum(axis=1)
        w_slo, w_drop = self.multipliers
        reward = -(terms.cost_usd / ref + w_slo * terms.slo_violation + w_drop * terms.dropped_fraction
                   + w.w_churn * changed)
        return terms, truncated, reward

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs, self.heads)

    def step_wait(self):
        assert self._actions is not None
        C = self.clusters
        obs_out, rew_out, done_out = [], [], []
        infos: list[dict[str, Any]] = []
        for k in range(self.engines_n):
            eng, pol, ref = self._slots[k]
            act = self._actions[k * C : (k + 1) * C]
            reward = np.zeros(C)
            for j in range(self.hold):  # the picks hold for the decision period; a rebalance is asked once
                if j:
                    pol.observe(eng.metrics())
                verbs = act[:, 1] if j == 0 else np.zeros(C, dtype=np.int64)
                terms, truncated, step_reward = self._advance(eng, pol, act[:, :1], verbs, ref,
                                                              act[:, 2:3] if self.heads > 2 else None)
                if self._twins[k] is not None:
                    twin_terms, twin_reward = self._twin_reward(k, ref)
                    step_reward = step_reward - twin_reward
                    if self.spec.twin_penalty == "excess":
                        step_reward = step_reward + excess_credit(terms, twin_terms, self.multipliers)
                    self._account(terms, twin_terms)
                reward = reward + step_reward
                if truncated.all():
                    break
            self._ep_reward[k] += reward
            self._ep_len[k] += 1
            obs = pol.observe(eng.metrics())
            slot_infos: list[dict[str, Any]] = [
                {"cost_ratio": float(terms.cost_usd[i] / ref[i]), "slo_violation": float(terms.slo_violation[i])}
                for i in range(C)
            ]
            if truncated.all():
                for i in range(C):
                    slot_infos[i]["terminal_observation"] = obs[i].copy()
                    slot_infos[i]["TimeLimit.truncated"] = True
                    slot_infos[i]["episode"] = {"r": float(self._ep_reward[k, i]), "l": int(self._ep_len[k]), "t": 0.0}
                self._build(k)
                eng, pol, _ = self._slots[k]
                obs = pol.observe(eng.metrics())
            obs_out.append(obs)
            rew_out.append(reward.astype(np.float32))
            done_out.append(np.repeat(bool(truncated.all()), C))
            infos.extend(slot_infos)
        return np.concatenate(obs_out), np.concatenate(rew_out), np.concatenate(done_out), infos
