"""The local cluster: worker processes behind HAProxy, observed through Prometheus, on 127.0.0.1.

``open_local_cluster(scenario, run_dir, settings)`` starts it and returns a
``LocalCluster`` (the ``Cluster`` protocol); ``docs/LOCAL_CLUSTER.md`` is the
manual. Importing this package starts nothing.
"""

from rlscale.clusters.local.backend import LocalCluster, open_local_cluster
from rlscale.clusters.local.settings import LocalSettings

__all__ = ["LocalCluster", "LocalSettings", "open_local_cluster"]
