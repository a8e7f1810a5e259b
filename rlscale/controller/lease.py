"""One deciding controller per cluster (DESIGN.md section 17): the lease a controller holds while it acts.

Two controllers on one cluster fight: with HPA and a static policy on one
local cluster the desired count flipped 2<->4 every interval and 22 workers
started in 40 s. So a controller that acts holds a lease on its cluster:

* the local cluster: an OS lock on its run directory
  (``rlscale.clusters.local.lock``), released by the kernel when the process
  dies, however it dies;
* Kubernetes: a ``coordination.k8s.io/v1`` Lease renewed the way client-go's
  leader election renews it (``rlscale.clusters.kubernetes.lease``).

Without ``--standby`` a controller that finds the lease held refuses in one
line; with it, it waits (its HTTP API answering, ``/healthz`` saying
``standby``), and takes over when the lease is released or lapses, reading
the replica counts the cluster has as its starting point. The loop asks
``held()`` before every action, so a controller that loses its lease stops
acting at once. The simulator and ``--dry-run`` take no lease: neither acts
on a shared cluster.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

from rlscale.config import ConfigError


class Lease(Protocol):
    """What the controller needs of a lease; ``held`` is called before every action, so it must be cheap."""

    what: str
    """How messages name it: ``the lock on RUN_DIR/controller.lock``, ``Lease ns/name``."""
    retry_s: float
    """How often a standby tries again."""

    def try_acquire(self) -> bool: ...

    def held(self) -> bool: ...

    def contested(self) -> bool:
        """After a failed ``try_acquire``: is there evidence that a live controller holds it?"""
        ...

    def holder(self) -> str | None: ...

    def problem(self) -> str | None:
        """Why the last ``try_acquire`` could not even look (an API error), or None."""
        ...

    def release(self) -> None: ...


def open_lease(opts: Any) -> Lease | None:
    """The lease ``serve`` must hold for ``opts`` (a ``ServeOptions``), or None when it acts on no shared cluster."""
    standby = bool(getattr(opts, "standby", False))
    shared = opts.cluster == "kubernetes" or (opts.cluster == "local" and opts.run_dir is not None)
    if opts.dry_run or not shared:
        if standby:
            why = "a --dry-run controller never acts" if opts.dry_run else f"--cluster {opts.cluster} without --run-dir is its own cluster"
            raise ConfigError(f"--standby: {why}, so it takes no lease and has nothing to wait for; drop --standby")
        return None
    if opts.cluster == "local":
        from rlscale.clusters.local.lock import RunDirLock

        return RunDirLock(opts.run_dir)
    from rlscale.clusters.kubernetes import load_settings
    from rlscale.clusters.kubernetes.lease import KubernetesLease

    return KubernetesLease.from_settings(load_settings(opts.cluster_config))


def refuse_if_held(lease: Lease | None, standby: bool) -> bool:
    """Take the lease now if it is free; True if taken, False for a standby to wait.

    Without ``--standby``, a lease held by a live controller is a one-line
    ConfigError. A Kubernetes Lease says nothing of its holder's life until
    it is renewed or lapses, so this watches it for up to one lease duration:
    renewed, refuse; lapsed, take it (a controller that died must not lock
    its successor out for good).
    """
    if lease is None or lease.try_acquire():
        return True
    while lease.problem() is None and not standby and not lease.contested():
        time.sleep(lease.retry_s)
        if lease.try_acquire():
            return True
    if lease.problem() is not None:  # e.g. RBAC without leases: say so now rather than wait for ever
        raise ConfigError(f"{lease.what}: cannot take or read it ({lease.problem()})")
    if standby:
        return False
    raise ConfigError(
        f"{lease.what}: another controller decides for this cluster ({lease.holder() or 'holder unknown'}); "
        "stop it first, or pass --standby to wait and take over when it stops"
    )


def wait_for(lease: Lease, stop: threading.Event) -> float | None:
    """Stand by until the lease is ours; the seconds waited, or None when ``stop`` was set first."""
    started = time.monotonic()
    while not stop.is_set():
        if lease.try_acquire():
            return time.monotonic() - started
        stop.wait(lease.retry_s)
    return None
