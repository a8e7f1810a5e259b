"""Can a network learn from counterfactual probes what PPO did not: when running one level hotter is free?

``experiments/hotter_periods.py`` found room above the calibrated rule in
hindsight (periods where one level hotter saves money at no extra SLO-violating
interval or drop) and a weak signal for it in the network's input row. PPO never
found those periods; here they are labelled by replay and learned by supervision.
The data come from the training distribution only (``sample_cluster`` on the
Alibaba trace's training days, as ``train/general-twin.yaml`` draws them, seeds
below 1000); the generalisation suite is not touched.

1. For each of ``--clusters`` training clusters: one episode with 3 days of
   history; the start-level rule calibrated on that history (as
   ``general.train_calibration_days`` does); the episode replayed on ``1 + P``
   identical rows, row ``1 + p`` one level hotter during period ``p``.
2. Label: that period saved money at no extra SLO-violating interval and no
   extra drop.
3. A 64-64 tanh network (the generalist's shape) fitted by logistic loss on the
   rule's row at each period's start, exported as a generalist whose level head
   picks the start level (the calibrated base), or one level hotter where the
   predicted probability is over ``--tau``; it never asks for a rebalance.

    python experiments/probe_learning.py --clusters 300 --tau 0.5,0.6,0.7 --out /tmp/probe
    python experiments/offset_trial.py --model models/general --model /tmp/probe/tau0.6
    python experiments/probe_learning.py --clusters 300 --history --out /tmp/probe-history

A trial kept for the record: ``docs/experiments/history-policy.md``.
"""

from __future__ import annotations

import argparse
import json
import math
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from suite_cases import ROOT  # the script's folder is on sys.path; this puts the rest there

from hotter_periods import KEYS, Probe, free

CONFIG = ROOT / "train" / "general-twin.yaml"
HISTORY_DAYS = 3.0


def spec():
    import yaml

    from rlscale.config import GeneralSpec, parse_model

    return parse_model(GeneralSpec, yaml.safe_load(CONFIG.read_text())["general"], str(CONFIG))


def history_section(on: bool, hold: int = 1) -> dict | None:
    """The card's ``history`` section of a probe network that reads the history row (``--history``); ``hold``
    intervals a pick holds (``--hold``: the probes' period makes the served picks what was labelled)."""
    return {"days": 7.0, "min_days": 1.0, "hold_steps": hold} if on else None


