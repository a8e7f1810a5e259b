"""An exported policy is a validated format: what a hostile or broken model file costs, and what it says.

Each case builds a real damaged export (a zip bomb member, a huge layer count,
a pickled member, a card without its hash...) and checks that loading stops
at once, in one line naming the file, and that the commands exit 2 with no
traceback.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from rlscale.config import ConfigError
from rlscale.policies.card import seal
from rlscale.policies.model_file import MemberSpec, read_npz
from rlscale.policies.network import load_exported

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_serve import serve_cmd  # noqa: E402


def arrays_of(model: Path) -> dict[str, np.ndarray]:
    with np.load(model / "policy.npz") as z:
        return {k: z[k] for k in z.files}


def rewrite(model: Path, arrays: dict[str, np.ndarray] | None = None, raw: bytes | None = None, **card_changes) -> Path:
    """Replace the model's npz (arrays or raw bytes) and card fields; the card's checksums follow the new npz and card."""
    npz = model / "policy.npz"
    if raw is not None:
        npz.write_bytes(raw)
    elif arrays is not None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        npz.write_bytes(buf.getvalue())
    card = json.loads((model / "card.json").read_text())
    card["policy_sha256"] = hashlib.sha256(npz.read_bytes()).hexdigest()
    for key, value in card_changes.items():
        if value is None:
            card.pop(key, None)
        else:
            card[key] = value
    (model / "card.json").write_text(json.dumps(seal(card)))
    return model


@pytest.fixture
def model(tmp_path, exported_policy):
    return Path(shutil.copytree(exported_policy, tmp_path / "model"))


def refused(model: Path, match: str) -> str:
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_exported(model)
    message = str(err.value)
    assert match in message, message
    assert "\n" not in message and len(message) < 400
    assert time.perf_counter() - t0 < 2.0
    return message


def test_a_card_without_policy_sha256_is_refused(model):
    refused(rewrite(model, policy_sha256=None), "policy_sha256: Field required")


def test_an_extra_member_is_refused_without_decompressing_it(model):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        with np.load(model / "policy.npz") as old:
            for name in old.files:
                with z.open(f"{name}.npy", "w") as f:
                    np.lib.format.write_array(f, old[name])
        with z.open("bomb.npy", "w") as f:  # 64 MiB of zeros, about 64 KB deflated
            np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (8 << 20,)})
            for _ in range(256):
                f.write(b"\0" * (1 << 20))
    assert len(buf.getvalue()) < 2 << 20
    refused(rewrite(model, raw=buf.getvalue()), "unexpected members ['bomb.npy']")


def test_a_member_larger_than_its_limit_is_refused_from_its_declared_size(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, w=np.zeros((512, 512), dtype=np.float32))
    with pytest.raises(ConfigError, match="declares 1048704 bytes; at most 65536 per array"):
        read_npz(path, {"w": MemberSpec("f", (None, None))}, max_member_bytes=65536)
    assert read_npz(path, {"w": MemberSpec("f", (None, None))})["w"].shape == (512, 512)


def test_ten_million_layers_is_one_short_line_at_once(model):
    refused(rewrite(model, network={"activation": "tanh", "layers": 10_000_000}), "network.layers: Input should be less than or equal to 32")


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda a: {**a, "obs_mean": np.array([{"x": 1}], dtype=object)}, "dtype object"),
        (lambda a: {**a, "action_b": a["action_b"].astype(np.int64)}, "member 'action_b': dtype int64"),
        (lambda a: {**a, "obs_clip": np.array([10.0, 10.0])}, "member 'obs_clip': shape (2,)"),
        (lambda a: {**a, "pi_0_w": a["pi_0_w"][None]}, "member 'pi_0_w': shape"),
        (lambda a: {k: v for k, v in a.items() if k != "pi_1_b"}, "missing arrays ['pi_1_b']"),
        (lambda a: {**a, "obs_var": -a["obs_var"]}, "normalisation statistics out of range"),
        (lambda a: {**a, "obs_var": a["obs_var"][:-1]}, "normalisation statistics have shape"),
    ],
    ids=["pickled", "int-dtype", "scalar-shape", "rank", "missing", "negative-variance", "short"],
)
def test_members_with_the_wrong_dtype_shape_or_content_are_refused_in_one_line(model, damage, match):
    refused(rewrite(model, damage(arrays_of(model))), match)


@pytest.mark.parametrize(
    "card_change, match",
    [
        ({"obs_spec": "x"}, "card.json: obs_spec: Input should be a valid dictionary"),
        ({"obs_spec": {"services": 5}}, "card.json: obs_spec.services: Input should be a valid list"),
        ({"action_spec": None}, "card.json: action_spec: Field required"),
        ({"network": [1]}, "card.json: network: Input should be a valid dictionary"),
    ],
)
def test_malformed_cards_are_one_line(model, card_change, match):
    refused(rewrite(model, **card_change), match)


@pytest.mark.parametrize("cut", [100, 1000, -200])
def test_a_truncated_or_bit_flipped_npz_is_one_line(model, cut):
    data = (model / "policy.npz").read_bytes()
    if cut > 0:
        damaged = data[:cut]
    else:
        damaged = bytearray(data)
        damaged[cut] ^= 0xFF
        damaged = bytes(damaged)
    refused(rewrite(model, raw=damaged), "policy.npz")


def test_the_cli_exits_2_with_one_line_and_no_traceback_on_a_damaged_model(model, tmp_path):
    rewrite(model, network={"activation": "tanh", "layers": 10_000_000})
    result = subprocess.run([sys.executable, "-m", "rlscale.cli", "simulate", "--policy", f"ppo:{model}", "--steps", "2"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert len(result.stderr) < 400


def test_serve_refuses_a_model_for_other_services_unless_fallback_only(tmp_path, exported_policy):
    scenario = tmp_path / "other.yaml"
    text = (Path(__file__).resolve().parents[1] / "envs" / "web-diurnal.yaml").read_text()
    scenario.write_text(text.replace("name: api", "name: frontend"))
    base = ["--model", str(exported_policy), "--scenario", str(scenario), "--steps", "3", "--speedup", "1e6", "--port", "0",
            "--audit-log", str(tmp_path / "a.jsonl")]
    refused_run = subprocess.run(serve_cmd(*base), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert refused_run.returncode == 2 and refused_run.stderr.count("\n") == 1
    assert "trained for services ['api']" in refused_run.stderr and "--fallback-only" in refused_run.stderr
    allowed = subprocess.run(serve_cmd(*base, "--fallback-only"), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert allowed.returncode == 0, allowed.stderr
    decisions = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines() if '"decision"' in line]
    assert len(decisions) == 3 and all(d["fallback"]["reason"] == "model_mismatch" for d in decisions)
