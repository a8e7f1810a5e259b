"""The Kubernetes backend: workloads' ``scale`` subresources through the official client, metrics from Prometheus.

Needs the optional extra ``rlscale[kubernetes]``; imports no torch. See
``docs/KUBERNETES.md``.
"""

from rlscale.clusters.kubernetes.settings import KubernetesSettings, Target, load_settings

__all__ = ["KubernetesSettings", "Target", "load_settings"]
