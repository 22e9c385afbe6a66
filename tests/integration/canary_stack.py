"""What the canary end-to-end tests and the canary benchmark share: a ModelDeployment with an SLO whose pods
run on the local kubelet, steady load through targets.json, every version of a Deployment through a watch,
latency read from Prometheus with the operator's own query, and a private Prometheus that can be stopped.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from prometheus_api_client import PrometheusConnect
from prometheus_client.parser import text_string_to_metric_families

from moe_operator.decisions.promql import canary_window
from tests.integration.local_stack import local_md, processes
from tests.waiting import wait_for

# Closed loop: a slow canary collects most of the clients (each next request goes to the next pod in turn),
# so its latency grows with their number while a batching one's grows far less. Measured on 2 busy cores
# (load average 6-9): with 24 clients a canary at `maxBatchSequences: 1` has about 4 times the p99 latency of
# a good one beside the same stable pod; with 8 or 12, about 2 times (streaming each token costs about what
# an engine step of a tiny model does, and that part batching does not amortise).
LOAD_CONCURRENCY = 24
LOAD_MIX = "8:16"
CHECKPOINT_LAYERS = 8
ANALYSIS = {
    "analysisIntervalSeconds": 4,
    # a canary's first seconds under load say little: a slow one's queue is still building (measured: the
    # first window after 4 s could still pass at `maxBatchSequences: 1`, the ones after 8 s never did)
    "initialDelaySeconds": 8,
    "measurements": 2,
    "failureLimit": 1,
    "minRequests": 3,
    "maxErrorRatio": 0.01,
}
DRAIN_DELAY_S = 2  # the load generator re-reads targets.json before every request: a pod leaves it at once

# the good revision's SLO: this many times the p99 of the stable pod alone under the load. Lenient on purpose:
# on two cores a second busy pod adds no capacity, so beside its canary the stable pod is slower, not faster,
# and a fresh canary collects clients while it warms up (measured: 1.0 s alone, 0.9-2.5 s for the pair)
GOOD_MARGIN = 5.0
# the bad revision's SLO: this many times the good canary's median window p99 under the same load. Measured
# with 24 clients on 2 cores at load average 8-16, windows after the initial delay: good 0.93-4.97 s, bad
# 9.6-19.8 s, their ratio within one run 2.0 (load average 16) to 10. The histogram's buckets make the estimates
# cluster at their bounds (2.5, 5, 10, 20 s): at 2 times, a good 4.97 s gave 9.9 s against a bad 9.95 s.
BAD_MARGIN = 1.5


def canary_md(name: str, model_dir: Path, p99_s: float, replicas: int = 1, **slo: Any) -> dict:
    """A ModelDeployment on the local kubelet's node, rolled out by canary analysis against a p99 latency."""
    body = local_md(name, {"hostPath": {"path": str(model_dir)}}, replicas)
    spec = body["spec"]
    spec["runtime"]["drainDelaySeconds"] = DRAIN_DELAY_S
    spec["rollout"] = {"strategy": "Canary", "canaryReplicas": 1}
    spec["slo"] = {"p99LatencySeconds": p99_s, **ANALYSIS, **slo}
    return body


class SteadyLoad:
    """`python -m moe_runtime loadgen` on one ModelDeployment's Ready pods (targets.json), closed loop, in a
    process of its own so that what the test does meanwhile never slows its clients down. `with` runs it;
    `result` is its JSON summary once the block ended (SIGTERM: no new requests, the ones in flight finish)."""

    def __init__(
        self, targets_file: Path, namespace: str, md: str, log: Path, concurrency: int = LOAD_CONCURRENCY
    ) -> None:
        self.argv = [
            sys.executable, "-m", "moe_runtime", "loadgen", "--targets", str(targets_file),
            "--model-deployment", md, "--namespace", namespace, "--concurrency", str(concurrency),
            "--duration", "900", "--mix", LOAD_MIX, "--timeout", "120",
        ]  # fmt: skip
        self.log = log
        self.result: dict | None = None

    def __enter__(self) -> SteadyLoad:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True
            )
        return self

    def __exit__(self, *exc) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            out, _ = self.process.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        if exc[0] is None:
            self.result = json.loads(out)


# ---- what Prometheus holds -----------------------------------------------------------------------------------


def p99_latency(
    prom: PrometheusConnect, namespace: str, md: str, revision: str, window_s: float
) -> float | None:
    """The p99 latency of `revision` over the last `window_s`, by the query the operator judges a canary with."""
    query = canary_window(namespace, md, revision, window_s).p99_latency
    result = prom.custom_query(query)
    value = float(result[0]["value"][1]) if result else float("nan")
    return value if value == value else None


def requests_answered(
    prom: PrometheusConnect, namespace: str, md: str, revision: str, window_s: float
) -> float:
    query = canary_window(namespace, md, revision, window_s).requests_by_status
    return sum(float(item["value"][1]) for item in prom.custom_query(query))


