"""What the autoscaling end-to-end test and bench/bench_autoscale_load.py share: an autoscaled ModelDeployment
on the local kubelet's node, a private Prometheus over the stack's targets.json, and a recorder of what the
Deployment, its pods and the autoscaler's status did over time, read from the API from outside the operator.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from localcluster import free_port, prometheus_config

from tests.integration.local_stack import local_md, pod_ready
from tests.processes import terminate
from tests.waiting import wait_for, wait_until_serving

SCRAPE_INTERVAL = "1s"
QUEUE_DEPTH = "moe_runtime_queue_depth"
FRESH_S = 2.0  # two scrapes: a pod without a sample that recent is no longer scraped


def autoscaled_md(
    name: str,
    model_dir: Path,
    *,
    min_replicas: int = 1,
    max_replicas: int = 3,
    max_batch_sequences: int = 2,
    target: float = 5,
    interval_s: int = 2,
    window_s: int = 3,
    scale_down_window_s: int = 20,
) -> dict:
    """A ModelDeployment of real runtime pods with autoscaling on and every period shortened. Scale-up and
    scale-down step limits are wide (maxPods: maxReplicas per interval), so the windows alone decide."""
    body = local_md(name, {"hostPath": {"path": str(model_dir)}}, replicas=min_replicas)
    spec = body["spec"]
    spec["minReplicas"], spec["maxReplicas"] = min_replicas, max_replicas
    # a removed pod stops getting requests at once (it leaves targets.json): no need to wait before draining
    spec["runtime"]["drainDelaySeconds"] = 0
    spec["runtime"]["batching"] = {"maxBatchSequences": max_batch_sequences}
    step = {"maxPods": max_replicas, "periodSeconds": interval_s}
    spec["autoscaling"] = {
        "enabled": True,
        "targetQueueDepth": target,
        "intervalSeconds": interval_s,
        "metricWindowSeconds": window_s,
        "scaleUp": {"stabilizationWindowSeconds": 0, **step},
        "scaleDown": {"stabilizationWindowSeconds": scale_down_window_s, **step},
    }
    return body


class PromReader:
    """Reads from a Prometheus over its HTTP API."""

    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        with urllib.request.urlopen(
            f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}", timeout=10
        ) as r:
            return json.load(r)["data"]["result"]

    def queue_samples(
        self, namespace: str, md: str, start: float, end: float
    ) -> dict[str, list[tuple[float, float]]]:
        """Every scraped queue sample of the ModelDeployment's pods in [start, end]: pod -> [(time, value)]."""
        span = max(1, math.ceil(end - start))
        selector = f'{QUEUE_DEPTH}{{namespace="{namespace}",model_deployment="{md}"}}[{span}s]'
        out: dict[str, list[tuple[float, float]]] = {}
        for series in self.query(selector, at=end):
            points = [(float(t), float(v)) for t, v in series["values"] if float(t) >= start]
            out.setdefault(series["metric"]["pod"], []).extend(points)
        return {pod: sorted(points) for pod, points in out.items()}

    def mean_queue(self, namespace: str, md: str, window_s: float) -> float | None:
        """The queue per pod now, each pod's averaged over the window (as the operator reads it)."""
        selector = f'{QUEUE_DEPTH}{{namespace="{namespace}",model_deployment="{md}"}}[{window_s:g}s]'
        result = self.query(f"avg(avg_over_time({selector}))")
        return float(result[0]["value"][1]) if result else None


class PrivatePrometheus(PromReader):
    """A Prometheus of one's own, configured as the local stack's (hack/localcluster.py) over the same
    targets.json, so that it sees the same pods with the same labels and can be stopped without disturbing
    the stack's. It keeps its port and its data across stop() and start()."""

    def __init__(self, workdir: Path, targets_file: Path, scrape_interval: str = SCRAPE_INTERVAL) -> None:
        self.workdir = workdir
        self.port = free_port()
        super().__init__(f"http://127.0.0.1:{self.port}")
        self.config = workdir / "prometheus.yml"
        self.config.write_text(prometheus_config(targets_file, scrape_interval))
        self.log = workdir / "prometheus.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [binary, f"--config.file={self.config}", f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1d"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        wait_until_serving(f"{self.url}/-/ready", self.process, self.log, timeout=60)

    def stop(self) -> None:
        terminate(self.process)


