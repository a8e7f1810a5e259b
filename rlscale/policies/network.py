"""The exported network and its model file: the layer below both the specialist (``ppo``) and the generalist.

Serving must not unpickle anything (a model file from elsewhere must not be
able to run code) and must not need torch, so an exported policy is plain
arrays plus a JSON card, and the forward pass below reproduces SB3's
deterministic ``predict`` for an ``MlpPolicy`` over a ``MultiDiscrete`` action.
"""

from __future__ import annotations

import functools
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit

from rlscale.atomic import finite, staged_dir
from rlscale.config import MODELS_DIR, ConfigError, read_user_bytes
from rlscale.policies.card import CARD_FORMAT, GENERAL_KIND, MAX_CARD_BYTES, GeneralCard, SpecialistCard, check_card_digest
from rlscale.policies.card import dumps as card_dumps
from rlscale.policies.card import parse_card_bytes, seal, validate_card
from rlscale.policies.model_file import check_sha256, policy_members, read_npz
from rlscale.spaces import ActionSpec, ObsSpec

ACTIVATIONS = ("relu", "tanh")


@dataclass(frozen=True)
class PolicyWeights:
    """The arrays of a policy network and the observation normalisation it was trained with."""

    layers: tuple[tuple[np.ndarray, np.ndarray], ...]
    action_w: np.ndarray
    action_b: np.ndarray
    obs_mean: np.ndarray
    obs_var: np.ndarray
    obs_clip: float
    obs_eps: float
    activation: str

    @functools.cached_property
    def obs_std(self) -> np.ndarray:
        return np.sqrt(self.obs_var + self.obs_eps)

    @functools.cached_property
    def packed(self) -> "PackedNetwork":
        return PackedNetwork.of(self)

    @functools.cached_property
    def obs_live(self) -> np.ndarray:
        """Features that moved in training; the others are held at their training value (see ``logits``)."""
        return self.obs_var > CONSTANT_IN_TRAINING_VAR

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {
            "action_w": self.action_w,
            "action_b": self.action_b,
            "obs_mean": self.obs_mean,
            "obs_var": self.obs_var,
            "obs_clip": np.array(self.obs_clip),
            "obs_eps": np.array(self.obs_eps),
        }
        for i, (w, b) in enumerate(self.layers):
            arrays[f"pi_{i}_w"] = w
            arrays[f"pi_{i}_b"] = b
        return arrays


# VecNormalize's running variance of a feature that never moved in training ends near 1e-4 / steps (~1e-11).
CONSTANT_IN_TRAINING_VAR = 1e-9


def logits(weights: PolicyWeights, obs: np.ndarray) -> np.ndarray:
    """Action logits ``[N, A]`` (float32) for raw (unnormalised) observations ``[N, D]``.

    A feature that was constant in training is fed at its training value: its
    variance is ~0, so on a real cluster the smallest change in it would
    saturate the input at the clip, and the network never learned what it means.
    """
    if obs.shape[0] >= BLAS_FROM:
        return _logits_blas(weights, obs)
    packed = weights.packed
    out = np.empty((obs.shape[0], packed.dims[-1]), dtype=np.float32)
    _mlp(_rows(obs), *packed.arrays, out, _NO_SEGMENTS, _NO_ACTIONS)
    return out


BLAS_FROM = 64
"""From this many rows a call goes through numpy's matrix products (BLAS's SIMD tanh and blocked products win
on a batch: 1,000 generalist rows took 5.2 ms row by row); below it, one compiled call (a decision for one
cluster: 9 us against numpy's 27). The two agree to ~1e-5 in the logits; no action differed on 93,000
observations of the shipped policies nor on 30,000 rows of the generalist."""


def _logits_blas(weights: PolicyWeights, obs: np.ndarray) -> np.ndarray:
    z = np.where(weights.obs_live, (obs - weights.obs_mean) / weights.obs_std, 0.0)
    x = np.clip(z, -weights.obs_clip, weights.obs_clip).astype(np.float32)
    for w, b in weights.layers:
        x = x @ w.T + b
        if weights.activation == "relu":
            np.maximum(x, 0.0, out=x)
        else:
            np.tanh(x, out=x)
    return x @ weights.action_w.T + weights.action_b