def requests_of(prom: PrometheusConnect, namespace: str, md: str, window_s: float) -> float:
    """Requests answered by every pod of `md` in the last `window_s`."""
    query = f'sum(increase(moe_runtime_requests_total{{namespace="{namespace}",model_deployment="{md}"}}[{window_s:g}s]))'
    result = prom.custom_query(query)
    return float(result[0]["value"][1]) if result else 0.0


def scraped_revisions(prom: PrometheusConnect, namespace: str, md: str) -> set[str]:
    series = prom.custom_query(f'up{{namespace="{namespace}",model_deployment="{md}"}} == 1')
    return {s["metric"]["revision"] for s in series}


# ---- the API -------------------------------------------------------------------------------------------------


class DeploymentHistory:
    """Every version of one Deployment from `start()` on, read through a watch, so that a change that is undone
    between two polls is seen too. `versions`: (spec.replicas, spec.template) in order; None once deleted."""

    def __init__(self, apps: client.AppsV1Api, namespace: str, name: str) -> None:
        self._apps, self._namespace, self._name = apps, namespace, name
        self._as_dict = apps.api_client.sanitize_for_serialization
        self.versions: list[tuple[int, dict] | None] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name=f"watch-{name}", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> DeploymentHistory:
        listed = self._apps.list_namespaced_deployment(self._namespace, field_selector=self._selector)
        for item in listed.items:
            self._record(self._as_dict(item))
        self._resource_version = listed.metadata.resource_version
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if self.error is not None:
            raise AssertionError(f"the watch on Deployment {self._name} failed: {self.error!r}")

    @property
    def _selector(self) -> str:
        return f"metadata.name={self._name}"

    def _record(self, deployment: dict | None) -> None:
        if deployment is None:
            self.versions.append(None)
        else:
            self.versions.append((deployment["spec"]["replicas"], deployment["spec"]["template"]))

    def _follow(self) -> None:
        try:
            while not self._stop.is_set():
                stream = watch.Watch().stream(
                    self._apps.list_namespaced_deployment, self._namespace, field_selector=self._selector,
                    resource_version=self._resource_version, timeout_seconds=2, allow_watch_bookmarks=False,
                )  # fmt: skip
                for event in stream:
                    obj = event["raw_object"]
                    self._resource_version = obj["metadata"]["resourceVersion"]
                    self._record(None if event["type"] == "DELETED" else obj)
        except BaseException as err:  # reported by __exit__
            self.error = err


def events(models, name: str, reason: str) -> list[dict]:
    return [e for e in models.events(name) if e["reason"] == reason]


def condition(md: dict, kind: str) -> dict:
    return next(c for c in md["status"]["conditions"] if c["type"] == kind)


def rejected(md: dict | None, revision: str) -> dict | None:
    entries = ((md or {}).get("status") or {}).get("rejectedRevisions") or ()
    return next((r for r in entries if r["revision"] == revision), None)


def track_pods(models, md: str, track: str) -> list[dict]:
    return [p for p in models.pods(md) if p["metadata"]["labels"].get("moedeploy.dev/track") == track]


def template_revision(deployment: dict | None) -> str | None:
    if deployment is None:
        return None
    return deployment["spec"]["template"]["metadata"]["labels"]["moedeploy.dev/revision"]


# ---- the operator's own metrics ------------------------------------------------------------------------------


def operator_metrics(port: int) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, from the operator's /metrics; {} while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return {}
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# ---- what the canary tests and the benchmark wait for and derive -------------------------------------------


def new_revision(models, name: str, old: str) -> str:
    """The revision the operator says the spec now describes, once it is another than `old`."""

    def described() -> str | None:
        md = models.get(name)
        status = md.get("status") or {}
        current = status.get("observedGeneration") == md["metadata"]["generation"] and status.get(
            "currentRevision"
        )
        return current if current and current != old else None

    return wait_for(described, timeout=30, what=f"the operator to see the new revision of {name}")


def measured_p99(prom, models, name: str, revision: str, since: float, window_s: float) -> float | None:
    """The p99 latency of `revision` over a window that lies wholly under the load started at `since`."""
    if time.monotonic() - since < window_s + 2:  # two scrapes of slack: the window must be under load
        return None
    if requests_answered(prom, models.namespace, name, revision, window_s) < 20:
        return None
    return p99_latency(prom, models.namespace, name, revision, window_s)


def canary_gone(cluster, models, name: str) -> bool:
    """No canary Deployment, no canary pod in the API, no canary process left on the node."""
    live = processes(cluster.state_dir, models.namespace, name)
    return (
        models.deployment(f"{name}-canary") is None
        and not track_pods(models, name, "canary")
        and not any(pod.startswith(f"{name}-canary-") for pod in live)
    )


def slo_threshold(latency_s: float, margin: float) -> float:
    """`margin` times `latency_s`, to two significant digits (readable in status messages)."""
    return float(f"{margin * latency_s:.2g}")
