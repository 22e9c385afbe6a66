"""Leader election over a coordination.k8s.io Lease, as client-go's leaderelection does it, with a fence.

Only the leader reconciles; the other replicas watch and wait, ready to take over. A candidate takes the
Lease when it is free or when its holder has not renewed it for `lease_duration` as measured on the
candidate's own clock (from when it last saw the record change, so clocks need not agree). The leader renews
every `retry_period`.

Never two writers: the leader may write (`may_write`, which the API client checks before every write) only
until `renew_deadline` after the *start* of its last successful renewal, on its own clock. A candidate that
takes over saw that renewal land no earlier than it started, and waits `lease_duration` more, so a write the
fence lets through lands before any successor's first one as long as it takes less than
lease_duration - renew_deadline to arrive. The fence closes at that instant whatever the renewal loop is
doing (a renewal hung in the API server included); a watchdog then reports the loss (`on_lost`; the operator
exits and its pod restarts as a candidate).

`Candidacy` holds the decisions and no I/O: `attempt` is a generator that yields the Lease requests it needs
(`Read`, `Create`, `Replace`) and takes their answers, so the thread here and a simulation of many replicas
with arbitrary latencies drive the same code.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Generator, Mapping
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


# ---- the decisions ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Read:
    """Answer: (spec in camelCase, resourceVersion), or None when there is no Lease."""


@dataclass(frozen=True)
class Create:
    spec: dict[str, Any]  # answer: whether it was created


@dataclass(frozen=True)
class Replace:
    spec: dict[str, Any]
    resource_version: str  # answer: whether it was replaced (False on a conflict)


class Candidacy:
    def __init__(self, identity: str, timings: LeaseTimings, clock: Callable[[], float]) -> None:
        self.identity, self.timings, self.clock = identity, timings, clock
        self.valid_until = -math.inf  # the fence: writes allowed before this instant of `clock`
        self.term: int | None = None  # leaseTransitions of the record this replica last wrote
        self._observed: tuple[Any, ...] | None = None  # (holder, renewTime, resourceVersion) last seen
        self._observed_at = clock()

    def may_write(self) -> bool:
        return self.clock() < self.valid_until

    def close(self) -> None:
        self.valid_until = -math.inf

    def attempt(self) -> Generator[Read | Create | Replace, Any, bool]:
        """One try to take or renew the Lease; True when this replica holds it now."""
        started = self.clock()
        found = yield Read()
        now = now_micro_time()
        if found is None:
            spec = self._record(now, now, transitions=0)
            if not (yield Create(spec)):
                return False
        else:
            current, version = found
            # any write changes the resourceVersion: a renewal is seen even if its renewTime repeats one
            observed = (current.get("holderIdentity"), current.get("renewTime"), version)
            if observed != self._observed:
                self._observed, self._observed_at = observed, self.clock()
            if not lease_is_free(current, self.identity, self.clock() - self._observed_at, self.timings):
                return False
            taking_over = current.get("holderIdentity") != self.identity
            transitions = (current.get("leaseTransitions") or 0) + (1 if taking_over else 0)
            acquired = now if taking_over else current.get("acquireTime") or now
            spec = self._record(acquired, now, transitions)
            if not (yield Replace(spec, version)):
                return False
        # valid from the start of the try: the record cannot have landed before it
        self.valid_until = max(self.valid_until, started + self.timings.renew_deadline)
        self.term = spec["leaseTransitions"]
        return True

    def _record(self, acquired: str, renewed: str, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.timings.lease_duration),
            "acquireTime": acquired,
            "renewTime": renewed,
            "leaseTransitions": transitions,
        }


# ---- the thread -------------------------------------------------------------------------------------------


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._leases, self._namespace, self._name = leases, namespace, name
        self.identity = identity
        self._on_started, self._on_lost = on_started, on_lost
        self._timings = timings
        self._timeout = request_timeout
        self._clock = clock
        self._candidacy = Candidacy(identity, timings, clock)
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._watchdog = threading.Thread(target=self._watch, name="leader-watchdog", daemon=True)
        self.leading = False

    def may_write(self) -> bool:
        """Whether this replica may write now: it leads, and its last renewal still holds."""
        return self.leading and not self._lost.is_set() and self._candidacy.may_write()

    def start(self) -> None:
        self._thread.start()
        self._watchdog.start()

    def stop(self, release: bool = True) -> None:
        """Stops campaigning; with `release`, hands the Lease over at once. Call it only once this replica's
        workers have stopped: a successor may write as soon as the Lease is free."""
        self._stop.set()
        self._thread.join(timeout=self._timings.retry_period + sum(self._timeout))
        holds = self.may_write()
        self._candidacy.close()
        if release and holds:
            self._release()
        self.leading = False

    def _run(self) -> None:
        while not self._stop.is_set() and not self._lost.is_set():
            if self._try() and not self.leading:
                self.leading = True
                log.info("became the leader (%s/%s as %s)", self._namespace, self._name, self.identity)
                self._on_started()
            self._stop.wait(self._timings.retry_period)

    def _watch(self) -> None:
        """Reports the loss the moment the fence closes, whatever the renewal loop is blocked in."""
        while not self._stop.is_set():
            left = self._candidacy.valid_until - self._clock()
            if self.leading and left <= 0:
                self._lost.set()
                self.leading = False
                log.error("lost the lease %s/%s: stopping", self._namespace, self._name)
                self._on_lost()
                return
            self._stop.wait(min(self._timings.retry_period, left) if left > 0 else self._timings.retry_period)

    def _try(self) -> bool:
        attempt = self._candidacy.attempt()
        try:
            request = next(attempt)
            while True:
                request = attempt.send(self._call(request))
        except StopIteration as done:
            return done.value
        except Exception as err:  # the API server away, a timeout: not renewed this time
            attempt.close()
            log.debug("taking or renewing the lease failed: %s", err)
            return False

    def _call(self, request: Read | Create | Replace):
        timeout = self._bounded_timeout()
        if isinstance(request, Read):
            try:
                lease = self._leases.read_namespaced_lease(
                    self._name, self._namespace, _request_timeout=timeout
                )
            except ApiException as err:
                if err.status == 404:
                    return None
                raise
            spec = lease.spec.to_dict() if lease.spec else {}
            current = {
                "holderIdentity": spec.get("holder_identity"),
                "leaseDurationSeconds": spec.get("lease_duration_seconds"),
                "acquireTime": _micro_time(spec.get("acquire_time")),
                "renewTime": _micro_time(spec.get("renew_time")),
                "leaseTransitions": spec.get("lease_transitions"),
            }
            return current, lease.metadata.resource_version
        try:
            if isinstance(request, Create):
                body = {"metadata": {"name": self._name, "namespace": self._namespace}, "spec": request.spec}
                self._leases.create_namespaced_lease(self._namespace, body, _request_timeout=timeout)
            else:
                body = {
                    "metadata": {"name": self._name, "resourceVersion": request.resource_version},
                    "spec": request.spec,
                }
                self._leases.replace_namespaced_lease(
                    self._name, self._namespace, body, _request_timeout=timeout
                )
        except ApiException as err:
            if err.status == 409:  # another candidate wrote first
                return False
            raise
        return True

    def _bounded_timeout(self) -> tuple[float, float]:
        """While leading, no call outlives the fence: the loop learns of the loss by then."""
        if not self.leading:
            return self._timeout
        left = max(0.1, self._candidacy.valid_until - self._clock())
        return min(self._timeout[0], left), min(self._timeout[1], left)

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


def _micro_time(value: Any) -> Any:
    """The typed client parses MicroTime into datetime; the record compares and writes it back as text."""
    return value.isoformat() if hasattr(value, "isoformat") else value
