"""The queue-depth autoscaler end to end, every part real: the local stack's real runtime pods, a real
Prometheus scraping them, the operator as a process, the load generator driving requests through targets.json.

One ModelDeployment (`auto`) of a tiny checkpoint, 1 to 3 pods, every period shortened. The tests run in
order and hand the deployment on: the load scales it out (test 1) and stays on through a Prometheus outage
(test 2); the load stops and the operator is killed in the scale-down window (test 3); then `kubectl scale`
with autoscaling on (test 4) and off (test 5). Each test first waits for the state it starts from.

Why these numbers. Each pod runs at most MAX_BATCH requests at once; the rest wait (the queue). The load is
closed-loop: CLIENTS requests always in flight, so one pod holds about CLIENTS - MAX_BATCH = 14 waiting and
never more than CLIENTS = 2 * TARGET: any read over the tolerance band asks for exactly 2 pods (never 3, even
while the window's average still climbs), so a second scale-up while the new pod loads would be the cascade
the autoscaler must avoid, not a late reaction to a growing queue. Two pods hold about
(CLIENTS - 2 * MAX_BATCH) / 2 = 6 waiting each (7 at most, however unevenly the clients spread): under TARGET
(the queue drained) and, with a margin of 2 for requests between client and server, over TARGET / 2, below
which 1 pod would be asked for. So 2 pods stay the answer under the load, and MAX_REPLICAS = 3 leaves room
for an overshoot to show.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from pathlib import Path

import pytest
from localcluster import free_port
from prometheus_client.parser import text_string_to_metric_families

from moe_runtime.tools.loadgen import LoadConfig, LoadGenerator, Shape
from tests.integration.autoscale_support import (
    PrivatePrometheus,
    Recorder,
    autoscaled_md,
    epoch,
    first_over,
)
from tests.integration.local_stack import START_TIMEOUT_S, pod_ready, write_tiny_checkpoint
from tests.integration.operator_support import Models, OperatorProcess
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MD = "auto"
MAX_BATCH = 2
CLIENTS = 16
TARGET = 8.0
TOLERANCE = 0.1  # the CRD's default
INTERVAL_S = 2
WINDOW_S = 3  # metricWindowSeconds
SCALE_DOWN_WINDOW_S = 25  # long enough for a killed operator to come back inside it on busy cores
MIN_REPLICAS, NEEDED, MAX_REPLICAS = 1, 2, 3
# a pass, its writes and the recorder's poll, on two busy cores
SLACK_S = 2.0


# ---- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("autoscale") / "tiny-qwen3-moe")


@pytest.fixture(scope="module")
def prometheus(cluster, tmp_path_factory):
    """This module's own Prometheus over the stack's targets.json: test 2 stops it, the stack's stays up."""
    server = PrivatePrometheus(tmp_path_factory.mktemp("prometheus"), cluster.targets_file)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def operator(cluster, md_namespace, prometheus, tmp_path_factory):
    metrics_port = free_port()
    process = OperatorProcess(
        cluster,
        ["--namespace", md_namespace, "--prometheus-url", prometheus.url, "--metrics-port", str(metrics_port)],
        tmp_path_factory.mktemp("operator") / "operator.log",
    )  # fmt: skip
    process.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    process.start()
    yield process
    process.stop()
    print(process.log()[-5000:])