def probe_cluster(job: tuple[int, int, bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Rows ``[P, F]``, labels ``[P]``, effects ``[3, P]`` (cost, SLO-violating intervals, drops) and the base."""
    from rlscale.episode import ClusterEpisodes
    from rlscale.learn.general_env import calibrated_rule_base, peak_sampler, resolve_trace, sample_cluster
    from rlscale.learn.traffic import Replay, make_sampler

    seed, period, with_history = job
    history = history_section(with_history)
    sp = spec()
    rng = np.random.default_rng([seed, 24])
    true, declared, peak = sample_cluster(rng, sp)
    sampler = peak_sampler(make_sampler(Replay(str(resolve_trace(sp.trace)), sp.trace_train_days)), peak)
    T = sp.episode_steps
    P = T // period
    days = max(HISTORY_DAYS, history["days"] if history else 0.0)
    eps = ClusterEpisodes(true, P + 1, episode_steps=T, sampler=sampler, history_days=days)
    same = int(rng.integers(0, 2**63 - 1))
    for i in range(P + 1):
        eps.set_rng(i, np.random.default_rng(same))
        eps.reset(i)
    base = calibrated_rule_base(declared, eps, sp.start_level, HISTORY_DAYS, 1, history)  # row 0's history
    probe = Probe(declared, sp.start_level, base, period, 1, history)
    probe.reset(P + 1)
    totals = np.zeros((3, P + 1))
    for _ in range(T):
        _, terms, _ = eps.step_action(probe.act(eps.metrics()))
        totals += np.stack([terms.cost_usd, terms.slo_violation, terms.dropped_fraction])
    d = totals[:, 1:] - totals[:, :1]
    y = free(dict(zip(KEYS, d)))
    return np.stack(probe.rows[:P]).reshape(P, -1), y, d, base


def normalise(x: np.ndarray, mu: np.ndarray, var: np.ndarray) -> np.ndarray:
    """As ``network.logits`` normalises a row: a feature constant in training is held at its mean."""
    from rlscale.policies.network import CONSTANT_IN_TRAINING_VAR

    z = np.where(var > CONSTANT_IN_TRAINING_VAR, (x - mu) / np.sqrt(var + 1e-8), 0.0)
    return np.clip(z, -10.0, 10.0)


def fit(x: np.ndarray, y: np.ndarray, seed: int = 0, epochs: int = 40) -> tuple[list, np.ndarray, np.ndarray]:
    """The 64-64 tanh classifier on normalised rows: its layers ``[(W, b), ...]`` ((out, in) like SB3's) and the
    normalisation (mean, variance)."""
    import torch

    torch.manual_seed(seed)
    mu, sd = x.mean(axis=0), x.var(axis=0)
    xs = torch.tensor(normalise(x, mu, sd), dtype=torch.float32)
    ys = torch.tensor(y, dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.Tanh(), torch.nn.Linear(64, 64),
                              torch.nn.Tanh(), torch.nn.Linear(64, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(ys), generator=gen).split(512):
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xs[idx])[:, 0], ys[idx])
            loss.backward()
            opt.step()
    layers = [(m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy()) for m in net if isinstance(m, torch.nn.Linear)]
    return layers, mu, sd


def export(out: Path, layers: list, mu: np.ndarray, sd: np.ndarray, tau: float, training: dict,
           history: dict | None) -> None:
    """A generalist card whose level head is the start level, or one hotter where the classifier is over ``tau``
    (with history, its forecast head always sizes for the demand now)."""
    from rlscale.policies.network import PolicyWeights, write_exported
    from rlscale.policies.relative import LEVELS, feature_names, nvec

    card = json.loads((ROOT / "models" / "general" / "card.json").read_text())
    start = int(card["calibration"]["start_level"])
    (w1, b1), (w2, b2), (w3, b3) = layers
    hidden = w3.shape[1]
    heads = int(nvec(history is not None).sum())
    action_w = np.zeros((heads, hidden), dtype=np.float32)
    action_b = np.full(heads, -20.0, dtype=np.float32)
    if history is not None:
        action_b[len(LEVELS) + 3] = 20.0
    action_b[start] = 0.0
    action_w[start + 1] = w3[0]
    action_b[start + 1] = b3[0] - math.log(tau / (1.0 - tau))
    action_b[len(LEVELS)] = 20.0  # no rebalance: the node drain and calm repacking do as the rule does
    weights = PolicyWeights(layers=((w1, b1), (w2, b2)), action_w=action_w, action_b=action_b,
                            obs_mean=mu.astype(np.float64), obs_var=sd.astype(np.float64),
                            obs_clip=10.0, obs_eps=1e-8, activation="tanh")
    new = {k: card[k] for k in ("action", "range", "calibration", "versions")}
    if history is not None:
        new["history"] = history
    new.update(name=f"probe-tau{tau:g}", kind="general", obs_features=feature_names(history is not None), evaluation={},
               training={"checkpoint": "supervised on replayed probes", "seed": 0, "timesteps": training["steps"],
                         "command": f"python experiments/probe_learning.py --clusters {training['clusters']} "
                                    f"--period {training['period']} --tau {tau:g}"
                                    f"{' --history --hold %d' % history['hold_steps'] if history else ''}"})
    write_exported(out, weights, new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clusters", type=int, default=300, help="training clusters probed (seeds 0..N-1)")
    ap.add_argument("--period", type=int, default=15, help="intervals a hotter play lasts")
    ap.add_argument("--tau", default="0.5,0.6,0.7", help="thresholds to export, comma-separated")
    ap.add_argument("--history", action="store_true", help="the row with the history features (7 days)")
    ap.add_argument("--hold", type=int, default=1, help="with --history: intervals an exported pick holds")
    ap.add_argument("--out", type=Path, required=True, help="a folder: one exported generalist per threshold")
    args = ap.parse_args()
    jobs = [(seed, args.period, args.history) for seed in range(args.clusters)]
    xs, ys, ds, bases = [], [], [], []
    with ProcessPoolExecutor(2) as ex:
        for k, (x, y, d, base) in enumerate(ex.map(probe_cluster, jobs, chunksize=4)):
            xs.append(x)
            ys.append(y)
            ds.append(d)
            bases.append(base)
            if (k + 1) % 25 == 0:
                print(f"{k + 1}/{len(jobs)} clusters probed", flush=True)
    x, y = np.concatenate(xs), np.concatenate(ys).astype(np.float64)
    d = np.concatenate(ds, axis=1)
    print(f"{len(y)} periods, {y.mean():.1%} free; bases {dict(zip(*np.unique(bases, return_counts=True)))}")
    held = np.arange(len(y)) >= int(0.8 * len(y))  # the last fifth of the clusters judges the fit
    layers, mu, sd = fit(x[~held], y[~held])
    from hotter_periods import auc

    def prob(rows: np.ndarray) -> np.ndarray:
        h = normalise(rows, mu, sd)
        for w, b in layers[:-1]:
            h = np.tanh(h @ w.T + b)
        return 1.0 / (1.0 + np.exp(-(h @ layers[-1][0].T + layers[-1][1])[:, 0]))

    p = prob(x[held])
    print(f"held-out clusters: AUC {auc(p, y[held]):.3f}")
    for tau in (float(t) for t in args.tau.split(",")):
        pick = p > tau
        dd = d[:, held][:, pick]
        print(f"tau {tau}: picks {pick.mean():.1%} of periods, {y[held][pick].mean() if pick.any() else float('nan'):.1%} "
              f"of them free; summed effect: cost {dd[0].sum():+.2f} USD, SLO-violating intervals {dd[1].sum():+.0f}, "
              f"drops {dd[2].sum():+.4f}")
        export(args.out / f"tau{tau:g}", layers, mu, sd, tau,
                  {"clusters": args.clusters, "period": args.period, "steps": int(len(y) * args.period)},
               history_section(args.history, args.hold))
    print(f"exported to {args.out}")


if __name__ == "__main__":
    main()
