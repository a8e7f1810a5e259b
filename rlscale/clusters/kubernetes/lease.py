"""The Kubernetes controller lease: a ``coordination.k8s.io/v1`` Lease, held the way client-go's leader election holds it.

One round (``_try``) is client-go's ``tryAcquireOrRenew``: read the Lease
(create it when there is none); if another identity holds it and it is
still valid, give up; else write ourselves in with ``replace``, carrying the
read's ``resourceVersion``, so of two controllers racing for a free Lease
the API server lets one through and answers the other 409. Validity is
judged on our own clock, never on the holder's ``renewTime``: a Lease is
valid until it has been seen *unchanged* for ``leaseDurationSeconds``
(clocks of two machines may disagree; the passage of time on one does not).

The leader renews every ``retry_period_s`` in a thread. ``held()`` is true
only while the last successful renewal began less than ``renew_deadline_s``
ago, so a leader cut off from the API server stops acting on its own clock
even while a renewal hangs, before any standby could see the Lease lapse
(``duration_s`` > ``renew_deadline_s``). Seeing another holder in the Lease
ends leadership at once. ``release`` (a clean stop) writes an empty holder
with a 1 s duration, as client-go's ``ReleaseOnCancel`` does, so a standby
takes over at its next try instead of after a whole duration.

A controller started without ``--standby`` refuses only on evidence: a
Lease held by another identity that is renewed while it watches. A Lease
left by a controller that died is never renewed, so after ``duration_s``
the newcomer takes it instead of refusing forever.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rlscale.clusters.kubernetes.client import api_client
from rlscale.clusters.kubernetes.errors import CONFLICT, classify
from rlscale.clusters.kubernetes.settings import KubernetesSettings, LeaseSpec

log = logging.getLogger("rlscale.clusters.kubernetes.lease")
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def micro_time(t: datetime) -> datetime:
    """``t`` in UTC, never on a whole second: the client writes ``isoformat()``, which drops a zero fraction,
    and the API server parses a Lease's MicroTime with exactly six fractional digits."""
    t = t.astimezone(timezone.utc)
    return t.replace(microsecond=1) if t.microsecond == 0 else t


