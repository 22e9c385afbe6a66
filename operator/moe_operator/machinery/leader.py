"""Leader election over a coordination.k8s.io Lease, as client-go's leaderelection does it.

Only the leader reconciles; the other replicas watch and wait, ready to take over. A candidate takes the
Lease when it is free or when its holder has not renewed it for `lease_duration` as measured on the
candidate's own clock (from when it last saw the record change, so clocks need not agree). The leader renews
every `retry_period`; when it cannot renew within `renew_deadline` it has lost the lease and must stop at once
(`on_lost`; the operator exits and its pod restarts as a candidate).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from moe_operator.timestamps import now_micro_time

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseTimings:
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


def lease_is_free(spec: Mapping[str, Any], me: str, unchanged_for: float, timings: LeaseTimings) -> bool:
    """Whether `me` may take (or keep) the Lease whose spec has not changed for `unchanged_for` seconds."""
    holder = spec.get("holderIdentity") or ""
    duration = spec.get("leaseDurationSeconds") or timings.lease_duration
    return holder in ("", me) or unchanged_for > duration


class LeaderElector:
    def __init__(
        self,
        leases,  # kubernetes.client.CoordinationV1Api
        namespace: str,
        name: str,
        identity: str,
        on_started: Callable[[], None],
        on_lost: Callable[[], None],
        timings: LeaseTimings = LeaseTimings(),
        request_timeout: tuple[float, float] = (5, 10),
    ) -> None:
        self._leases, self._namespace, self._name = leases, namespace, name
        self.identity = identity
        self._on_started, self._on_lost = on_started, on_lost
        self._timings = timings
        self._timeout = request_timeout
        self._observed: tuple[str | None, str | None] = (None, None)  # (holder, renewTime) last seen
        self._observed_at = time.monotonic()
        self._last_renewal = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self.leading = False

    def start(self) -> None:
        self._thread.start()

    def stop(self, release: bool = True) -> None:
        self._stop.set()
        self._thread.join(timeout=self._timings.retry_period + sum(self._timeout))
        if release and self.leading:
            self._release()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._try_acquire_or_renew():
                if not self.leading:
                    self.leading = True
                    log.info("became the leader (%s/%s as %s)", self._namespace, self._name, self.identity)
                    self._on_started()
                self._stop.wait(self._timings.retry_period)
                continue
            if self.leading and time.monotonic() - self._last_renewal > self._timings.renew_deadline:
                self.leading = False
                log.error("lost the lease %s/%s: stopping", self._namespace, self._name)
                self._on_lost()
                return
            self._stop.wait(self._timings.retry_period)

    def _try_acquire_or_renew(self) -> bool:
        try:
            lease = self._leases.read_namespaced_lease(
                self._name, self._namespace, _request_timeout=self._timeout
            )
        except ApiException as err:
            if err.status != 404:
                log.warning("reading the lease failed: %s", err.reason)
                return False
            return self._create()
        except Exception as err:  # connection refused, timeout
            log.warning("reading the lease failed: %s", err)
            return False
        spec = lease.spec.to_dict() if lease.spec else {}
        observed = (spec.get("holder_identity"), str(spec.get("renew_time")))
        if observed != self._observed:
            self._observed, self._observed_at = observed, time.monotonic()
        current = {
            "holderIdentity": spec.get("holder_identity"),
            "leaseDurationSeconds": spec.get("lease_duration_seconds"),
        }
        if not lease_is_free(current, self.identity, time.monotonic() - self._observed_at, self._timings):
            return False
        now = now_micro_time()
        taking_over = current["holderIdentity"] != self.identity
        body = {
            "metadata": {"name": self._name, "resourceVersion": lease.metadata.resource_version},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self._timings.lease_duration),
                "renewTime": now,
                "acquireTime": now if taking_over else spec.get("acquire_time") or now,
                "leaseTransitions": (spec.get("lease_transitions") or 0) + (1 if taking_over else 0),
            },
        }
        try:
            self._leases.replace_namespaced_lease(
                self._name, self._namespace, body, _request_timeout=self._timeout
            )
        except Exception as err:  # 409: someone else changed it first; or the API server is away
            log.debug("renewing the lease failed: %s", err)
            return False
        self._last_renewal = time.monotonic()
        return True

    def _create(self) -> bool:
        now = now_micro_time()
        body = {
            "metadata": {"name": self._name, "namespace": self._namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self._timings.lease_duration),
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }
        try:
            self._leases.create_namespaced_lease(self._namespace, body, _request_timeout=self._timeout)
        except Exception as err:  # 409: another candidate created it first
            log.debug("creating the lease failed: %s", err)
            return False
        self._last_renewal = time.monotonic()
        return True

    def _release(self) -> None:
        """Hands the lease over at once on a clean shutdown, so a successor need not wait for it to expire."""
        try:
            lease = self._leases.read_namespaced_lease(
                self._name, self._namespace, _request_timeout=self._timeout
            )
            if lease.spec.holder_identity != self.identity:
                return
            body = {
                "metadata": {"name": self._name, "resourceVersion": lease.metadata.resource_version},
                "spec": {"holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": now_micro_time()},
            }
            self._leases.replace_namespaced_lease(
                self._name, self._namespace, body, _request_timeout=self._timeout
            )
            log.info("released the lease %s/%s", self._namespace, self._name)
        except Exception as err:
            log.warning("releasing the lease failed: %s", err)
