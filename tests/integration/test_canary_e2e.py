"""Canary analysis and automatic rollback end to end (issue 12), every part real: the local stack's control
plane, runtime pods as processes on the local kubelet's node, Prometheus scraping them through targets.json,
the operator as a process, and steady load from the load generator spreading requests over the Ready pods
as a Service does.

A good revision (a harmless runtime setting) is promoted; a bad one (`maxBatchSequences: 1`: under the same
concurrent load its requests queue, several times slower) is rolled back with the stable Deployment never
touched and no request failing; the rejection survives an operator restart, yields to a spec change and to
the retry annotation; Prometheus down holds the canary instead of deciding; with autoscaling on, the stable
Deployment keeps its replicas while the canary is analysed. The SLO thresholds come from latencies measured
here under the test's load, not from constants.
"""

from __future__ import annotations

import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_api_client import PrometheusConnect

from tests.integration.autoscale_support import PrivatePrometheus
from tests.integration.canary_stack import (
    ANALYSIS,
    BAD_MARGIN,
    CHECKPOINT_LAYERS,
    GOOD_MARGIN,
    LOAD_CONCURRENCY,
    DeploymentHistory,
    SteadyLoad,
    canary_gone,
    canary_md,
    condition,
    events,
    measured_p99,
    metric,
    new_revision,
    operator_metrics,
    rejected,
    requests_of,
    scraped_revisions,
    slo_threshold,
    template_revision,
)
from tests.integration.local_stack import START_TIMEOUT_S, targets, write_tiny_checkpoint
from tests.integration.operator_support import Models, OperatorProcess
from tests.integration.runtime_server.harness import free_port
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
pytest_plugins = ["tests.integration.operator_fixtures"]

WINDOW_S = ANALYSIS["analysisIntervalSeconds"]
# a canary's pod starting, then its analysis; a promotion adds the stable Deployment's rolling update
DECIDED_S = START_TIMEOUT_S + 12 * WINDOW_S
PROMOTED_S = DECIDED_S + START_TIMEOUT_S


@dataclass
class Operator:
    process: OperatorProcess
    metrics_port: int

    def metrics(self) -> dict:
        return operator_metrics(self.metrics_port)

    def reconciled(self) -> float:
        return metric(self.metrics(), "moe_operator_reconcile_total", result="ok")


@dataclass
class Seen:
    """What polling saw while a canary ran."""

    canary_urls: set[str] = field(default_factory=set)
    scraped: set[str] = field(default_factory=set)
    windows: dict[float, dict] = field(default_factory=dict)  # analysis outcomes by window end
    phases: list[str] = field(default_factory=list)
    autoscaling: set[str] = field(default_factory=set)  # the autoscaler's reasons while a canary ran

    def observe(self, cluster, models, prom, name: str, md: dict | None) -> None:
        status = (md or {}).get("status") or {}
        canary = status.get("canary")
        if canary:
            if not self.phases or self.phases[-1] != canary["phase"]:
                self.phases.append(canary["phase"])
            if "reason" in (status.get("autoscaling") or {}):
                self.autoscaling.add(status["autoscaling"]["reason"])
            for outcome in (canary.get("analysis") or {}).get("recent") or ():
                self.windows[outcome["at"]] = outcome
        for pod, entry in targets(cluster.targets_file, models.namespace, name).items():
            if pod.startswith(f"{name}-canary-"):
                self.canary_urls.add(f"http://{entry['targets'][0]}")
        self.scraped |= scraped_revisions(prom, models.namespace, name)

    def p99s(self, kind: str) -> list[float]:
        return [w["p99LatencySeconds"] for w in self.windows.values() if w["kind"] == kind]


def delete_and_wait(models, name: str) -> None:
    """Deletes `name` and waits for its pods to be gone; first prints its status and events (pytest shows
    them when a test failed)."""
    print(models.kubectl("get", "md", name, "-o", "yaml", check=False).stdout)
    print(models.kubectl("get", "events", "--sort-by=.lastTimestamp", check=False).stdout[-6000:])
    models.kubectl("delete", "md", name, "--ignore-not-found", "--wait=true", "--timeout=60s")
    wait_for(lambda: not models.pods(name), timeout=90, what=f"the pods of {name} to be gone")


