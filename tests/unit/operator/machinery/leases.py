"""An in-memory coordination.k8s.io Lease API with the typed client's shapes (V1Lease models, ApiException)
and the API server's optimistic concurrency; `hang` makes its writes block, as a partitioned API server does."""

from __future__ import annotations

import copy
import itertools
import threading

from kubernetes import client
from kubernetes.client.exceptions import ApiException


class FakeLeases:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions = itertools.count(1)
        self.spec: dict | None = None  # camelCase, as written
        self.version = ""
        self.hang = threading.Event()  # set: writes block until `unhang` is set
        self.unhang = threading.Event()

    def holder(self) -> str | None:
        with self._lock:
            return None if self.spec is None else self.spec.get("holderIdentity")

    def read_namespaced_lease(self, name, namespace, _request_timeout=None):
        with self._lock:
            if self.spec is None:
                raise ApiException(status=404, reason="Not Found")
            spec = client.V1LeaseSpec(
                holder_identity=self.spec.get("holderIdentity"),
                lease_duration_seconds=self.spec.get("leaseDurationSeconds"),
                acquire_time=self.spec.get("acquireTime"),
                renew_time=self.spec.get("renewTime"),
                lease_transitions=self.spec.get("leaseTransitions"),
            )
            meta = client.V1ObjectMeta(name=name, namespace=namespace, resource_version=self.version)
            return client.V1Lease(metadata=meta, spec=spec)

    def create_namespaced_lease(self, namespace, body, _request_timeout=None):
        self._wait_if_hung()
        with self._lock:
            if self.spec is not None:
                raise ApiException(status=409, reason="AlreadyExists")
            self._store(body)

    def replace_namespaced_lease(self, name, namespace, body, _request_timeout=None):
        self._wait_if_hung()
        with self._lock:
            if body["metadata"].get("resourceVersion") != self.version:
                raise ApiException(status=409, reason="Conflict")
            self._store(body)

    def _store(self, body) -> None:
        self.spec = copy.deepcopy(body["spec"])
        self.version = str(next(self._versions))

    def _wait_if_hung(self) -> None:
        if self.hang.is_set():
            self.unhang.wait()
