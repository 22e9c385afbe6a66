"""What the demo shows, read as the operator reads it: queue depth and per-revision p99 from Prometheus (the
operator's own queries, moe_operator.io.prometheus), replicas and revisions from the ModelDeployment's status, and the
operator's Events. A sampler thread records them every second for the summary and the picture."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

from kubernetes import client

from moe_operator.decisions.engine_metrics import ENGINES
from moe_operator.decisions.promdata import PodSamples
from moe_operator.io.prometheus import Prometheus

P99_WINDOW_S = 10


@dataclass
class Sample:
    at: float
    queue: float | None  # waiting requests over all pods
    desired: int
    ready: int
    p99_stable: float | None
    p99_canary: float | None
    canary: str | None


@dataclass
class Recorder:
    prometheus: Prometheus
    custom: client.CustomObjectsApi
    core: client.CoreV1Api
    namespace: str
    name: str
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def status(self) -> dict:
        md = self.custom.get_namespaced_custom_object(
            "moedeploy.dev", "v1alpha1", self.namespace, "modeldeployments", self.name
        )
        return md.get("status", {})

    def queue(self) -> float | None:
        found = self.prometheus.queue_depth(self.namespace, self.name, window_s=4)
        return sum(found.values.values()) if isinstance(found, PodSamples) else None

    def p99(self, revision: str | None) -> float | None:
        if not revision:
            return None
        found = self.prometheus.tracks(
            self.namespace, self.name, [revision], time.time(), P99_WINDOW_S, ENGINES["moe-runtime"]
        )
        track = found.get(revision) if isinstance(found, dict) else None
        return track.latency.quantile(0.99) if track is not None and track.requests else None

    def sample(self) -> Sample:
        status = self.status()
        canary = (status.get("canary") or {}).get("revision")
        return Sample(
            at=time.time(),
            queue=self.queue(),
            desired=status.get("desiredReplicas", 0),
            ready=status.get("readyReplicas", 0),
            p99_stable=self.p99(status.get("stableRevision")),
            p99_canary=self.p99(canary),
            canary=canary,
        )

    def start(self) -> None:
        def run() -> None:
            while not self._stop.wait(1.0):
                try:
                    self.samples.append(self.sample())
                except Exception:  # the picture gets a gap, the demo goes on
                    continue

        self._thread = threading.Thread(target=run, name="recorder", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops sampling and waits for a sample being taken, so `samples` no longer changes."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at <= end]

    def events(self) -> list[tuple[float, str, str, str]]:
        """(time, type, reason, message) of the ModelDeployment's Events, in the order they happened."""
        found = self.core.list_namespaced_event(
            self.namespace,
            field_selector=f"involvedObject.kind=ModelDeployment,involvedObject.name={self.name}",
        )
        events = []
        for event in found.items:
            stamp = event.last_timestamp or event.event_time or event.first_timestamp
            at = stamp.timestamp() if isinstance(stamp, datetime) else 0.0
            events.append((at, event.type, event.reason, event.message))
        return sorted(events)