def wait_warm(prom, models, name: str, requests: int = 10) -> None:
    wait_for(
        lambda: requests_of(prom, models.namespace, name, WINDOW_S) >= requests,
        timeout=90, what=f"the load on {name} to show in Prometheus",
    )  # fmt: skip


# ---- fixtures --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("canary") / "tiny-qwen3-moe", CHECKPOINT_LAYERS)


@pytest.fixture(scope="module")
def load_logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("load")


def steady_load(cluster, models, name: str, logs: Path, concurrency: int = LOAD_CONCURRENCY) -> SteadyLoad:
    log = logs / f"{models.namespace}-{name}-{uuid.uuid4().hex[:6]}.log"
    return SteadyLoad(cluster.targets_file, models.namespace, name, log, concurrency)


@pytest.fixture(scope="module")
def prom(cluster) -> PrometheusConnect:
    return PrometheusConnect(url=cluster.prometheus_url, disable_ssl=True)


def start_operator(cluster, namespace: str, prometheus_url: str, workdir: Path) -> Operator:
    port = free_port()
    process = OperatorProcess(
        cluster,
        ["--namespace", namespace, "--prometheus-url", prometheus_url, "--metrics-port", str(port)],
        workdir / "operator.log",
    )
    process.start()
    wait_for(lambda: operator_metrics(port), timeout=60, what="the operator's /metrics")
    return Operator(process, port)


@pytest.fixture(scope="module")
def operator(cluster, md_namespace, tmp_path_factory):
    running = start_operator(
        cluster, md_namespace, cluster.prometheus_url, tmp_path_factory.mktemp("operator")
    )
    yield running
    running.process.stop()
    print(running.process.log()[-5000:])


# ---- promotion, rollback, and what stays rejected -----------------------------------------------------------------


@dataclass
class Run:
    before: str
    after: str
    threshold: float
    seen: Seen
    load: dict
    md: dict
    history: list = field(default_factory=list)  # the stable Deployment's versions, when watched


@pytest.fixture(scope="class")
def rollout_md(models, operator, model_dir):
    # a lax SLO until the test has measured the latency under its load
    models.apply(canary_md("canary", model_dir, p99_s=30))
    md = models.wait_ready("canary", replicas=1, timeout=START_TIMEOUT_S)
    yield "canary", md["status"]["stableRevision"]
    delete_and_wait(models, "canary")


@pytest.fixture(scope="class")
def good_run(cluster, models, operator, prom, rollout_md, load_logs) -> Run:
    name, before = rollout_md
    seen = Seen()
    with steady_load(cluster, models, name, load_logs) as load:
        started = time.monotonic()
        baseline = wait_for(
            lambda: measured_p99(prom, models, name, before, started, 2 * WINDOW_S),
            timeout=90, what="the stable revision's p99 latency under load",
        )  # fmt: skip
        threshold = slo_threshold(baseline, GOOD_MARGIN)
        models.patch_spec(
            name, {"runtime": {"batching": {"maxQueue": 200}}, "slo": {"p99LatencySeconds": threshold}}
        )
        after = new_revision(models, name, before)

        def promoted() -> dict | None:
            md = models.get(name)
            seen.observe(cluster, models, prom, name, md)
            status = md["status"]
            stable = models.deployment(name)
            done = (
                status.get("stableRevision") == after
                and "canary" not in status
                and template_revision(stable) == after
                and stable["status"].get("updatedReplicas") == stable["status"].get("readyReplicas") == 1
                and stable["status"].get("replicas") == 1
                and canary_gone(cluster, models, name)
            )
            return md if done else None

        md = wait_for(promoted, timeout=PROMOTED_S, interval=0.5, what="the good revision promoted")
    print(f"good: stable p99 {baseline:.3g}s under load, threshold {threshold:g}s, windows {seen.windows}")
    return Run(before, after, threshold, seen, load.result, md)


