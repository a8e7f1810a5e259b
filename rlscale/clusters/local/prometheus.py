"""Prometheus for the local cluster: its generated config, the worker targets, and PromQL queries.

Prometheus scrapes two jobs every ``scrape_s``: HAProxy's built-in exporter
(arrivals, queue, 5xx per service) and the workers (latency histogram, busy
seconds, CPU seconds per worker). Workers come and go, so their targets live
in a ``file_sd_configs`` JSON file that the backend rewrites atomically;
Prometheus notices the change within a second.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from rlscale.atomic import write_json


class PrometheusError(RuntimeError):
    """Prometheus could not be reached or answered with an error."""


def render_config(exporter_target: str, targets_file: Path, scrape_s: float) -> str:
    interval = f"{int(round(scrape_s * 1000))}ms"
    config = {
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {"job_name": "haproxy", "static_configs": [{"targets": [exporter_target]}]},
            {
                "job_name": "workers",
                "honor_labels": True,
                "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": interval}],
            },
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def write_targets(path: Path, targets: list[dict[str, object]]) -> None:
    """Atomically replace the file_sd JSON (a half-written file would drop every worker)."""
    write_json(path, targets, indent=None)


def worker_target(host: str, port: int, service: str, worker: str) -> dict[str, object]:
    return {"targets": [f"{host}:{port}"], "labels": {"service": service, "worker": worker}}


class PrometheusClient:
    """``/api/v1/query`` over plain HTTP (urllib: nothing to pool, nothing to leak)."""

    def __init__(self, base_url: str, timeout_s: float = 2.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/-/ready", timeout=self.timeout_s) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def query(self, promql: str, at: float | None = None) -> list[tuple[dict[str, str], float]]:
        """An instant query's vector as (labels, value) pairs (at unix time ``at``, default now); raises PrometheusError."""
        params = {"query": promql} if at is None else {"query": promql, "time": f"{at:.3f}"}
        url = f"{self.base_url}/api/v1/query?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:
                payload = json.loads(resp.read())
        except urllib.error.HTTPError as err:
            raise PrometheusError(f"prometheus: HTTP {err.code} for {promql!r}") from None
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise PrometheusError(f"prometheus at {self.base_url}: {getattr(err, 'reason', err)}") from None
        if payload.get("status") != "success":
            raise PrometheusError(f"prometheus: {payload.get('error', 'query failed')} for {promql!r}")
        data = payload["data"]
        if data["resultType"] == "scalar":
            return [({}, _float(data["result"][1]))]
        return [(item["metric"], _float(item["value"][1])) for item in data["result"]]

    def scalar(self, promql: str, default: float = math.nan, at: float | None = None) -> float:
        """The sum of a query's vector (``default`` when it is empty)."""
        result = self.query(promql, at)
        return sum(v for _, v in result) if result else default

    def by_label(self, promql: str, label: str) -> dict[str, float]:
        return {labels.get(label, ""): value for labels, value in self.query(promql)}


def _float(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def window(seconds: float) -> str:
    """A PromQL range in milliseconds (``[5000ms]``)."""
    return f"{max(1, int(round(seconds * 1000)))}ms"