def default_namespace() -> str:
    """Where the Lease lives when the config does not say: the pod's own namespace, as controller-runtime does."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


class KubernetesLease:
    """One controller's hold on the cluster's Lease (the ``rlscale.controller.lease.Lease`` protocol)."""

    def __init__(self, api: Any, spec: LeaseSpec, identity: str | None = None, request_timeout_s: float = 5.0) -> None:
        from kubernetes import client

        self.api = api
        self.client = client
        self.spec = spec
        self.namespace = spec.namespace or default_namespace()
        self.identity = identity or spec.identity or f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:12]}"
        self.what = f"Lease {self.namespace}/{spec.name}"
        self.retry_s = spec.retry_period_s
        self.timeout_s = min(request_timeout_s, spec.renew_deadline_s)
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._changes_seen = 0
        self._holder: str | None = None
        self._leading = False
        self._renewed_at: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_problem: str | None = None

    @classmethod
    def from_settings(cls, settings: KubernetesSettings) -> KubernetesLease:
        from kubernetes import client

        api = client.CoordinationV1Api(api_client(settings.kubeconfig, settings.context, settings._source))
        return cls(api, settings.lease, request_timeout_s=settings.request_timeout_s)

    # ----------------------------------------------------------------- the protocol

    def try_acquire(self) -> bool:
        if self._leading:
            return self.held()
        if not self._try():
            return False
        self._leading = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew, name="rlscale-lease", daemon=True)
        self._thread.start()
        return True

    def held(self) -> bool:
        """Leading, and renewed within the renew deadline; once that deadline passes it stays lost, as in client-go."""
        renewed = self._renewed_at
        if self._leading and (renewed is None or time.monotonic() - renewed >= self.spec.renew_deadline_s):
            self._leading = False  # a renewal that lands later must not revive it: the loop has stopped acting
        return self._leading

    def contested(self) -> bool:
        """True once another identity has been seen renewing the Lease: its holder is alive."""
        return self._changes_seen > 0 and bool(self._holder) and self._holder != self.identity

    def problem(self) -> str | None:
        return self.last_problem

    def holder(self) -> str | None:
        if not self._holder:
            return None
        ago = time.monotonic() - self._observed_at
        return f"held by {self._holder}, last changed {ago:.1f} s ago as seen here"

    def release(self) -> None:
        """Stop renewing; if we lead, hand the Lease back (empty holder, 1 s) so a standby need not wait it out."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.timeout_s + 1)
        if not self._leading:
            return
        self._leading = False
        try:
            lease = self.api.read_namespaced_lease(self.spec.name, self.namespace, _request_timeout=self.timeout_s)
            if lease.spec is None or lease.spec.holder_identity != self.identity:
                return
            now = micro_time(datetime.now(timezone.utc))
            spec = self.client.V1LeaseSpec(holder_identity=None, lease_duration_seconds=1, acquire_time=now, renew_time=now,
                                           lease_transitions=lease.spec.lease_transitions)
            self.api.replace_namespaced_lease(self.spec.name, self.namespace, self._body(spec, lease.metadata.resource_version),
                                              _request_timeout=self.timeout_s)
        except Exception as err:  # noqa: BLE001 - a lease we cannot hand back lapses on its own
            log.warning("%s: could not release (%s); a standby takes over when it lapses", self.what, classify(err))

    # ----------------------------------------------------------------- client-go's round and renew loop

    def _body(self, spec: Any, resource_version: str | None) -> Any:
        meta = self.client.V1ObjectMeta(name=self.spec.name, namespace=self.namespace, resource_version=resource_version)
        return self.client.V1Lease(api_version="coordination.k8s.io/v1", kind="Lease", metadata=meta, spec=spec)

    def _observe(self, holder: str | None, record: tuple[Any, ...], at: float) -> None:
        if record != self._observed:
            if self._observed is not None:
                self._changes_seen += 1
            self._observed, self._observed_at, self._holder = record, at, holder

    def _try(self, renewing: bool = False) -> bool:
        """One ``tryAcquireOrRenew``; never raises (a failed call is a failed round)."""
        with self._lock:
            if renewing and not self.held():
                return False  # past the renew deadline: the loop has stopped acting, so the Lease must lapse for a standby
            started = time.monotonic()
            now = micro_time(datetime.now(timezone.utc))
            try:
                try:
                    lease = self.api.read_namespaced_lease(self.spec.name, self.namespace, _request_timeout=self.timeout_s)
                except self.client.ApiException as err:
                    if err.status != 404:
                        raise
                    spec = self.client.V1LeaseSpec(holder_identity=self.identity, lease_duration_seconds=self.spec.duration_s,
                                                   acquire_time=now, renew_time=now, lease_transitions=0)
                    self.api.create_namespaced_lease(self.namespace, self._body(spec, None), _request_timeout=self.timeout_s)
                    self._observe(self.identity, (self.identity, self.spec.duration_s, now, now, 0), started)
                    self._renewed_at = started
                    return True
                self.last_problem = None
                old = lease.spec or self.client.V1LeaseSpec()
                record = (old.holder_identity, old.lease_duration_seconds, old.renew_time, old.acquire_time, old.lease_transitions)
                self._observe(old.holder_identity, record, started)
                ours = old.holder_identity == self.identity
                valid = self._observed_at + float(old.lease_duration_seconds or 0) > started
                if old.holder_identity and not ours:
                    if self._leading:
                        self._leading = False  # someone else holds it now: stop acting at once
                        log.warning("%s: now %s; stopped acting", self.what, self.holder())
                    if valid:
                        return False
                transitions = int(old.lease_transitions or 0)
                acquired = micro_time(old.acquire_time) if ours and old.acquire_time is not None else now
                spec = self.client.V1LeaseSpec(holder_identity=self.identity, lease_duration_seconds=self.spec.duration_s,
                                               acquire_time=acquired, renew_time=now,
                                               lease_transitions=transitions if ours else transitions + 1)
                self.api.replace_namespaced_lease(self.spec.name, self.namespace, self._body(spec, lease.metadata.resource_version),
                                                  _request_timeout=self.timeout_s)
            except Exception as err:  # noqa: BLE001 - 409 (another won the race), 403, timeouts: all a failed round
                problem = classify(err)
                self.last_problem = None if problem.reason == CONFLICT else str(problem)
                return False
            self._observe(self.identity, (self.identity, self.spec.duration_s, now, acquired, spec.lease_transitions), started)
            self._renewed_at = started
            self.last_problem = None
            return True

    def _renew(self) -> None:
        while not self._stop.wait(self.spec.retry_period_s):
            if not self._leading:
                return
            if self._try(renewing=True):
                continue
            if not self._leading or not self.held():
                self._leading = False
                log.warning("%s: not renewed for %.1f s (%s); stopped acting", self.what, self.spec.renew_deadline_s,
                            self.last_problem or "held by another")
                return