@pytest.fixture(scope="class")
def bad_run(cluster, models, operator, prom, good_run, load_logs) -> Run:
    name, before = "canary", good_run.after
    good_p99 = statistics.median(good_run.seen.p99s("Passed"))
    threshold = slo_threshold(good_p99, BAD_MARGIN)
    seen = Seen()
    with (
        DeploymentHistory(models.apps, models.namespace, name) as history,
        steady_load(cluster, models, name, load_logs) as load,
    ):
        wait_warm(prom, models, name)
        patch = {
            "runtime": {"batching": {"maxBatchSequences": 1}},
            "slo": {"p99LatencySeconds": threshold},
        }
        models.patch_spec(name, patch)
        after = new_revision(models, name, before)

        def rolled_back() -> dict | None:
            md = models.get(name)
            seen.observe(cluster, models, prom, name, md)
            done = rejected(md, after) and "canary" not in md["status"] and canary_gone(cluster, models, name)
            return md if done else None

        md = wait_for(rolled_back, timeout=DECIDED_S, interval=0.5, what="the bad revision rolled back")
    print(f"bad: good canary p99 {good_p99:.3g}s, threshold {threshold:g}s, windows {seen.windows}")
    return Run(before, after, threshold, seen, load.result, md, history.versions)


class TestRollout:
    def test_good_revision_is_promoted_without_failing_a_request(self, models, operator, good_run):
        run = good_run
        assert run.after in run.seen.scraped, (
            "Prometheus scraped the canary's pods with the new revision label"
        )
        assert run.seen.phases[:2] == ["Starting", "Analyzing"] and "Promoting" in run.seen.phases
        passed = run.seen.p99s("Passed")
        assert len(passed) >= ANALYSIS["measurements"] and max(passed) <= run.threshold
        assert not run.seen.p99s("Failed")
        status = run.md["status"]
        assert status["stableRevision"] == run.after and not status["rejectedRevisions"]
        assert condition(run.md, "Degraded")["status"] == "False"
        assert run.load["errors"] == {}, run.load
        assert run.seen.canary_urls and all(run.load["by_target"].get(url) for url in run.seen.canary_urls), (
            "the canary took its share of the traffic",
            run.load["by_target"],
        )
        assert events(models, "canary", "Promoted") and events(models, "canary", "PromotionComplete")
        assert metric(operator.metrics(), "moe_operator_promotions_total") >= 1

    def test_bad_revision_is_rolled_back_with_the_stable_deployment_untouched(
        self, models, operator, bad_run
    ):
        run = bad_run
        assert run.after in run.seen.scraped and run.seen.canary_urls
        assert run.load["errors"] == {}, run.load
        assert all(run.load["by_target"].get(url) for url in run.seen.canary_urls), run.load["by_target"]
        # the watch saw the stable Deployment from before the change to after the rollback: one template
        templates = {str(version[1]) for version in run.history if version is not None}
        assert len(templates) == 1 and None not in run.history, "the stable Deployment was never changed"
        assert run.history[0][1]["metadata"]["labels"]["moedeploy.dev/revision"] == run.before

        status = run.md["status"]
        assert status["stableRevision"] == run.before and status["currentRevision"] == run.after
        entry = rejected(run.md, run.after)
        assert entry["reason"] == "SLOBreached" and f"limit {run.threshold:g}s" in entry["message"]
        breaches = entry["measurements"]
        assert len(breaches) == ANALYSIS["failureLimit"] + 1
        assert all(m["kind"] == "Failed" and m["p99LatencySeconds"] > run.threshold for m in breaches)
        degraded = condition(run.md, "Degraded")
        assert degraded["status"] == "True" and degraded["reason"] == "SLOBreached"
        assert "moedeploy.dev/retry" in degraded["message"]
        [warning] = events(models, "canary", "RolledBack")
        assert warning["type"] == "Warning" and run.after in warning["message"]
        assert metric(operator.metrics(), "moe_operator_rollbacks_total", reason="SLOBreached") >= 1

    def test_rejected_revision_stays_rejected_until_the_spec_changes_or_a_retry(
        self, cluster, models, operator, prom, bad_run, load_logs
    ):
        name, bad = "canary", bad_run.after
        operator.process.restart()
        wait_for(lambda: operator.reconciled() >= 1, timeout=60, what="a reconcile pass of the new operator")
        md = models.get(name)
        assert rejected(md, bad) and "canary" not in md["status"], "no canary comes back after a restart"
        assert models.deployment(f"{name}-canary") is None
        assert condition(md, "Degraded")["reason"] == "SLOBreached"

        # a further change deploys a new canary; going back to the rejected revision stops it again
        models.patch_spec(name, {"runtime": {"batching": {"maxBatchSequences": 2}}})
        other = new_revision(models, name, bad)
        wait_for(
            lambda: template_revision(models.deployment(f"{name}-canary")) == other,
            timeout=30, what="a canary of the further change",
        )  # fmt: skip
        models.patch_spec(name, {"runtime": {"batching": {"maxBatchSequences": 1}}})
        assert new_revision(models, name, other) == bad
        wait_for(
            lambda: canary_gone(cluster, models, name) and "canary" not in models.get(name)["status"],
            timeout=90, what="the canary stopped, the rejected revision not deployed",
        )  # fmt: skip
        assert events(models, name, "CanaryAborted")

        # the retry annotation analyses the rejected revision afresh: under load it fails again
        first = rejected(models.get(name), bad)
        token = uuid.uuid4().hex[:8]
        seen = Seen()
        with steady_load(cluster, models, name, load_logs) as load:
            models.kubectl("annotate", "md", name, f"moedeploy.dev/retry={token}")

            def rejected_again() -> dict | None:
                md = models.get(name)
                seen.observe(cluster, models, prom, name, md)
                again = rejected(md, bad)
                done = again and again["time"] > first["time"] and canary_gone(cluster, models, name)
                return md if done else None

            md = wait_for(
                rejected_again, timeout=DECIDED_S, interval=0.5, what="the retried revision judged again"
            )
        assert md["status"]["lastHandledRetry"] == token
        assert "Analyzing" in seen.phases and seen.p99s("Failed"), (
            "the retry was analysed with new measurements"
        )
        assert events(models, name, "RetryRequested")
        assert load.result["errors"] == {}, load.result
        assert md["status"]["stableRevision"] == bad_run.before


