"""Connecting to an API server the way kubectl does, and the few typed calls the backend makes.

Config resolution follows kubectl: the file named in the cluster config
(``kubeconfig:``), else ``$KUBECONFIG``, else ``~/.kube/config``, else the
in-cluster ServiceAccount (``KUBERNETES_SERVICE_HOST`` and the mounted token).
Retries are the controller's business (it decides again next interval), so
urllib3 retries a refused connection once and never repeats a request that
reached the server: a retried PATCH would be a second write we did not decide.

``ScaleCalls`` hides which ``*_scale`` methods a workload kind uses; the
set of API calls here is the whole surface the backend needs, and
``deploy/kubernetes/rbac*.yaml`` grants exactly these verbs (a test checks).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlscale.config import ConfigError


def api_client(kubeconfig: str | None, context: str | None, source: str) -> Any:
    """An ``ApiClient`` for the cluster; ConfigError (one line) when no configuration can be found or read."""
    try:
        import urllib3
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException
    except ImportError:
        raise ConfigError("--cluster kubernetes needs the kubernetes client: pip install 'rlscale[kubernetes]'") from None
    cfg = client.Configuration()
    default = Path("~/.kube/config").expanduser()
    path = kubeconfig or os.environ.get("KUBECONFIG") or (str(default) if default.exists() else None)
    where = path or "in-cluster config"
    try:
        if path is not None:
            config.load_kube_config(config_file=os.path.expanduser(path), context=context,
                                    client_configuration=cfg, persist_config=False)
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=cfg)
        else:
            raise ConfigError(
                f"{source}: no kubeconfig (kubeconfig:, $KUBECONFIG, ~/.kube/config) and not running in a cluster"
            )
    except ConfigException as err:
        raise ConfigError(f"{source}: kubeconfig {where}: {' '.join(str(err).split())[:200]}") from None
    except FileNotFoundError as err:
        raise ConfigError(f"{source}: kubeconfig: {err.filename or path}: file not found") from None
    cfg.retries = urllib3.Retry(total=1, connect=1, read=0, status=0, redirect=0, other=0)
    return client.ApiClient(cfg)


@dataclass(frozen=True)
class ScaleCalls:
    """The read and patch of one workload kind's ``scale`` subresource."""

    read: Callable[..., Any]
    patch: Callable[..., Any]
    resource: str


def scale_calls(apps: Any, kind: str) -> ScaleCalls:
    if kind == "Deployment":
        return ScaleCalls(apps.read_namespaced_deployment_scale, apps.patch_namespaced_deployment_scale, "deployments")
    if kind == "StatefulSet":
        return ScaleCalls(apps.read_namespaced_stateful_set_scale, apps.patch_namespaced_stateful_set_scale, "statefulsets")
    if kind == "ReplicaSet":
        return ScaleCalls(apps.read_namespaced_replica_set_scale, apps.patch_namespaced_replica_set_scale, "replicasets")
    raise ConfigError(f"kind {kind!r}: expected Deployment, StatefulSet or ReplicaSet")
