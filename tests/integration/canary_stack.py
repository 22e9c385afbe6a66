"""What the canary end-to-end tests and the canary benchmark share: a ModelDeployment with an SLO whose pods
run on the local kubelet, the faults that make a revision bad, steady load through targets.json, every version
of a Deployment through a watch, and what the operator's own metrics say.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from prometheus_api_client import PrometheusConnect
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.local_stack import local_md, processes
from tests.waiting import wait_for

LOAD_CONCURRENCY = 6
LOAD_MIX = "8:16"
# Judged against the stable track only, as the machine's speed (two busy cores, a CPU burner beside) moves both:
# windows of 4 s read 2 s after they end (the local Prometheus scrapes every second), three to pass, two failed
# ones to roll back; a canary more than 1.5 times slower than the stable track breaks the SLO.
ANALYSIS = {
    "maxRelativeIncrease": 0.5,
    "maxErrorRatio": 0.05,
    "analysisIntervalSeconds": 4,
    "scrapeIntervalSeconds": 1,
    "metricDelaySeconds": 2,
    "initialDelaySeconds": 4,
    "measurements": 3,
    "failureLimit": 1,
    "minRequests": 5,
    "bakeSeconds": 0,
}
DRAIN_DELAY_S = 2  # the load generator re-reads targets.json before every request: a pod leaves it at once
# the faults that make a revision bad (runtime/moe_runtime/faults.py), each against the same stable track
SLOWER_PER_TOKEN = "token_delay=0.05"


def canary_md(name: str, model_dir: Path, replicas: int = 1, **slo: Any) -> dict:
    """A ModelDeployment on the local kubelet's node, rolled out by canary analysis against its stable track."""
    body = local_md(name, {"hostPath": {"path": str(model_dir)}}, replicas)
    spec = body["spec"]
    spec["runtime"]["drainDelaySeconds"] = DRAIN_DELAY_S
    spec["rollout"] = {"strategy": "Canary", "canaryReplicas": 1}
    spec["slo"] = {**ANALYSIS, **slo}
    return body


def faulty(*faults: str) -> dict:
    """The runtime part of a spec patch that makes a revision have `faults`."""
    return {"args": ["--inject-faults", ",".join(faults)]}


class SteadyLoad:
    """`python -m moe_runtime loadgen` on one ModelDeployment's Ready pods (targets.json), closed loop, in a
    process of its own so that what the test does meanwhile never slows its clients down. `with` runs it;
    `result` is its JSON summary once the block ended (SIGTERM: no new requests, the ones in flight finish)."""

    def __init__(
        self,
        targets_file: Path,
        namespace: str,
        md: str,
        log: Path,
        concurrency: int = LOAD_CONCURRENCY,
        mix: str = LOAD_MIX,
    ) -> None:
        self.argv = [
            sys.executable, "-m", "moe_runtime", "loadgen", "--targets", str(targets_file),
            "--model-deployment", md, "--namespace", namespace, "--concurrency", str(concurrency),
            "--duration", "900", "--mix", mix, "--timeout", "120",
            # prompts of their own: with the same seed every run repeats the last one's prompts, which the stable
            # pods' prefix caches hold and a new canary's do not (its time to first token would look worse)
            "--seed", str(random.randrange(2**31)),
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


def canary_gone(cluster, models, name: str) -> bool:
    """No canary Deployment, no canary pod in the API, no canary process left on the node."""
    live = processes(cluster.state_dir, models.namespace, name)
    return (
        models.deployment(f"{name}-canary") is None
        and not track_pods(models, name, "canary")
        and not any(pod.startswith(f"{name}-canary-") for pod in live)
    )