# ---- with autoscaling on --------------------------------------------------------------------------------------


def test_autoscaler_never_scales_the_stable_deployment_in_below_its_size_when_the_canary_began(
    cluster, models, operator, prom, model_dir, load_logs
):
    name = "floor"
    body = canary_md(name, model_dir, p99_s=30, replicas=2)
    body["spec"].update(minReplicas=1, maxReplicas=2)
    models.apply(body)
    before = models.wait_ready(name, replicas=2, timeout=START_TIMEOUT_S)["status"]["stableRevision"]
    seen = Seen()
    try:
        with (
            DeploymentHistory(models.apps, models.namespace, name) as history,
            steady_load(cluster, models, name, load_logs, concurrency=8) as load,
        ):
            wait_warm(prom, models, name)
            # one change: a new revision, and an autoscaler that finds the queue empty and would scale in
            autoscaling = {
                "enabled": True, "targetQueueDepth": 4, "intervalSeconds": 2, "metricWindowSeconds": 4,
                "scaleDown": {"stabilizationWindowSeconds": 0, "periodSeconds": 1, "maxPods": 1},
            }  # fmt: skip
            models.patch_spec(name, {"runtime": {"batching": {"maxQueue": 200}}, "autoscaling": autoscaling})
            after = new_revision(models, name, before)

            def promoted() -> bool:
                md = models.get(name)
                seen.observe(cluster, models, prom, name, md)
                return md["status"].get("stableRevision") == after

            wait_for(promoted, timeout=DECIDED_S, interval=0.5, what="the canary promoted")
    finally:
        delete_and_wait(models, name)
    assert "Analyzing" in seen.phases and len(seen.p99s("Passed")) >= ANALYSIS["measurements"]
    assert load.result["errors"] == {}, load.result
    at_old_revision = [replicas for replicas, template in filter(None, history.versions)
                       if template["metadata"]["labels"]["moedeploy.dev/revision"] == before]  # fmt: skip
    assert at_old_revision and min(at_old_revision) == 2, history.versions
    # the autoscaler did want fewer pods meanwhile: the floor held them
    assert any("raised to the floor of 2 while a canary is analysed" in r for r in seen.autoscaling), (
        seen.autoscaling
    )