def first_over(
    samples: dict[str, list[tuple[float, float]]], threshold: float, window_s: float = 0, since: float = 0
) -> float | None:
    """The first scrape time at which the queue per pod is over `threshold`, the pods' values averaged.

    Window 0: each pod's latest sample, as Prometheus shows it (gone after FRESH_S without a scrape). Else as
    the operator reads it (operator/moe_operator/io/prometheus.py): each pod's mean over (t - window, t], or its latest sample when a
    scrape came late, nothing once that is older than two windows. Pods without a sample since `since` (no
    longer scraped, so no longer Ready, which the operator leaves out) are left out."""
    live = [points for points in samples.values() if any(t >= since for t, _ in points)]
    for at in sorted({t for points in live for t, _ in points}):
        per_pod = []
        for points in live:
            past = [(t, v) for t, v in points if t <= at]
            if not past or at - past[-1][0] > (2 * window_s if window_s else FRESH_S):
                continue
            recent = [v for t, v in past if t > at - window_s] if window_s else []
            per_pod.append(sum(recent) / len(recent) if recent else past[-1][1])
        if per_pod and sum(per_pod) / len(per_pod) > threshold:
            return at
    return None


@dataclass(frozen=True)
class Snapshot:
    at: float  # when the Deployment was read
    replicas: int | None  # the stable Deployment's spec.replicas
    ready: int  # pods Ready and not terminating
    starting: int  # pods neither Ready nor terminating
    autoscaling: dict[str, Any]  # status.autoscaling of the ModelDeployment


@dataclass(frozen=True)
class ScaleChange:
    at: float  # first seen (the recorder polls every `period`)
    before: int
    after: int
    ready: int  # pods Ready just before the change was seen
    starting: int  # pods still loading just before the change was seen


@dataclass
class Recorder:
    """Polls the Deployment, the pods and the ModelDeployment's status in a thread (`with recorder:`)."""

    models: Any  # tests.integration.operator_support.Models
    md: str
    period: float = 0.2
    snapshots: list[Snapshot] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Recorder:
        self._thread = threading.Thread(target=self._run, name=f"recorder-{self.md}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # the API server is busy: the next poll catches up
                self.snapshots.append(self.snapshot())
            self._stop.wait(self.period)

    def snapshot(self) -> Snapshot:
        # the pods before the Deployment: a snapshot whose replicas are still the old count then cannot hold
        # a pod that the new count created
        pods = [p for p in self.models.pods(self.md) if not p["metadata"].get("deletionTimestamp")]
        deployment = self.models.deployment(self.md)
        seen_at = time.time()
        ready = sum(pod_ready(p) for p in pods)
        status = (self.models.get(self.md) or {}).get("status") or {}
        return Snapshot(
            seen_at,
            deployment["spec"]["replicas"] if deployment else None,
            ready,
            len(pods) - ready,
            status.get("autoscaling") or {},
        )

    def changes(self, since: float = 0) -> list[ScaleChange]:
        """The replica changes seen since `since`, up to a snapshot taken after this call began."""
        asked = time.time()
        wait_for(
            lambda: self.snapshots and self.snapshots[-1].at > asked, timeout=30, what="a fresh snapshot"
        )
        found = []
        seen = [s for s in list(self.snapshots) if s.replicas is not None]
        for before, after in zip(seen, seen[1:], strict=False):
            if after.at >= since and after.replicas != before.replicas:
                found.append(
                    ScaleChange(after.at, before.replicas, after.replicas, before.ready, before.starting)
                )
        return found

    def evaluations(self, since: float, until: float) -> list[dict[str, Any]]:
        """The operator's evaluations whose time (status.autoscaling.lastEvaluationTime, whole seconds) falls in
        [since - 1, until], each as status recorded it: what it read, recommended and decided, and why."""
        seen: dict[str, dict[str, Any]] = {}
        for snapshot in list(self.snapshots):
            auto = snapshot.autoscaling
            at = epoch(auto.get("lastEvaluationTime"))
            if at is not None and since - 1 <= at <= until and auto["lastEvaluationTime"] not in seen:
                seen[auto["lastEvaluationTime"]] = {
                    "at": at,
                    "metric": auto.get("currentMetric"),
                    "recommendation": auto.get("recommendation"),
                    "desired": auto.get("desiredReplicas"),
                    "reason": auto.get("reason"),
                }
        return list(seen.values())


def epoch(text: str | None) -> float | None:
    """A status time (`2026-01-01T00:00:00Z`) as epoch seconds."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z").timestamp() if text else None
