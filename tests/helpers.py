"""Test helpers: a real exported policy (random weights) in the ``policy.npz`` + ``card.json`` format, and
real HTTP servers on loopback (a target for the load generator, Prometheus' query API over given series)."""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import numpy as np

from rlscale.config import Scenario, load_scenario
from rlscale.policies.network import PolicyWeights, write_exported
from rlscale.spaces import ActionSpec, ObsSpec


def export_random_policy(
    directory: str | Path,
    scenario: Scenario | str = "web-diurnal",
    *,
    seed: int = 0,
    hidden: tuple[int, ...] = (64, 64),
    activation: str = "tanh",
) -> Path:
    """Write ``policy.npz`` and ``card.json`` of an MLP policy with random weights for ``scenario``; returns the directory."""
    sc = load_scenario(scenario)
    obs_spec, action_spec = ObsSpec.from_scenario(sc), ActionSpec.from_scenario(sc)
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    width = obs_spec.size
    for i, units in enumerate(hidden):
        arrays[f"pi_{i}_w"] = (rng.standard_normal((units, width)) / np.sqrt(width)).astype(np.float32)
        arrays[f"pi_{i}_b"] = (0.1 * rng.standard_normal(units)).astype(np.float32)
        width = units
    n_logits = int(action_spec.nvec.sum())
    arrays["action_w"] = rng.standard_normal((n_logits, width)).astype(np.float32)
    arrays["action_b"] = (0.1 * rng.standard_normal(n_logits)).astype(np.float32)
    arrays["obs_mean"] = (0.1 * rng.standard_normal(obs_spec.size)).astype(np.float64)
    arrays["obs_var"] = rng.uniform(0.5, 2.0, obs_spec.size)
    arrays["obs_clip"] = np.array(10.0)
    arrays["obs_eps"] = np.array(1e-8)
    weights = PolicyWeights(
        layers=tuple((arrays[f"pi_{i}_w"], arrays[f"pi_{i}_b"]) for i in range(len(hidden))),
        action_w=arrays["action_w"], action_b=arrays["action_b"], obs_mean=arrays["obs_mean"], obs_var=arrays["obs_var"],
        obs_clip=10.0, obs_eps=1e-8, activation=activation,
    )
    root = Path(directory)
    card = {
        "name": root.name,
        "scenario": sc.name,
        "scenario_config": json.loads(sc.model_dump_json()),
        "obs_spec": obs_spec.to_dict(),
        "obs_features": obs_spec.feature_names(),
        "action_spec": action_spec.to_dict(),
        "training": {"checkpoint": "none (random weights for tests)", "seed": seed, "timesteps": 0},
        "evaluation": {},
        "versions": {"numpy": np.__version__},
    }
    write_exported(root, weights, card)
    return root


def general_card(ranges: dict[str, list[float]], history: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fields of a generalist card besides the network and checksums (``write_exported`` adds those)."""
    from rlscale.policies import history as hist
    from rlscale.policies import relative

    return {
        **({"history": history} if history else {}),
        "name": "general", "kind": "general",
        "obs_features": list(relative.FEATURES) + (list(hist.FEATURES) if history else []),
        "action": {"levels": list(relative.LEVELS), "rebalance": ["none", "consolidate", "spread"], "u_max": relative.U_MAX,
                   "tolerance": relative.TOLERANCE, "down_window_steps": relative.DOWN_WINDOW_STEPS},
        "range": ranges, "training": {"checkpoint": "none (random weights for tests)", "seed": 0, "timesteps": 0},
        "evaluation": {}, "versions": {"numpy": np.__version__},
    }


class OkHandler(BaseHTTPRequestHandler):
    """A real HTTP target on loopback that answers every GET with 200 "ok" (for the load generator's tests)."""

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


class PrometheusStub:
    """Prometheus' HTTP query API (``/-/ready``, ``/api/v1/query``, ``/api/v1/query_range``) on 127.0.0.1, over
    the series a test gives: a subclass answers ``instant`` and ``matrix`` with Prometheus' ``result`` lists."""

    def __init__(self) -> None:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                return

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                url = urllib.parse.urlsplit(self.path)
                q = dict(urllib.parse.parse_qsl(url.query))
                if url.path == "/-/ready":
                    body = b"ready"
                elif url.path == "/api/v1/query":
                    result = stub.instant(q["query"], float(q.get("time", 0.0)))
                    body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()
                elif url.path == "/api/v1/query_range":
                    result = stub.matrix(q["query"], float(q["start"]), float(q["end"]), float(q["step"]))
                    body = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}}).encode()
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def instant(self, query: str, at: float) -> list[dict[str, Any]]:
        return []

    def matrix(self, query: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return []

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
