"""Every field of a model card is validated, and the whole card is under its checksum (issue 27, item 1).

Each case edits one field of a real shipped card (``models/web-diurnal``, a
specialist, and ``models/general``, the generalist) and recomputes both
checksums, as someone who edits a card on purpose would: the schema must then
refuse it in one line naming the field. The same edit without the recomputed
``card_sha256`` is refused by the checksum. A representative subset goes
through the real CLI (``simulate`` and ``serve``): exit 2, one line, no
traceback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rlscale.config import ConfigError
from rlscale.policies.card import MAX_CARD_BYTES, card_digest, seal
from rlscale.policies.network import load_exported

ROOT = Path(__file__).resolve().parents[1]
NAN, INF = "__NaN__", "__Infinity__"


def set_path(card: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node: Any = card
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


DELETE = object()


def write_card(model: Path, card: dict[str, Any]) -> None:
    """The card as JSON; the NaN/Infinity markers become the non-standard constants Python's json would write."""
    text = json.dumps(card, indent=2).replace(f'"{NAN}"', "NaN").replace(f'"{INF}"', "Infinity")
    (model / "card.json").write_text(text)


def tampered(tmp_path: Path, source: str, edits: dict[str, Any], *, reseal: bool = True) -> Path:
    model = Path(shutil.copytree(ROOT / "models" / source, tmp_path / source))
    card = json.loads((model / "card.json").read_text())
    for path, value in edits.items():
        set_path(card, path, value)
    if reseal and NAN not in json.dumps(card) and INF not in json.dumps(card):
        card = seal(card)
    write_card(model, card)
    return model


SPECIALIST = [
    # obs_spec: every constant divides a metric
    ("obs_spec.replica_rps", {"obs_spec.replica_rps": "abc"}),
    ("obs_spec.replica_rps.0", {"obs_spec.replica_rps": [0]}),
    ("obs_spec.replica_rps.0", {"obs_spec.replica_rps": [-20.0]}),
    ("NaN", {"obs_spec.replica_rps": [NAN]}),
    ("Infinity", {"obs_spec.replica_rps": [INF]}),
    ("1e400", {"obs_spec.replica_rps": ["__1e400__"]}),
    ("obs_spec: replica_rps: 2 values for 1 services", {"obs_spec.replica_rps": [20.0, 20.0]}),
    ("obs_spec: not what scenario_config derives", {"obs_spec.replica_rps": [40.0]}),
    ("obs_spec.ref_replicas.0", {"obs_spec.ref_replicas": [0]}),
    ("obs_spec.ref_replicas.0", {"obs_spec.ref_replicas": ["120"]}),
    ("obs_spec.slo_target_s.0", {"obs_spec.slo_target_s": [0]}),
    ("obs_spec.slo_target_s.0", {"obs_spec.slo_target_s": [-0.25]}),
    ("obs_spec.max_nodes.0", {"obs_spec.max_nodes": [0]}),
    ("obs_spec: max_nodes: 2 values for 1 pools", {"obs_spec.max_nodes": [40.0, 40.0]}),
    ("obs_spec.step_s", {"obs_spec.step_s": "sixty"}),
    ("obs_spec.step_s", {"obs_spec.step_s": 0}),
    ("obs_spec.cost_ref_usd_h", {"obs_spec.cost_ref_usd_h": None}),
    ("obs_spec.cost_ref_usd_h", {"obs_spec.cost_ref_usd_h": 0}),
    ("obs_spec.cost_ref_usd_h", {"obs_spec.cost_ref_usd_h": -3.0}),
    ("obs_spec.services", {"obs_spec.services": []}),
    ("obs_spec.pools", {"obs_spec.pools": 5}),
    ("obs_spec", {"obs_spec": DELETE}),
    # action_spec: bounds every decision
    ("action_spec.max_replicas.0", {"action_spec.max_replicas": [1e30]}),
    ("action_spec: min_replicas[0] (500) exceeds max_replicas[0] (1)", {"action_spec.min_replicas": [500], "action_spec.max_replicas": [1]}),
    ("action_spec.min_replicas.0", {"action_spec.min_replicas": [-1]}),
    ("action_spec.max_replicas.0", {"action_spec.max_replicas": [0]}),
    ("action_spec: max_replicas: 2 values for 1 services", {"action_spec.max_replicas": [120, 120]}),
    ("action_spec: not what scenario_config derives", {"action_spec.max_replicas": [60]}),
    ("action_spec.max_step", {"action_spec.max_step": 0}),
    ("action_spec.max_step", {"action_spec.max_step": 1.5}),
    ("action_spec: min_replicas: 1 values for 2 services", {"action_spec.n_services": 2}),
    # the network, the checksums, the record fields
    ("network.layers", {"network.layers": -1}),
    ("network.layers", {"network.layers": "2"}),
    ("network.layers", {"network.layers": True}),
    ("network.activation", {"network.activation": "sigmoid"}),
    ("policy_sha256", {"policy_sha256": "abc"}),
    ("format", {"format": "rlscale-policy/2"}),
    ("obs_features", {"obs_features": ["x"]}),
    ("scenario: 'other', but scenario_config is 'web-diurnal'", {"scenario": "other"}),
    ("scenario_config.services[0].max_replicas", {"scenario_config.services.0.max_replicas": 0}),
    ("scenario_config", {"scenario_config": "x"}),
    ("training.timesteps", {"training.timesteps": -5}),
    ("training.config.randomisation: scale", {"training.config.randomisation": {"scale": [2.0, 1.0]}}),
    ("training.config.randomise", {"training.config.randomise": "yes"}),
    ("evaluation.cost_vs_hpa", {"evaluation.cost_vs_hpa": "cheap"}),
    ("evaluation.held_out_seeds.0", {"evaluation.held_out_seeds": [-1]}),
    ("versions.numpy", {"versions.numpy": 2}),
    ("name", {"name": ""}),
    ("surprise", {"surprise": 1}),
    ("version", {"version": 5}),
    ("duplicate key 'name'", {"__duplicate__": "name"}),
]

