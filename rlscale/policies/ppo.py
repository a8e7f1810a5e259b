"""A trained specialist, run with numpy from its exported ``policy.npz`` + ``card.json``.

The network and the model file live in ``rlscale.policies.network`` (shared with
the generalist); this module is the specialist's side: the observation builder
and action decoder of training, fused with the forward pass into one compiled
call per decision.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from rlscale import spaces
from rlscale.policies import network
from rlscale.policies.network import BLAS_FROM, ExportedPolicy, _mlp, _segment_ends, deterministic_actions
from rlscale.sim import kernel as K
from rlscale.spaces import Action, ActionDecoder, InvalidAction, Metrics, ObservationBuilder, _decode, _features


class PPOPolicy:
    """The exported network behind the ``Policy`` protocol, with the same observation builder as training."""

    def __init__(self, exported: ExportedPolicy, name: str = "ppo") -> None:
        self.exported = exported
        self.name = name
        self.obs_spec = exported.obs_spec
        self.action_spec = exported.action_spec
        self.decoder = ActionDecoder(exported.action_spec)
        self._nvec = exported.action_spec.nvec
        self._ends = _segment_ends(np.asarray(self._nvec, dtype=np.int64).tobytes())
        self._scratch: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.builder = ObservationBuilder(self.obs_spec, 1)

    @property
    def services(self) -> tuple[str, ...]:
        return self.obs_spec.services

    def reset(self, n: int = 1) -> None:
        if self.builder.history.shape[0] == n:
            self.builder.reset()  # the API resets before every request: forgetting is cheaper than rebuilding
        else:
            self.builder = ObservationBuilder(self.obs_spec, n)

    def raw_action(self, obs: np.ndarray) -> np.ndarray:
        return deterministic_actions(self.exported.weights, self._nvec, obs)

    def act(self, metrics: Metrics) -> Action:
        n = metrics.n
        if n >= BLAS_FROM:
            obs = self.builder.build(metrics)
            return self.decoder.decode(self.raw_action(obs), metrics.desired)
        scratch = self._scratch.get(n)
        if scratch is None:
            scratch = self._scratch[n] = (
                np.empty((n, self.obs_spec.size), dtype=np.float32),
                np.empty((n, self.exported.weights.packed.dims[-1]), dtype=np.float32),
                np.empty((n, self._ends.shape[0]), dtype=np.int64),
            )
        obs, out, raw = scratch
        replicas = np.empty((n, self.action_spec.n_services), dtype=np.int64)
        rebalance = np.empty(n, dtype=np.int64)
        if not _observe_decide(*self.builder.feature_args(metrics), obs, *self.exported.weights.packed.arrays, out,
                               self._ends, raw, *self.decoder.bounds, replicas, rebalance):
            raise InvalidAction(f"action {raw!r} is not in MultiDiscrete({self._nvec})")
        return Action(replicas=replicas, rebalance=rebalance)


@njit(cache=True)
def _observe_decide(history, head, fresh, rows, lags, arrivals, ready, desired, util, p95, backlog, dropped,  # type: ignore[no-untyped-def]
                    nodes_ready, nodes_prov, packing, time_s, cost_rate, hot, rebal, consts, obs,
                    live, mean, std, clip, w_flat, b_flat, dims, relu, out, ends, raw,
                    max_step, lo, hi, nvec, replicas, rebalance):
    """``PPOPolicy.act`` below ``BLAS_FROM`` clusters in one compiled call: the builder's ``_features``, the
    network's ``_mlp`` and the decoder's ``_decode``, each the same function their own entry points run
    (a decision's dozen small Python and numpy calls between them cost more than the three together)."""
    _features(history, head, fresh, rows, lags, arrivals, ready, desired, util, p95, backlog, dropped,
              nodes_ready, nodes_prov, packing, time_s, cost_rate, hot, rebal, consts, obs)
    _mlp(obs, live, mean, std, clip, w_flat, b_flat, dims, relu, out, ends, raw)
    current = np.empty(desired.shape, dtype=np.int64)
    for i in range(desired.shape[0]):
        for j in range(desired.shape[1]):
            current[i, j] = np.int64(desired[i, j])
    return _decode(raw, current, max_step, lo, hi, nvec, replicas, rebalance)


K.stale_with(_observe_decide, spaces, network)
