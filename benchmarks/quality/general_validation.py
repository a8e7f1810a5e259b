"""The generalist on the shipped scenarios' validation seeds: its checkpoint score, and the levels it picks.

The score is the one training selects checkpoints by (mean cost over HPA's,
plus 100x any SLO or drop excess over HPA's; lower is better), so a decoder
change is judged on the same footing as a checkpoint. The level shares show
how far the network itself departs from the 72% level it starts from: the
decoder (margin, windows, repacking) does much of the generalist's work.
Validation seeds only (5000 and up), never the generalisation suite.

    python benchmarks/quality/general_validation.py [--model models/general] [--seeds 8] [--no-repack]

No anchor: a quality table (the checkpoint score, cost over HPA's on the same seeds).
"""

from __future__ import annotations

import argparse

import numpy as np

from rlscale.config import GeneralSpec, load_scenario
from rlscale.learn.general_eval import evaluate_general
from rlscale.policies import make_policy
from rlscale.policies.network import load_exported
from rlscale.policies.general import policy_logits
from rlscale.policies.relative import LEVELS
from rlscale.rollout import run_policy

SCENARIOS = ("web-diurnal", "flash-crowd", "mixed-pools", "ml-platform")


def level_shares(model: str, name: str, seeds: list[int], repack: bool) -> np.ndarray:
    sc = load_scenario(name)
    policy = make_policy(f"ppo:{model}" + ("" if repack else ":repack=0"), sc)
    picked: list[np.ndarray] = []

    def act(m):  # the serving path, recording the network's level choice on the way
        lv, rb = policy_logits(policy.exported.weights, policy.observe(m), m.n)
        picked.append(lv.argmax(axis=2).ravel())
        return policy.step_raw(m, policy.read_picks(lv.argmax(axis=2)), rb.argmax(axis=1))

    policy.act = act
    run_policy(sc, policy, seeds)
    return np.bincount(np.concatenate(picked), minlength=len(LEVELS)) / sum(len(p) for p in picked)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/general")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--no-repack", action="store_true", help="without the decoder's calm repacking")
    args = ap.parse_args()
    seeds = list(range(5000, 5000 + args.seeds))
    result = evaluate_general(load_exported(args.model).weights, GeneralSpec(validation=list(SCENARIOS)), seeds, None,
                              repack=not args.no_repack)
    print(f"validation score {result.score:.4f} on seeds {seeds[0]}..{seeds[-1]}; cost over HPA's: "
          + ", ".join(f"{k} {v['cost_vs_hpa']:.3f}" for k, v in result.summary()["cases"].items()) + "\n")
    print("| scenario | " + " | ".join(f"{lv:.0%}" for lv in LEVELS) + " |")
    print("|---|" + "---:|" * len(LEVELS))
    for name in SCENARIOS:
        shares = level_shares(args.model, name, seeds, not args.no_repack)
        print(f"| {name} | " + " | ".join(f"{s:.1%}" for s in shares) + " |", flush=True)


if __name__ == "__main__":
    main()
