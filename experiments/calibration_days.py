"""How much history does the generalist's calibration need, and how strict must it be on that history?

Every case of the generalisation suite, on validation seeds (5000+; the
suite's test seeds 10000+ are not touched), under HPA, the oracle and
``models/general`` with the history of each episode cut to ``--days``
(calibration reads what there is; the card's ``min_days`` is lowered to 1 so
that a short history still calibrates). ``--margin`` judges the replayed days
with DESIGN.md's 1.1x seed-noise margin (``non_inferior``) instead of
``as_safe``'s no-higher-than-HPA. Prints per case the room captured, whether
SLO and drops stay within HPA's (``non_inferior``) and the bases chosen per
seed. A trial kept for the record: ``docs/experiments/history-policy.md``.

    python experiments/calibration_days.py --days 1,2,3,7
    python experiments/calibration_days.py --days 7 --margin
    python experiments/calibration_days.py --days 7 --grid 0.65,0.685,0.72,0.75,0.78,0.81,0.84,0.87,0.9
    python experiments/calibration_days.py --days 1,7 --short-strict 0.8 --short-cap 1

``--short-strict F`` and ``--short-cap K`` apply only to a history of under
three days: each candidate's SLO-violating intervals and drops must be at most
F x HPA's, and the base at most K candidates above the uncalibrated level per
day of history (whether a new service can be calibrated on its first day).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from suite_cases import ROOT, each_case  # the script's folder is on sys.path; this puts the rest there

from rlscale.policies import calibration as cal
from rlscale.policies import make_policy
from rlscale.rollout import run_policy

PLAIN_CHOOSE = cal.choose
"""The shipped rule, kept before ``short_rule`` wraps it (a pool worker runs several cases)."""


def short_history_model(out: Path) -> Path:
    """``models/general`` with a card that calibrates on as little as one day (re-sealed, as the tests do)."""
    from rlscale.atomic import write_text
    from rlscale.policies.card import dumps, seal

    shutil.copytree(ROOT / "models" / "general", out)
    card = json.loads((out / "card.json").read_text())
    card["calibration"]["min_days"] = 1.0
    write_text(out / "card.json", dumps(seal(card)))
    return out


def short_rule(strict: float, cap: int) -> None:
    """Calibrate a history of under three days with SLO and drops at most ``strict`` x HPA's and the base at most
    ``cap`` candidates per day above the uncalibrated level (0: no cap)."""

    def choose(candidates, runs, hpa, owners, n, fallback):
        base = PLAIN_CHOOSE(candidates, runs, hpa, owners, n, fallback)
        days = np.bincount(owners, minlength=n)
        short = (days > 0) & (days < 3)
        if not short.any():
            return base
        safe = cal.as_safe
        cal.as_safe = lambda m, h: all(m[k] <= strict * h[k] + 1e-12 for k in ("slo_violation_rate", "dropped_fraction"))
        try:
            strict_base = PLAIN_CHOOSE(candidates, runs, hpa, owners, n, fallback)
        finally:
            cal.as_safe = safe
        if cap:
            top = np.asarray(candidates)[np.minimum(days * cap, len(candidates) - 1)]
            strict_base = np.minimum(strict_base, top)
        return np.where(short, strict_base, base)

    cal.choose = choose


def one(job: tuple) -> tuple[str, dict]:
    name, scenario, model, days, seeds, margin, grid, strict, cap = job
    if margin:
        cal.as_safe = cal.non_inferior
    if grid:
        cal.CANDIDATES = grid
    if strict < 1.0 or cap:
        short_rule(strict, cap)
    out: dict = {}
    for spec in ["hpa", "oracle"]:
        out[spec] = run_policy(scenario, make_policy(spec, scenario), seeds).mean()
    for d in days:
        pol = make_policy(f"ppo:{model}", scenario)
        out[d] = run_policy(scenario, pol, seeds, history_days=d).mean()
        out[d]["bases"] = [float(b) for b in pol.base]
    return name, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", default="1,2,3,7", help="history cut to this many days, comma-separated")
    ap.add_argument("--seeds", type=int, default=10, help="validation seeds 5000..5000+N-1")
    ap.add_argument("--margin", action="store_true", help="judge the history with the 1.1x margin")
    ap.add_argument("--grid", default="", help="calibrate over these base levels, comma-separated (default: the shipped ones)")
    ap.add_argument("--short-strict", type=float, default=1.0, help="under 3 days: SLO and drops at most F x HPA's")
    ap.add_argument("--short-cap", type=int, default=0, help="under 3 days: base at most K candidates up per day")
    ap.add_argument("--out", type=Path, default=None, help="write the raw means here (JSON)")
    args = ap.parse_args()
    days = [float(d) for d in args.days.split(",")]
    grid = tuple(float(g) for g in args.grid.split(",")) if args.grid else ()
    seeds = list(range(5000, 5000 + args.seeds))
    work = Path(tempfile.mkdtemp(prefix="rlscale-caldays-"))
    model = short_history_model(work / "general")
    res: dict = {}
    for name, out, room in each_case(one, lambda name, sc: (name, sc, model, days, seeds, args.margin, grid,
                                                             args.short_strict, args.short_cap), work):
        res[name] = out
        h = out["hpa"]
        line = f"{name:22s}"
        for d in days:
            r = out[d]
            ok = "ok" if cal.non_inferior(r, h) else "OVER"
            line += f" | {d:g} d: room {(h['cost_usd'] - r['cost_usd']) / room:5.2f} {ok:4s} bases {r['bases']}"
            if d != days[-1]:
                line += f" cost/{days[-1]:g} d {r['cost_usd'] / out[days[-1]]['cost_usd']:.3f}"
        print(line, flush=True)
    if args.out:
        args.out.write_text(json.dumps({k: {str(d): v for d, v in o.items()} for k, o in res.items()}, indent=1))


if __name__ == "__main__":
    main()
