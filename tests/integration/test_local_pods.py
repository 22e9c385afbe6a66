"""ModelDeployment pods as real runtime processes on the local kubelet's node, scraped by the stack's real
Prometheus: readiness from the runtime's own /ready, scaling with drain, restarts, rollouts, bad models.

The operator runs as a process (tests/integration/conftest.py); the pods land on the session's
served node (tests/conftest.py LOCAL_NODE) through a node selector and a toleration. Everything the tests
check comes from outside the kubelet: the API, /proc, HTTP to the processes, Prometheus.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_api_client import PrometheusConnect

from moe_runtime.tools.loadgen import LoadConfig, LoadGenerator, Shape
from tests.integration.local_stack import (
    START_TIMEOUT_S,
    container_status,
    local_md,
    pod_ready,
    processes,
    ready_status,
    scale,
    settled,
    targets,
    up_series,
    write_tiny_checkpoint,
)
from tests.integration.operator_support import static_pvc
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("local-pods") / "tiny-qwen3-moe")


@pytest.fixture(scope="module")
def prom(cluster) -> PrometheusConnect:
    return PrometheusConnect(url=cluster.prometheus_url, disable_ssl=True)


@pytest.fixture(scope="module")
def serving(models, operator, model_dir):
    """One ModelDeployment the tests below scale, restart and roll out; each test sets the replicas it needs."""
    models.apply(local_md("serving", {"hostPath": {"path": str(model_dir)}}))
    yield "serving"
    models.kubectl("delete", "md", "serving", "--wait=false", "--ignore-not-found", check=False)


# ---- the tests ---------------------------------------------------------------------------------------------


def test_replicas_run_as_processes_that_turn_ready_only_after_their_ready(
    cluster, models, operator, model_dir, prom, created
):
    created(local_md("pair", {"hostPath": {"path": str(model_dir)}}, replicas=2))
    samples = []

    def observe():
        pods = {p["metadata"]["name"]: p for p in models.pods("pair")}
        for name, process in processes(cluster.state_dir, models.namespace, "pair").items():
            if name in pods:
                # read the pod first: a Ready pod must already answer /ready when we ask
                ready = pod_ready(pods[name])
                samples.append((name, ready, ready_status(process["port"])))
        return settled(cluster, models, "pair", 2)

    live = wait_for(observe, timeout=START_TIMEOUT_S, interval=0.2, what="two Ready runtime pods")
    assert all(status == 200 for _, ready, status in samples if ready), samples
    loading = {name for name, ready, status in samples if not ready and status != 200}
    assert loading == set(live), "each pod was seen running but not yet serving, and not Ready then"

    pods = {p["metadata"]["name"]: p for p in models.pods("pair")}
    for name, process in live.items():
        argv = Path(f"/proc/{process['pid']}/cmdline").read_bytes().split(b"\0")
        assert argv[:4] == [sys.executable.encode(), b"-m", b"moe_runtime", b"serve"]
        assert process["env"]["OMP_NUM_THREADS"] == "1", "torch threads follow the CPU request"
        assert Path(process["env"]["MOE_RUNTIME_MODEL"]) == model_dir, (
            "the container's /models is the hostPath"
        )
        assert pods[name]["spec"]["nodeName"] in cluster.served_nodes
        labels = targets(cluster.targets_file, models.namespace, "pair")[name]["labels"]
        assert labels == {
            "namespace": models.namespace,
            "model_deployment": "pair",
            "revision": pods[name]["metadata"]["labels"]["moedeploy.dev/revision"],
            "pod": name,
        }

    def scraped():
        series = up_series(prom, models.namespace, "pair")
        return len(series) == 2 and all(s["value"][1] == "1" for s in series) and series

    series = wait_for(scraped, timeout=30, what="Prometheus up == 1 for both pods")
    assert {s["metric"]["pod"]: s["metric"]["instance"] for s in series} == {
        name: f"127.0.0.1:{process['port']}" for name, process in live.items()
    }
    assert {s["metric"]["revision"] for s in series} == {
        p["metadata"]["labels"]["moedeploy.dev/revision"] for p in pods.values()
    }


def test_scaling_starts_processes_and_drains_the_removed_ones(cluster, models, serving, prom):
    before = scale(cluster, models, serving, 3)
    config = LoadConfig(
        targets_file=cluster.targets_file, model_deployment=serving, namespace=models.namespace,
        concurrency=3, duration_s=180, mix=(Shape(16, 48),), timeout_s=60,
    )  # fmt: skip
    with LoadGenerator(config).background() as load:
        wait_for(lambda: len(load.summary()["by_target"]) == 3, timeout=60, what="requests to all three pods")
        pre_stop = models.pods(serving)[0]["spec"]["containers"][0]["lifecycle"]["preStop"]["sleep"][
            "seconds"
        ]
        scaled_at = time.time()
        models.kubectl("scale", f"md/{serving}", "--replicas=1")
        after = wait_for(lambda: settled(cluster, models, serving, 1), timeout=90, what="one pod left")
    summary = load.result
    assert summary["errors"] == {}, summary
    removed = set(before) - set(after)
    assert len(removed) == 2 and set(after) < set(before)
    for name in removed:
        assert summary["by_target"].get(f"http://127.0.0.1:{before[name]['port']}", 0) > 0
        log = (cluster.pods_dir / f"{models.namespace}_{name}.log").read_text()
        [drain] = [line for line in log.splitlines() if "received SIGTERM: draining" in line]
        # the runtime logs local time with milliseconds: `2026-01-01 12:00:00,123 INFO ...`
        sigterm_at = datetime.strptime(drain[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        assert sigterm_at >= scaled_at + pre_stop - 0.5, "SIGTERM only after the preStop sleep"
        with pytest.raises(ProcessLookupError):
            os.kill(before[name]["pid"], 0)

    def only_the_remaining_pod_scraped():
        return {s["metric"]["pod"] for s in up_series(prom, models.namespace, serving)} == set(after)

    wait_for(
        only_the_remaining_pod_scraped, timeout=30, what="the removed pods' targets gone from Prometheus"
    )


def test_killed_process_makes_the_pod_unready_and_is_restarted(cluster, models, serving, prom):
    [(name, process)] = scale(cluster, models, serving, 1).items()
    restarts = container_status(models.pods(serving)[0])["restartCount"]
    os.kill(process["pid"], signal.SIGKILL)

    def unready():
        pod = models.pods(serving)[0]
        return not pod_ready(pod) and name not in targets(cluster.targets_file, models.namespace, serving)

    wait_for(unready, timeout=30, interval=0.1, what="the pod to go not Ready")
    restarted = wait_for(
        lambda: settled(cluster, models, serving, 1), timeout=START_TIMEOUT_S, what="Ready again"
    )
    assert restarted[name]["pid"] != process["pid"]
    status = container_status(models.pods(serving)[0])
    assert status["restartCount"] == restarts + 1
    assert status["lastState"]["terminated"]["exitCode"] == 137

    def scraped_again():
        series = up_series(prom, models.namespace, serving)
        return [s["metric"]["instance"] for s in series if s["value"][1] == "1"] == [
            f"127.0.0.1:{restarted[name]['port']}"
        ]

    wait_for(scraped_again, timeout=30, what="Prometheus to scrape the restarted process")


def test_spec_change_rolls_out_processes_of_the_new_revision(cluster, models, serving, prom):
    old = scale(cluster, models, serving, 1)
    old_revision = {
        t["labels"]["revision"] for t in targets(cluster.targets_file, models.namespace, serving).values()
    }
    models.patch_spec(serving, {"runtime": {"batching": {"maxQueue": 77}}})

    def rolled_out():
        live = settled(cluster, models, serving, 1)
        revisions = {
            t["labels"]["revision"] for t in targets(cluster.targets_file, models.namespace, serving).values()
        }
        return live and not set(live) & set(old) and revisions.isdisjoint(old_revision) and (live, revisions)

    live, [new_revision] = wait_for(rolled_out, timeout=2 * START_TIMEOUT_S, what="the new revision serving")
    [process] = live.values()
    assert process["env"]["MOE_RUNTIME_MAX_QUEUE"] == "77", "the new ConfigMap's value, resolved at start"
    for gone in old.values():
        with pytest.raises(ProcessLookupError):
            os.kill(gone["pid"], 0)

    def scraped_new_revision_only():
        return {s["metric"]["revision"] for s in up_series(prom, models.namespace, serving)} == {new_revision}

    wait_for(scraped_new_revision_only, timeout=30, what="Prometheus to scrape only the new revision")


def test_bad_model_never_turns_ready_says_why_and_disturbs_nothing(
    cluster, models, serving, created, tmp_path
):
    undisturbed = scale(cluster, models, serving, 1)
    restarts = container_status(models.pods(serving)[0])["restartCount"]
    empty = tmp_path / "not-a-checkpoint"
    empty.mkdir()
    models.kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": static_pvc(models.namespace, "weights")}))  # fmt: skip
    created(local_md("broken", {"hostPath": {"path": str(empty)}}))
    created(local_md("missing", {"hostPath": {"path": str(tmp_path / "nowhere")}}))
    created(local_md("claimed", {"pvc": {"claimName": "weights", "path": "m"}}))
    seen_ready = []

    def crash_looping():
        pods = models.pods("broken")
        seen_ready.extend(p["metadata"]["name"] for p in pods if pod_ready(p))
        if not pods:
            return False
        status = container_status(pods[0])
        waiting = (status.get("state") or {}).get("waiting") or {}
        last = (status.get("lastState") or {}).get("terminated") or {}
        return waiting.get("reason") == "CrashLoopBackOff" and last.get("exitCode") == 1 and pods[0]

    pod = wait_for(crash_looping, timeout=START_TIMEOUT_S, what="the broken pod in CrashLoopBackOff")
    assert not seen_ready and not targets(cluster.targets_file, models.namespace, "broken")
    log = (cluster.pods_dir / f"{models.namespace}_{pod['metadata']['name']}.log").read_text()
    assert f"failed to load {empty}" in log

    for md, says in (
        ("missing", f"hostPath type check failed: {tmp_path / 'nowhere'} is not a directory"),
        ("claimed", 'volume "model": persistentVolumeClaim volumes are not supported by the local kubelet'),
    ):

        def explained(md=md, says=says):
            pods = models.pods(md)
            events = (
                pods
                and models.core.list_namespaced_event(
                    models.namespace, field_selector=f"involvedObject.name={pods[0]['metadata']['name']}"
                ).items
            )
            return any(e.reason == "FailedMount" and says in e.message for e in events or ()) and pods[0]

        pod = wait_for(explained, timeout=60, what=f"a FailedMount event for {md}")
        assert not pod_ready(pod) and pod["status"]["phase"] == "Pending"
        assert says in (cluster.pods_dir / f"{models.namespace}_{pod['metadata']['name']}.log").read_text()
        assert not processes(cluster.state_dir, models.namespace, md)

    assert settled(cluster, models, serving, 1) == undisturbed
    assert container_status(models.pods(serving)[0])["restartCount"] == restarts