def deterministic_actions(weights: PolicyWeights, nvec: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """Argmax of each MultiDiscrete segment: SB3's ``predict(obs, deterministic=True)``, in one compiled call."""
    packed = weights.packed
    ends = _segment_ends(np.asarray(nvec, dtype=np.int64).tobytes())
    actions = np.empty((obs.shape[0], ends.shape[0]), dtype=np.int64)
    if obs.shape[0] >= BLAS_FROM:
        out = _logits_blas(weights, obs)
        for k, (lo, hi) in enumerate(zip([0, *ends[:-1].tolist()], ends.tolist())):
            actions[:, k] = out[:, lo:hi].argmax(axis=1)
        return actions
    out = np.empty((obs.shape[0], packed.dims[-1]), dtype=np.float32)
    _mlp(_rows(obs), *packed.arrays, out, ends, actions)
    return actions


def _rows(obs: np.ndarray) -> np.ndarray:
    """Observations as ``_mlp`` takes them: float32 (the builders') or float64, C order; float32 is widened in
    the compiled code exactly as numpy widens it against the float64 statistics."""
    if type(obs) is np.ndarray and obs.dtype in _NATIVE and obs.flags.c_contiguous:
        return obs
    return np.ascontiguousarray(obs, dtype=np.float64)


_NATIVE = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass(frozen=True)
class PackedNetwork:
    """The network as flat arrays for ``_mlp``: one compiled signature serves every depth and width."""

    dims: tuple[int, ...]
    arrays: tuple[Any, ...]

    @classmethod
    def of(cls, w: PolicyWeights) -> "PackedNetwork":
        linear = [*w.layers, (w.action_w, w.action_b)]
        dims = (w.obs_mean.shape[0], *(int(weight.shape[0]) for weight, _ in linear))
        w_flat = np.concatenate([np.ascontiguousarray(weight.T, dtype=np.float32).ravel() for weight, _ in linear])
        b_flat = np.concatenate([np.asarray(bias, dtype=np.float32) for _, bias in linear])
        arrays = (
            np.asarray(w.obs_live, dtype=np.bool_), np.ascontiguousarray(w.obs_mean, dtype=np.float64),
            np.ascontiguousarray(w.obs_std, dtype=np.float64), float(w.obs_clip), w_flat, b_flat,
            np.array(dims, dtype=np.int64), w.activation == "relu",
        )
        return cls(dims, arrays)


_NO_SEGMENTS = np.zeros(0, dtype=np.int64)
_NO_ACTIONS = np.zeros((0, 0), dtype=np.int64)


@functools.lru_cache(maxsize=64)
def _segment_ends(nvec: bytes) -> np.ndarray:
    """Where each MultiDiscrete segment ends, keyed by ``nvec.tobytes()`` (int64)."""
    return np.cumsum(np.frombuffer(nvec, dtype=np.int64))


@njit(cache=True)
def _mlp(obs, live, mean, std, clip, w_flat, b_flat, dims, relu, out, ends, actions):  # type: ignore[no-untyped-def]
    """Normalise, clip, the hidden layers (tanh or relu) and the action layer, row by row; then, if ``ends`` is
    not empty, the argmax of each segment ``[ends[k-1], ends[k])`` (the first maximum, as numpy's).

    The normalisation is VecNormalize's in float64, the network float32 as in torch. Each output sums its
    inputs in a fixed order, so below ``BLAS_FROM`` rows a row's logits never depend on the batch it came in.
    """
    n_linear = dims.shape[0] - 1
    width = 0
    for k in range(dims.shape[0]):
        width = max(width, dims[k])
    x = np.empty(width, dtype=np.float32)
    h = np.empty(width, dtype=np.float32)
    for n in range(obs.shape[0]):
        for i in range(dims[0]):
            if live[i]:
                z = (obs[n, i] - mean[i]) / std[i]
                if z < -clip:
                    z = -clip
                elif z > clip:
                    z = clip
                x[i] = np.float32(z)
            else:
                x[i] = np.float32(0.0)
        w_at = 0
        b_at = 0
        for layer in range(n_linear):
            d_in = dims[layer]
            d_out = dims[layer + 1]
            for j in range(d_out):
                h[j] = np.float32(0.0)
            for i in range(d_in):
                xi = x[i]
                row = w_flat[w_at + i * d_out: w_at + (i + 1) * d_out]  # a slice, so that LLVM vectorises over j
                for j in range(d_out):
                    h[j] += xi * row[j]
            last = layer == n_linear - 1
            for j in range(d_out):
                v = h[j] + b_flat[b_at + j]
                if not last:
                    if relu:
                        v = max(v, np.float32(0.0))
                    else:
                        v = np.tanh(v)
                x[j] = v
            w_at += d_in * d_out
            b_at += d_out
        for j in range(dims[n_linear]):
            out[n, j] = x[j]
        start = 0
        for k in range(ends.shape[0]):
            best = start
            for j in range(start, ends[k]):
                if out[n, j] != out[n, j]:
                    best = j
                    break
                if out[n, j] > out[n, best]:
                    best = j
            actions[n, k] = best - start
            start = ends[k]


@dataclass(frozen=True)
class ExportedPolicy:
    """Weights and card; a generalist card (``kind: general``) has no fixed obs/action spec."""

    weights: PolicyWeights
    card: dict[str, Any]
    obs_spec: ObsSpec  # type: ignore[assignment]
    action_spec: ActionSpec  # type: ignore[assignment]
    checked: SpecialistCard | GeneralCard | None = None

    @property
    def general(self) -> bool:
        return self.card.get("kind") == GENERAL_KIND


def _fail(path: Path, what: str) -> ConfigError:
    return ConfigError(f"{path}: {what}")


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory by path, or by name under ``models/``."""
    p = Path(path)
    if not p.exists() and not p.is_absolute():
        for base in (MODELS_DIR, MODELS_DIR.parent):
            if (base / p).exists():
                p = base / p
                break
    if not p.is_dir():
        raise ConfigError(f"{path}: model not found (expected a directory with policy.npz and card.json)")
    return p


def load_exported(path: str | Path) -> ExportedPolicy:
    """Read and check an exported policy; every problem is a one-line ConfigError."""
    root = resolve_model_dir(path)
    card_path, npz_path = root / "card.json", root / "policy.npz"
    for f in (card_path, npz_path):
        if not f.is_file():
            raise _fail(f, "missing (an exported policy has policy.npz and card.json)")
    card = parse_card_bytes(read_user_bytes(card_path, "card", MAX_CARD_BYTES), card_path)
    if card.get("format") != CARD_FORMAT:
        raise _fail(card_path, f"field format: expected {CARD_FORMAT!r}")
    check_card_digest(card, card_path)  # before the schema: an edit is named as one
    checked: SpecialistCard | GeneralCard = validate_card(card, card_path)
    check_sha256(npz_path, card, card_path)
    general = isinstance(checked, GeneralCard)
    obs_spec = None if isinstance(checked, GeneralCard) else ObsSpec.from_dict(checked.obs_spec.model_dump())
    action_spec = None if isinstance(checked, GeneralCard) else ActionSpec.from_dict(checked.action_spec.model_dump())
    activation, n_layers = checked.network.activation, checked.network.layers
    arrays = read_npz(npz_path, policy_members(n_layers))  # only these members, each checked before decompressing
    layers = tuple((arrays[f"pi_{i}_w"].astype(np.float32), arrays[f"pi_{i}_b"].astype(np.float32)) for i in range(n_layers))
    weights = PolicyWeights(
        layers=layers,
        action_w=arrays["action_w"].astype(np.float32),
        action_b=arrays["action_b"].astype(np.float32),
        obs_mean=arrays["obs_mean"].astype(np.float64),
        obs_var=arrays["obs_var"].astype(np.float64),
        obs_clip=float(arrays["obs_clip"]),
        obs_eps=float(arrays["obs_eps"]),
        activation=activation,
    )
    if general:
        from rlscale.policies.relative import n_features, nvec

        history = isinstance(card.get("history"), dict)
        sees_base = bool((card.get("calibration") or {}).get("sees_base", False))
        _check_shapes(npz_path, weights, n_features(history, sees_base), int(nvec(history).sum()))
    else:
        assert obs_spec is not None and action_spec is not None
        _check_shapes(npz_path, weights, obs_spec.size, int(action_spec.nvec.sum()))
    return ExportedPolicy(weights, card, obs_spec, action_spec, checked)


def _check_shapes(path: Path, w: PolicyWeights, obs_size: int, n_logits: int) -> None:
    if w.obs_mean.shape != (obs_size,) or w.obs_var.shape != (obs_size,):
        raise _fail(path, f"normalisation statistics have shape {w.obs_mean.shape}, the card's observation has {obs_size}")
    width = obs_size
    for i, (weight, bias) in enumerate(w.layers):
        if weight.ndim != 2 or weight.shape[1] != width or bias.shape != (weight.shape[0],):
            raise _fail(path, f"layer pi_{i} has shape {weight.shape}, expected (*, {width})")
        width = weight.shape[0]
    if w.action_w.shape != (n_logits, width) or w.action_b.shape != (n_logits,):
        raise _fail(path, f"action layer has shape {w.action_w.shape}, expected ({n_logits}, {width})")
    if not all(np.isfinite(a).all() for a in w.to_arrays().values()):
        raise _fail(path, "contains NaN or infinite weights")
    if (w.obs_var < 0).any() or not w.obs_eps > 0 or not w.obs_clip > 0:
        raise _fail(path, "normalisation statistics out of range (obs_var >= 0, obs_eps > 0, obs_clip > 0)")


def write_exported(out: str | Path, weights: PolicyWeights, card: dict[str, Any]) -> Path:
    """Write ``policy.npz`` + ``card.json`` into ``out`` atomically (a temp sibling renamed into place)."""
    target = Path(out)
    buf = io.BytesIO()
    np.savez(buf, **weights.to_arrays())
    data = buf.getvalue()
    card = seal(finite({
        **card,
        "format": CARD_FORMAT,
        "network": {"activation": weights.activation, "layers": len(weights.layers)},
        "policy_sha256": hashlib.sha256(data).hexdigest(),
    }))
    validate_card(card, target / "card.json")  # never write a card the loader would refuse
    with staged_dir(target) as tmp:
        (tmp / "policy.npz").write_bytes(data)
        (tmp / "card.json").write_text(card_dumps(card))
    return target
