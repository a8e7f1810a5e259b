"""Regenerate the README's generated blocks from the code: the results table and the `simulate` examples.

A block sits between two markers in ``README.md``::

    <!-- begin generated: NAME (python benchmarks/docs/readme.py) -->
    ...
    <!-- end generated: NAME -->

- ``results``: the shipped policies against HPA, read from each ``models/*/card.json``
  (the held-out evaluation ``rlscale export`` wrote), with churn (scaling actions per hour);
- ``simulate``: the output of the README's example ``rlscale simulate`` commands, run now.

Usage: ``python benchmarks/docs/readme.py`` rewrites ``README.md``; ``--check`` only reports
(exit 1) which blocks differ from what the code produces, which is what
``tests/test_readme.py`` runs, so a README that drifts from the code fails the tests.

No anchor: a generator (the README's tables from the models' cards and the CLI's output).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MODELS = ROOT / "models"
ORDER = ("web-diurnal", "flash-crowd", "mixed-pools", "ml-platform", "local")
LABELS = {"local": "local (simulated)"}
SIMULATE_EXAMPLES = (
    ("simulate", "--scenario", "web-diurnal", "--policy", "hpa"),
    ("simulate", "--scenario", "web-diurnal", "--policy", "ppo:models/web-diurnal"),
)
WIDTH = 100  # terminal width the examples are rendered at
BLOCK = re.compile(
    r"(<!-- begin generated: (?P<name>[\w-]+) \(python benchmarks/docs/readme.py\) -->\n)(?P<body>.*?)(<!-- end generated: (?P=name) -->)",
    re.S,
)


def _pct(x: float) -> str:
    return "0" if x == 0 else f"{100 * x:.2f}%"


def _usd(x: float) -> str:
    return f"{x:.2f}" if x >= 1 else f"{x:.4f}"


def card_row(name: str, card: dict[str, Any]) -> list[str]:
    """One table row from a card: costs, their ratio, SLO violations, drops and churn of PPO and HPA."""
    ev = card["evaluation"]
    ppo, hpa = ev["ppo"], ev["hpa"]
    sc = card["scenario_config"]
    steps = card["training"]["config"]["eval"].get("episode_steps") or sc["episode_steps"]
    hours = steps * sc["step_s"] / 3600.0
    return [
        LABELS.get(name, name), _usd(ppo["cost_usd"]), _usd(hpa["cost_usd"]), f"{ev['cost_vs_hpa']:.3f}",
        _pct(ppo["slo_violation_rate"]), _pct(hpa["slo_violation_rate"]),
        _pct(ppo["dropped_fraction"]), _pct(hpa["dropped_fraction"]),
        f"{ppo['scaling_actions'] / hours:.1f}", f"{hpa['scaling_actions'] / hours:.1f}",
    ]


def results_block(models: Path = MODELS) -> str:
    """The README's results table: one row per shipped PPO policy (a ``card.json`` with an evaluation against HPA)."""
    cards = {}
    for path in sorted(models.glob("*/card.json")):
        card = json.loads(path.read_text())
        ev = card.get("evaluation") or {}
        if {"ppo", "hpa", "cost_vs_hpa"} <= set(ev) and "scenario_config" in card:
            cards[path.parent.name] = card
    names = [n for n in ORDER if n in cards] + sorted(n for n in cards if n not in ORDER)
    head = ["scenario", "PPO cost (USD/day)", "HPA cost", "PPO / HPA", "PPO SLO violations", "HPA SLO violations",
            "PPO dropped", "HPA dropped", "PPO actions/h", "HPA actions/h"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    lines += ["| " + " | ".join(card_row(n, cards[n])) + " |" for n in names]
    return "\n".join(lines) + "\n"


def simulate_block() -> str:
    """The example commands and their output, rendered at ``WIDTH`` columns."""
    from rlscale import cli

    parts = []
    saved = cli.console.width
    cli.console.width = WIDTH
    try:
        for argv in SIMULATE_EXAMPLES:
            with cli.console.capture() as capture:
                code = cli.main(list(argv))
            if code != 0:
                raise SystemExit(f"rlscale {' '.join(argv)} exited {code}")
            body = "\n".join(line.rstrip() for line in capture.get().splitlines())
            parts.append(f"$ rlscale {' '.join(argv)}\n{body}\n")
    finally:
        cli.console.width = saved
    return "```\n" + "\n".join(parts) + "```\n"


GENERATORS = {"results": results_block, "simulate": simulate_block}


def render(text: str, only: set[str] | None = None) -> tuple[str, list[str]]:
    """``text`` with every generated block (or those in ``only``) regenerated; and the names of blocks that changed."""
    changed: list[str] = []

    def replace(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in GENERATORS:
            raise SystemExit(f"README.md: unknown generated block {name!r} (known: {', '.join(GENERATORS)})")
        if only is not None and name not in only:
            return m.group(0)
        body = GENERATORS[name]()
        if body != m.group("body"):
            changed.append(name)
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(replace, text), changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report blocks that differ (exit 1) instead of rewriting")
    parser.add_argument("--only", action="append", choices=sorted(GENERATORS), help="regenerate only this block")
    args = parser.parse_args(argv)
    text = README.read_text()
    new, changed = render(text, set(args.only) if args.only else None)
    if args.check:
        for name in changed:
            print(f"README.md: generated block {name!r} differs from the code's output (python benchmarks/docs/readme.py)")
        return 1 if changed else 0
    if changed:
        from rlscale.atomic import write_text

        write_text(README, new)
    print(f"README.md: {', '.join(changed) or 'nothing'} regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