GENERALIST = [
    ("range.max_replicas", {"range.max_replicas": 5}),
    ("range.max_replicas.0", {"range.max_replicas": ["a", "b"]}),
    ("range.max_replicas", {"range.max_replicas": [0, 1, 2]}),
    ("range.max_replicas.0", {"range.max_replicas": [None, None]}),
    ("range.max_replicas", {"range.max_replicas": {"lo": 1, "hi": 2}}),
    ("NaN", {"range.lead_steps": [NAN, NAN]}),
    ("Infinity", {"range.max_replicas": [1, INF]}),
    ("range: price_ratio: expected [low, high] with low <= high", {"range.price_ratio": [3.0, 1.0]}),
    ("range.slo_over_work.0", {"range.slo_over_work": [-1.0, 2.0]}),
    ("range.lead_steps", {"range": {}}),
    ("range.extra", {"range.extra": [0.0, 1.0]}),
    ("kind", {"kind": "special"}),
    ("action: levels", {"action.levels": [0.5]}),
    ("action.u_max", {"action.u_max": 0}),
    ("action.down_window_steps", {"action.down_window_steps": -1}),
    ("obs_features", {"obs_features": []}),
    ("network.layers", {"network.layers": 33}),
    ("training.seed", {"training.seed": -1}),
    ("history.days", {"history": {"days": 0}}),
    ("history: min_days (9) exceeds days (7)", {"history": {"days": 7, "min_days": 9}}),
    ("history.hold_steps", {"history": {"days": 7, "hold_steps": "2"}}),
    ("obs_features: not this rlscale's generalist features with history", {"history": {"days": 7}}),
]

CASES = [("web-diurnal", m, e) for m, e in SPECIALIST] + [("general", m, e) for m, e in GENERALIST]
IDS = [f"{src}:{next(iter(e))}=" + ("<deleted>" if next(iter(e.values())) is DELETE
                                    else json.dumps(next(iter(e.values())))[:24]) for src, _, e in CASES]


def build(tmp_path: Path, source: str, edits: dict[str, Any], reseal: bool = True) -> Path:
    if "__duplicate__" in edits:
        model = tampered(tmp_path, source, {}, reseal=reseal)
        text = (model / "card.json").read_text()
        key = edits["__duplicate__"]
        (model / "card.json").write_text(text.replace("{", f'{{\n  "{key}": "first",', 1))
        return model
    if any(v == ["__1e400__"] for v in edits.values()):
        model = tampered(tmp_path, source, {k: [12345.678] for k in edits}, reseal=reseal)
        (model / "card.json").write_text((model / "card.json").read_text().replace("12345.678", "1e400"))
        return model
    return tampered(tmp_path, source, edits, reseal=reseal)