@pytest.fixture(scope="module")
def auto(models, operator, prometheus, model_dir):
    """The autoscaled ModelDeployment, serving from one Ready pod whose queue the operator reads."""
    models.apply(
        autoscaled_md(
            MD, model_dir, min_replicas=MIN_REPLICAS, max_replicas=MAX_REPLICAS,
            max_batch_sequences=MAX_BATCH, target=TARGET, interval_s=INTERVAL_S, window_s=WINDOW_S,
            scale_down_window_s=SCALE_DOWN_WINDOW_S,
        )
    )  # fmt: skip
    wait_for(lambda: ready_pods(models) == MIN_REPLICAS, timeout=START_TIMEOUT_S, what="the first Ready pod")
    wait_for(
        lambda: metrics_condition(models).get("status") == "True", timeout=60, what="MetricsAvailable=True"
    )
    yield MD
    models.kubectl("delete", "md", MD, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def recorder(cluster, md_namespace, auto):
    """What the Deployment, the pods and the autoscaler's status did, polled from the API all module long."""
    with Recorder(Models(cluster, md_namespace), auto) as rec:
        yield rec


class Load:
    """The closed-loop load, started by one test and stopped by a later one."""

    def __init__(self, cluster, namespace: str) -> None:
        self.config = LoadConfig(
            targets_file=cluster.targets_file, model_deployment=MD, namespace=namespace,
            concurrency=CLIENTS, duration_s=900, mix=(Shape(8, 32),), timeout_s=60,
        )  # fmt: skip
        self._stack = contextlib.ExitStack()
        self.generator: LoadGenerator | None = None
        self.result: dict | None = None

    @property
    def on(self) -> bool:
        return self.generator is not None

    def start(self) -> float:
        self.generator = self._stack.enter_context(LoadGenerator(self.config).background())
        return time.time()

    def stop(self) -> float:
        stopped = time.time()
        if self.generator is not None:
            self._stack.close()
            self.result, self.generator = self.generator.result, None
        return stopped


@pytest.fixture(scope="module")
def load(cluster, md_namespace):
    generator = Load(cluster, md_namespace)
    yield generator
    generator.stop()


# ---- helpers -----------------------------------------------------------------------------------------------


def ready_pods(models: Models) -> int:
    return sum(pod_ready(p) and not p["metadata"].get("deletionTimestamp") for p in models.pods(MD))


def status(models: Models) -> dict:
    return (models.get(MD) or {}).get("status") or {}


def metrics_condition(models: Models) -> dict:
    return next((c for c in status(models).get("conditions", ()) if c["type"] == "MetricsAvailable"), {})


def replicas(models: Models) -> int:
    return models.deployment(MD)["spec"]["replicas"]


def event_counts(models: Models) -> dict[tuple[str, str], int]:
    """(type, reason) -> occurrences so far (the operator folds repeats into one Event's count)."""
    counts: dict[tuple[str, str], int] = {}
    for event in models.events(MD):
        key = (event["type"], event["reason"])
        counts[key] = counts.get(key, 0) + (event.get("count") or 1)
    return counts


def new_events(before: dict, after: dict) -> dict[tuple[str, str], int]:
    return {key: n - before.get(key, 0) for key, n in after.items() if n > before.get(key, 0)}


def operator_sample(operator, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The sum of the samples of the operator process's own /metrics that match; None when there are none."""
    try:
        with urllib.request.urlopen(operator.metrics_url, timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    found = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items())
    ]
    return sum(found) if found else None


def under_load_at(models: Models, load: Load, pods: int) -> None:
    """The state tests 2 and 3 start from: the load on and `pods` Ready pods serving it."""
    if not load.on:
        load.start()
    wait_for(
        lambda: replicas(models) == pods and ready_pods(models) == pods, timeout=START_TIMEOUT_S,
        what=f"{pods} Ready pods under load",
    )  # fmt: skip


# ---- the tests ---------------------------------------------------------------------------------------------


def test_load_scales_out_within_one_interval_and_not_again_while_the_new_pod_loads(
    models, auto, prometheus, recorder, load
):
    assert replicas(models) == MIN_REPLICAS
    started = load.start()
    change = wait_for(
        lambda: next(iter(recorder.changes(since=started)), None),
        timeout=60,
        what="the operator to scale out",
    )
    assert (change.before, change.after) == (MIN_REPLICAS, NEEDED), change
    assert change.starting == 0, "the first scale-up came while every pod was Ready"

    # the queue as Prometheus has it: when did it first show over the target?
    samples = prometheus.queue_samples(models.namespace, MD, started - 5, change.at + 1)
    seen = first_over(samples, TARGET, since=started)
    # the operator reads each pod's mean over the metric window, and acts outside the tolerance band
    readable = first_over(samples, TARGET * (1 + TOLERANCE), window_s=WINDOW_S, since=started)
    assert seen is not None and readable is not None, samples
    assert started <= seen <= readable <= change.at, (started, seen, readable, change)
    # within one interval of the windowed read showing it, i.e. at most one window later than the first
    # over-target sample (the window is what keeps one scrape's spike from deciding)
    print(
        f"load step at 0: queue over target in Prometheus at {seen - started:.2f}s, in the operator's window "
        f"at {readable - started:.2f}s, Deployment patched at {change.at - started:.2f}s"
    )
    assert change.at - readable <= INTERVAL_S + SLACK_S, (change.at - readable, samples)
    assert change.at - seen <= WINDOW_S + INTERVAL_S + SLACK_S, (change.at - seen, samples)
    scaled = [e for e in models.events(MD) if e["reason"] == "Scaled"]
    assert any(
        f"from {MIN_REPLICAS} to {NEEDED}" in e["message"] and "over target" in e["message"] for e in scaled
    )

    # the new pod loads (seconds), its predecessor's queue stays high all along: no second scale-up
    wait_for(lambda: ready_pods(models) == NEEDED, timeout=START_TIMEOUT_S, what="the new pod Ready")
    # and once it serves, the queue per pod drains under the target (the load splits over both)
    wait_for(
        lambda: (prometheus.mean_queue(models.namespace, MD, WINDOW_S) or TARGET) < TARGET, timeout=60,
        what="the queue per pod under the target",
    )  # fmt: skip
    # one more evaluation with both pods serving, then nothing else may have changed
    drained = time.time()
    wait_for(
        lambda: (epoch(status(models)["autoscaling"]["lastEvaluationTime"]) or 0) >= drained + 1, timeout=30,
        what="an evaluation after the queue drained",
    )  # fmt: skip
    changes = recorder.changes(since=started)
    extra = [c for c in changes if c.after > c.before and c.starting > 0]
    assert extra == [], f"scale-ups while pods were still loading: {extra}"
    assert changes == [change], changes
    assert status(models)["autoscaling"]["desiredReplicas"] == NEEDED


def test_prometheus_down_holds_the_replicas_says_why_once_and_clears_when_back(
    models, auto, prometheus, recorder, load
):
    under_load_at(models, load, NEEDED)
    wait_for(
        lambda: metrics_condition(models).get("status") == "True", timeout=60, what="MetricsAvailable=True"
    )
    before = event_counts(models)
    stopped = time.time()
    prometheus.stop()

    condition = wait_for(
        lambda: (c := metrics_condition(models)).get("status") == "False" and c, timeout=30,
        what="MetricsAvailable=False",
    )  # fmt: skip
    assert condition["reason"] == "PrometheusUnavailable", condition
    assert prometheus.url in condition["message"], condition
    # keep it down until an evaluation after the scale-down window, counted from the outage, has passed:
    # had missing data been read as an empty queue, the deployment would have scaled in by then
    wait_for(
        lambda: (epoch(status(models)["autoscaling"]["lastEvaluationTime"]) or 0)
        >= stopped + SCALE_DOWN_WINDOW_S + INTERVAL_S,
        timeout=SCALE_DOWN_WINDOW_S + 30, what="evaluations past the scale-down window while Prometheus is down",
    )  # fmt: skip
    held = status(models)["autoscaling"]
    assert held["desiredReplicas"] == NEEDED and "no queue data" in held["reason"], held
    assert replicas(models) == NEEDED
    assert recorder.changes(since=stopped) == []

    prometheus.start()
    back = time.time()
    wait_for(
        lambda: metrics_condition(models).get("status") == "True",
        timeout=60,
        what="MetricsAvailable=True again",
    )
    assert metrics_condition(models)["reason"] == "QueueDepthRead"
    # the pass records the status before it posts its Events
    events = wait_for(
        lambda: (e := new_events(before, event_counts(models))).get(("Normal", "MetricsAvailable")) and e,
        timeout=30, what="the MetricsAvailable Event",
    )  # fmt: skip
    warnings = {key: n for key, n in events.items() if key[0] == "Warning"}
    assert warnings == {("Warning", "PrometheusUnavailable"): 1}, events
    assert events.get(("Normal", "MetricsAvailable")) == 1, events
    assert recorder.changes(since=stopped) == [], "no scaling during the outage or when Prometheus came back"
    assert time.time() - back < 60


def test_load_stop_scales_in_after_the_window_even_across_an_operator_restart(
    models, auto, operator, recorder, load
):
    under_load_at(models, load, NEEDED)
    stopped = load.stop()
    assert load.result["errors"] == {}, load.result

    # the autoscaler asks for fewer pods; the scale-down window holds the last recommendation of NEEDED
    wait_for(
        lambda: (a := status(models).get("autoscaling", {})).get("recommendation", NEEDED) < NEEDED
        and epoch(a["lastEvaluationTime"]) >= stopped,
        timeout=30, what="a recommendation to scale in",
    )  # fmt: skip
    memory = status(models)["autoscaling"]["memory"]["recommendations"]
    holding = max(r["at"] for r in memory if r["replicas"] >= NEEDED)
    window_ends = holding + SCALE_DOWN_WINDOW_S
    assert replicas(models) == NEEDED

    operator.restart(kill=True)
    killed = time.time()
    assert killed < window_ends - 5, "killed in the middle of the window"
    # the new process decides before the window is over, from the memory it read back: keep NEEDED
    labels = {"namespace": models.namespace, "model_deployment": MD}
    wait_for(
        lambda: operator_sample(operator, "moe_operator_autoscaler_decisions_total"), timeout=30,
        what="the restarted operator's first evaluation",
    )  # fmt: skip
    decided = time.time()
    assert operator_sample(operator, "moe_operator_desired_replicas", labels) == NEEDED
    print(
        f"killed {window_ends - killed:.1f}s and the new operator decided {window_ends - decided:.1f}s before the window's end"
    )
    assert decided < window_ends, (
        f"the restarted operator first decided {decided - window_ends:.1f}s after the window ended: "
        "too late to show that it kept the window"
    )
    assert replicas(models) == NEEDED

    [change] = wait_for(
        lambda: recorder.changes(since=stopped), timeout=SCALE_DOWN_WINDOW_S + 30, what="the scale-in"
    )
    assert (change.before, change.after) == (NEEDED, MIN_REPLICAS), change
    print(
        f"load stopped at 0: window ends at {window_ends - stopped:.1f}s, scaled in at {change.at - stopped:.1f}s"
    )
    assert change.at >= window_ends, f"scaled in {window_ends - change.at:.1f}s before the window ended"
    assert change.at - window_ends <= INTERVAL_S + SLACK_S, change.at - window_ends
    wait_for(lambda: len(models.pods(MD)) == MIN_REPLICAS, timeout=60, what="the removed pod gone")
    scaled = [e for e in models.events(MD) if e["reason"] == "Scaled" and f"from {NEEDED} to" in e["message"]]
    assert len(scaled) == 1 and "under target" in scaled[0]["message"], scaled


def test_kubectl_scale_while_autoscaling_is_reported_and_the_autoscaler_keeps_deciding(
    models, auto, recorder, load
):
    assert not load.on
    wait_for(lambda: replicas(models) == MIN_REPLICAS, timeout=60, what=f"{MIN_REPLICAS} replica")
    scaled_at = time.time()
    models.kubectl("scale", f"md/{MD}", f"--replicas={MAX_REPLICAS}")

    event = wait_for(
        lambda: next((e for e in models.events(MD) if e["reason"] == "ManualScaleIgnored"), None),
        timeout=30, what="a ManualScaleIgnored event",
    )  # fmt: skip
    assert f"from {MIN_REPLICAS} to {MAX_REPLICAS}" in event["message"], event
    wait_for(
        lambda: (epoch(status(models)["autoscaling"]["lastEvaluationTime"]) or 0) >= scaled_at + 2 * INTERVAL_S,
        timeout=30, what="evaluations after the kubectl scale",
    )  # fmt: skip
    auto_status = status(models)["autoscaling"]
    assert (
        auto_status["desiredReplicas"] == MIN_REPLICAS and auto_status["observedSpecReplicas"] == MAX_REPLICAS
    )
    assert (models.get(MD) or {})["spec"]["replicas"] == MAX_REPLICAS, "the operator never rewrites the spec"
    assert replicas(models) == MIN_REPLICAS
    assert recorder.changes(since=scaled_at) == []


def test_kubectl_scale_drives_the_replicas_through_the_scale_subresource_when_autoscaling_is_off(
    cluster, models, auto
):
    models.patch_spec(MD, {"replicas": MIN_REPLICAS, "autoscaling": {"enabled": False}})
    wait_for(lambda: "autoscaling" not in status(models), timeout=30, what="the autoscaler's status gone")
    before = event_counts(models)

    models.kubectl(
        "scale", f"md/{MD}", "--replicas=2"
    )  # what an HPA or KEDA does: write the scale subresource

    def scale() -> dict:
        return json.loads(models.kubectl("get", f"md/{MD}", "--subresource=scale", "-o", "json").stdout)

    wait_for(lambda: replicas(models) == 2, timeout=30, what="the Deployment at 2 replicas")
    read = wait_for(
        lambda: (s := scale())["status"]["replicas"] == 2 and s, timeout=60, what="scale status 2"
    )
    assert read["spec"]["replicas"] == 2
    selected = models.kubectl("get", "pods", "-l", read["status"]["selector"], "-o", "name").stdout.split()
    assert len(selected) == 2, "an HPA finds the pods through the scale subresource's selector"
    events = new_events(before, event_counts(models))
    assert ("Normal", "ManualScaleIgnored") not in events and events.get(("Normal", "Scaled")) == 1, events