# ---- Prometheus down during the analysis --------------------------------------------------------------------------


@pytest.fixture
def private_prometheus(cluster, tmp_path):
    prometheus = PrivatePrometheus(tmp_path, cluster.targets_file)
    prometheus.start()
    yield prometheus
    prometheus.stop()


@pytest.fixture
def blind_namespace(cluster, crd):
    """A namespace of its own, for an operator that reads the test's own Prometheus."""
    name = f"md-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_prometheus_down_holds_the_canary_and_never_decides(
    cluster, blind_namespace, private_prometheus, model_dir, tmp_path, prom
):
    models = Models(cluster, blind_namespace)
    running = start_operator(cluster, blind_namespace, private_prometheus.url, tmp_path)
    name = "blind"
    error_limit = 1
    try:
        models.apply(canary_md(name, model_dir, p99_s=30, errorLimit=error_limit, measurements=3))
        before = models.wait_ready(name, replicas=1, timeout=START_TIMEOUT_S)["status"]["stableRevision"]
        with (
            DeploymentHistory(models.apps, models.namespace, name) as history,
            steady_load(cluster, models, name, tmp_path, concurrency=8) as load,
        ):
            wait_warm(prom, models, name)
            models.patch_spec(name, {"runtime": {"batching": {"maxQueue": 200}}})
            after = new_revision(models, name, before)

            def analysing() -> bool:
                canary = models.get(name)["status"].get("canary") or {}
                return (
                    canary.get("phase") == "Analyzing"
                    and (canary.get("analysis") or {}).get("passed", 0) >= 1
                )

            wait_for(analysing, timeout=DECIDED_S, what="one window of the canary measured")
            private_prometheus.stop()

            def held(windows: int) -> dict | None:
                canary = models.get(name)["status"].get("canary") or {}
                analysis = canary.get("analysis") or {}
                return (
                    canary.get("phase") == "Holding"
                    and analysis.get("consecutiveErrors", 0) >= windows
                    and canary
                )

            canary = wait_for(lambda: held(error_limit + 1), timeout=10 * WINDOW_S, what="the canary held")
            # errors counted as passes would have promoted it by now, as failures rolled it back
            held_long = wait_for(
                lambda: held(error_limit + 2), timeout=10 * WINDOW_S, what="still held, windows later"
            )
            md = models.get(name)
            assert (
                canary["revision"] == after
                and held_long["analysis"]["passed"] == canary["analysis"]["passed"]
            )
            assert md["status"]["stableRevision"] == before and not md["status"]["rejectedRevisions"]
            assert template_revision(models.deployment(f"{name}-canary")) == after
            assert (
                "PrometheusUnavailable" in held_long["message"]
                and private_prometheus.url in held_long["message"]
            )
            progressing = condition(md, "Progressing")
            assert progressing["reason"] == "CanaryHolding", progressing
            warnings = events(models, name, "AnalysisErrored")
            assert warnings and all(w["type"] == "Warning" and "Prometheus" in w["message"] for w in warnings)

            # Prometheus back: the analysis carries on from where it was, and the canary passes
            private_prometheus.start()
            promoted = wait_for(
                lambda: models.get(name)["status"].get("stableRevision") == after,
                timeout=DECIDED_S, what="the analysis resumed and promoted the canary",
            )  # fmt: skip
        assert promoted and load.result["errors"] == {}, load.result
        templates = [
            template_revision({"spec": {"template": v[1]}}) for v in history.versions if v is not None
        ]
        assert templates[0] == before and templates[-1] == after
        assert templates.index(after) > 0 and set(templates[: templates.index(after)]) == {before}
        assert not events(models, name, "RolledBack")
    finally:
        delete_and_wait(models, name)
        running.process.stop()
        print(running.process.log()[-5000:])
