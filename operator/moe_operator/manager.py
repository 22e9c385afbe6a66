"""Assembles the operator: API client, watch cache, reconciler, work queue, workers, leader election.

kopf's watch streams feed the cache and the queue (`observe`); the workers reconcile what the queue holds.
Every `relist_seconds` each watched kind is listed afresh: after a watch gap (410 Gone) kopf lists again but
reports nothing of what vanished meanwhile, and a listing is the only word on that. With leader election on,
every replica keeps its cache warm but only the leader's workers run.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from moe_operator.decisions.images import DEFAULT as DEFAULT_IMAGES
from moe_operator.decisions.images import EngineImages
from moe_operator.decisions.naming import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    MODEL_DEPLOYMENT_LABEL,
    controlling_owner,
)
from moe_operator.io import metrics as operator_metrics
from moe_operator.io.kube import Kube, api_client
from moe_operator.io.metrics import OperatorMetrics
from moe_operator.io.policy_file import PolicySource
from moe_operator.io.prometheus import Prometheus
from moe_operator.io.recorder import EventRecorder
from moe_operator.machinery.cache import ObjectCache
from moe_operator.machinery.controller import Controller
from moe_operator.machinery.leader import LeaderElector, LeaseTimings
from moe_operator.machinery.workqueue import WorkQueue
from moe_operator.measure.loop import Measurer
from moe_operator.measure.store import Measurements
from moe_operator.reconcile.reconciler import Reconciler

log = logging.getLogger(__name__)

# kind -> label selector of the objects the operator watches and caches
WATCHED = {
    "ModelDeployment": None,
    "Deployment": f"{MANAGED_BY_LABEL}={MANAGED_BY}",
    "ConfigMap": f"{MANAGED_BY_LABEL}={MANAGED_BY}",
    "Service": f"{MANAGED_BY_LABEL}={MANAGED_BY}",
    "PodDisruptionBudget": f"{MANAGED_BY_LABEL}={MANAGED_BY}",
    "Pod": MODEL_DEPLOYMENT_LABEL,
    # spec.routing's router identity
    "ServiceAccount": f"{MANAGED_BY_LABEL}={MANAGED_BY}",
    "Role": f"{MANAGED_BY_LABEL}={MANAGED_BY}",
    "RoleBinding": f"{MANAGED_BY_LABEL}={MANAGED_BY}",
}


@dataclass(frozen=True)
class Options:
    namespaces: Sequence[str] = ()  # empty: every namespace
    workers: int = 8
    prometheus_url: str | None = None
    prometheus_bearer_token_file: str | None = None
    prometheus_ca_file: str | None = None
    prometheus_insecure_skip_verify: bool = False
    policy_file: str | None = None
    leader_elect: bool = False
    leader_election_namespace: str | None = None
    leader_election_id: str = "moe-operator"
    leader_election_timings: LeaseTimings = LeaseTimings()
    metrics_port: int | None = None
    relist_seconds: float = 300.0
    images: EngineImages = DEFAULT_IMAGES  # each engine's image (--engine-image)


def identity() -> str:
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"


class Manager:
    def __init__(self, options: Options) -> None:
        self.options = options
        api = api_client(connections=options.workers + 4)
        self.kube = Kube(api)
        self.cache = ObjectCache()
        self.queue = WorkQueue()
        self.recorder = EventRecorder(self.kube, identity())
        self.metrics = OperatorMetrics()
        self.measurements = Measurements()
        prometheus = None
        if options.prometheus_url:
            prometheus = Prometheus(
                options.prometheus_url,
                bearer_token_file=options.prometheus_bearer_token_file,
                ca_file=options.prometheus_ca_file,
                insecure_skip_verify=options.prometheus_insecure_skip_verify,
                metrics=self.metrics,
            )
        self.reconciler = Reconciler(
            self.kube,
            self.cache,
            self.recorder,
            policy=PolicySource(options.policy_file),
            measurements=self.measurements,
            measuring=prometheus is not None,
            metrics=self.metrics,
            images=options.images,
        )
        self.measurer = (
            Measurer(
                prometheus,
                lambda: self.cache.list("ModelDeployment", copies=False),
                self.measurements,
                self.queue.add,
            )
            if prometheus is not None
            else None
        )
        self.controller = Controller(self.reconciler, self.queue, options.workers, self.metrics)
        self.metrics_server = None
        self._stopping = threading.Event()
        self._relister = threading.Thread(target=self._relist_now_and_then, name="relist", daemon=True)
        self.elector = None
        if options.leader_elect:
            self.elector = LeaderElector(
                client.CoordinationV1Api(api),
                options.leader_election_namespace or _own_namespace(),
                options.leader_election_id,
                identity(),
                on_started=self._lead,
                on_lost=_exit_on_lost_lease,
                timings=options.leader_election_timings,
            )
            self.kube.may_write = self.elector.may_write  # every write, Events included, asks the fence

    def start(self) -> None:
        """Serves the metrics, fills the cache and starts reconciling (or campaigning). Safe to call again after
        it failed: the metrics port stays bound from the first call."""
        if self.options.metrics_port is not None and self.metrics_server is None:
            self.metrics_server = operator_metrics.start(self.metrics, self.options.metrics_port)
        self.relist(watching=False)
        if not self._relister.is_alive():
            self._relister.start()
        if self.elector is None:
            self._lead()
        else:
            self.elector.start()

    def stop(self) -> None:
        """The workers first, the Lease last: released earlier, it let a successor start while a pass here
        still wrote. The Lease is renewed meanwhile; a worker that will not end keeps it until it expires."""
        self._stopping.set()
        if self.measurer is not None:
            self.measurer.stop()
        idle = self.controller.stop()
        if self.elector is not None:
            if not idle:
                log.warning("a reconcile pass did not end in time: leaving the Lease to expire")
            self.elector.stop(release=idle)

    def relist(self, watching: bool = True) -> None:
        """Lists every watched kind: what a listing lacks is gone (its ModelDeployment is queued to see).
        At start (`watching` False: kopf starts its watches after this) it fills the cache, so that no pass
        ever runs on a half-filled one."""
        for kind, selector in WATCHED.items():
            for namespace in self.options.namespaces or [None]:
                listed_at = self.cache.clock()
                for gone in self.cache.replace_all(
                    kind, namespace, self.kube.list(kind, namespace, selector), listed_at, watching
                ):
                    self._forgotten(kind, gone)
                    self._queue_owner(kind, gone)

    def observe(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event: the cache takes the object, the owning ModelDeployment is queued."""
        obj = {**body, "kind": kind}
        if event_type == "DELETED":
            self.cache.delete(obj)
            self._forgotten(kind, obj)
        else:
            self.cache.observe(obj)
        self._queue_owner(kind, obj)

    def _relist_now_and_then(self) -> None:
        while not self._stopping.wait(self.options.relist_seconds):
            try:
                self.relist()
            except Exception as err:  # the API server away: the next round tries again
                log.warning("listing the watched objects afresh failed: %s", err)

    def _forgotten(self, kind: str, obj: Mapping[str, Any]) -> None:
        if kind == "ModelDeployment":
            self.metrics.forget(obj["metadata"]["namespace"], obj["metadata"]["name"])
            self.measurements.forget((obj["metadata"]["namespace"], obj["metadata"]["name"]))

    def _queue_owner(self, kind: str, obj: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        if kind == "ModelDeployment":
            owner = meta["name"]
        elif kind == "Pod":
            owner = (meta.get("labels") or {}).get(MODEL_DEPLOYMENT_LABEL)
        else:
            owner = controlling_owner(obj)
        if owner:
            self.queue.add((meta["namespace"], owner))

    def _lead(self) -> None:
        self.metrics.leader.set(1)
        for key in self.cache.names("ModelDeployment"):
            self.queue.add(key)
        self.controller.start()
        if self.measurer is not None:
            self.measurer.start()


def _own_namespace() -> str:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as file:
            return file.read().strip()
    except OSError:
        return os.environ.get("POD_NAMESPACE", "default")


def _exit_on_lost_lease() -> None:
    # another replica may already be reconciling: stop at once; the pod restarts and runs as a candidate
    logging.getLogger(__name__).critical("lost the leader lease: exiting")
    sys.stdout.flush()
    os._exit(1)