def refusal(model: Path) -> str:
    with pytest.raises(ConfigError) as err:
        load_exported(model)
    message = str(err.value)
    assert "\n" not in message and len(message) < 500, message
    assert message.startswith(f"{model / 'card.json'}: "), message
    return message


def test_there_are_at_least_forty_tampered_cards() -> None:
    assert len(CASES) >= 40 and len(GENERALIST) >= 15


@pytest.mark.parametrize("source, match, edits", CASES, ids=IDS)
def test_a_card_edited_and_rehashed_is_refused_in_one_line_naming_the_field(tmp_path, source, match, edits) -> None:
    message = refusal(build(tmp_path, source, edits))
    assert match in message or match in message.replace("[", ".").replace("]", ""), message


@pytest.mark.parametrize("source, match, edits", CASES[::5], ids=IDS[::5])
def test_a_card_edited_without_its_checksum_is_refused_by_the_checksum(tmp_path, source, match, edits) -> None:
    message = refusal(build(tmp_path, source, edits, reseal=False))
    assert ("does not match its card_sha256" in message or "not valid JSON" in message
            or "card_sha256: required" in message), message


def test_the_shipped_cards_carry_a_checksum_over_the_whole_card() -> None:
    for card_path in sorted((ROOT / "models").glob("*/card.json")):
        card = json.loads(card_path.read_text())
        assert card["card_sha256"] == card_digest(card), card_path
        load_exported(card_path.parent)


def test_a_card_without_card_sha256_is_refused_and_says_how_to_add_it(tmp_path) -> None:
    message = refusal(tampered(tmp_path, "web-diurnal", {"card_sha256": DELETE}, reseal=False))
    assert "card_sha256: required" in message and "re-export" in message


def test_reformatting_a_card_keeps_its_checksum(tmp_path) -> None:
    model = Path(shutil.copytree(ROOT / "models" / "web-diurnal", tmp_path / "m"))
    card = json.loads((model / "card.json").read_text())
    (model / "card.json").write_text(json.dumps(card, separators=(",", ":")))
    assert load_exported(model).card["card_sha256"] == card["card_sha256"]


def test_a_card_over_one_mebibyte_is_refused_with_the_size_message(tmp_path) -> None:
    model = tampered(tmp_path, "web-diurnal", {"evaluation.note": "x" * MAX_CARD_BYTES})
    message = refusal(model)
    assert f"at most {MAX_CARD_BYTES}" in message and "JSON" not in message


def test_documented_safe_acceptance_extra_evaluation_fields_are_carried_not_read(tmp_path) -> None:
    """``evaluation`` is a record for people: an extra field in it loads (docs/SERVING.md says so)."""
    model = tampered(tmp_path, "web-diurnal", {"evaluation.note": "re-run on 2026-12-01"})
    assert load_exported(model).card["evaluation"]["note"] == "re-run on 2026-12-01"


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rlscale.cli", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


CLI_CASES = [
    ("web-diurnal", {"obs_spec.replica_rps": "abc"}, "obs_spec.replica_rps"),
    ("web-diurnal", {"obs_spec.cost_ref_usd_h": None}, "obs_spec.cost_ref_usd_h"),
    ("web-diurnal", {"obs_spec.slo_target_s": [0]}, "obs_spec.slo_target_s"),
    ("web-diurnal", {"action_spec.min_replicas": [500], "action_spec.max_replicas": [1]}, "min_replicas[0] (500) exceeds"),
    ("web-diurnal", {"action_spec.max_replicas": [1e30]}, "action_spec.max_replicas"),
    ("general", {"range.max_replicas": [None, None]}, "range.max_replicas"),
    ("general", {"range.lead_steps": [NAN, NAN]}, "NaN is not a JSON number"),
]


@pytest.mark.slow
@pytest.mark.parametrize("command", ["simulate", "serve"])
@pytest.mark.parametrize("source, edits, match", CLI_CASES, ids=[f"{s}:{next(iter(e))}" for s, e, _ in CLI_CASES])
def test_simulate_and_serve_refuse_a_tampered_card_with_exit_2_and_one_line(tmp_path, command, source, edits, match) -> None:
    model = build(tmp_path, source, edits)
    args = ["--policy", f"ppo:{model}", "--steps", "2"]
    if command == "serve":
        args += ["--port", "0", "--speedup", "1e6", "--audit-log", str(tmp_path / "audit.jsonl")]
    result = cli(command, *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert match in result.stderr, result.stderr
