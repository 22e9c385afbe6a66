"""Queue-depth autoscaling of vLLM pods from vLLM's own gauge: under load that keeps more requests waiting than
`--max-num-seqs` lets run, vllm:num_requests_waiting rises, the operator reads it from Prometheus and adds a pod;
when the load stops it removes it again. Real vLLM servers on the local kubelet's node, the stack's Prometheus,
the operator as a process, load from the load generator through targets.json.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_api_client import PrometheusConnect

from moe_runtime.tools.loadgen import LoadConfig, LoadGenerator, Shape
from tests.integration.autoscale_support import Recorder
from tests.integration.vllm.support import (
    START_S,
    delete_and_wait,
    pod_urls,
    vllm_md,
)
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = "vllm-scale"
TARGET = 2.0  # requests waiting per pod the autoscaler aims for
RUNNING = 2  # --max-num-seqs: the rest of the clients wait in vLLM's queue
CLIENTS = 12
SCALE_DOWN_WINDOW_S = 15


def autoscaled(model_dir: Path) -> dict:
    body = vllm_md(NAME, model_dir, batching={"maxBatchSequences": RUNNING})
    step = {"maxPods": 2, "periodSeconds": 2}
    body["spec"].update(minReplicas=1, maxReplicas=2)
    body["spec"]["autoscaling"] = {
        "enabled": True,
        "targetQueueDepth": TARGET,
        "intervalSeconds": 2,
        "metricWindowSeconds": 3,
        "scaleUp": {"stabilizationWindowSeconds": 0, **step},
        "scaleDown": {"stabilizationWindowSeconds": SCALE_DOWN_WINDOW_S, **step},
    }
    return body


def test_vllm_pods_scale_out_on_vllms_queue_and_back_in(cluster, models, measuring_operator, moe_checkpoint):
    models.apply(autoscaled(moe_checkpoint))
    models.wait_ready(NAME, replicas=1, timeout=START_S)
    prom = PrometheusConnect(url=cluster.prometheus_url, disable_ssl=True)
    selector = f'namespace="{models.namespace}",model_deployment="{NAME}"'
    config = LoadConfig(
        targets_file=cluster.targets_file, model_deployment=NAME, namespace=models.namespace,
        concurrency=CLIENTS, duration_s=900, mix=(Shape(8, 64),), timeout_s=300,
    )  # fmt: skip
    try:
        with Recorder(models, NAME) as recorder:
            with LoadGenerator(config).background() as load:
                loaded = time.time()
                wait_for(
                    lambda: len(pod_urls(cluster.targets_file, models.namespace, NAME)) == 2,
                    timeout=START_S + 60, interval=1, what="a second Ready vLLM pod under load",
                )  # fmt: skip
                out = time.time()
            assert not load.result["errors"], load.result
            wait_for(
                lambda: len(models.pods(NAME)) == 1 and models.deployment(NAME)["spec"]["replicas"] == 1,
                timeout=SCALE_DOWN_WINDOW_S + 120, interval=1, what="back to one pod once the load stopped",
            )  # fmt: skip
            back = time.time()
            changes = [(c.before, c.after) for c in recorder.changes()]  # while it records: up to now
        assert changes == [(1, 2), (2, 1)], changes
        up = next(e for e in recorder.evaluations(loaded, out) if e["desired"] == 2)
        assert float(up["metric"]) > TARGET, up
        down = [e for e in recorder.evaluations(out, back) if e["desired"] == 1]
        assert down and float(down[-1]["metric"]) < TARGET, down
    finally:
        delete_and_wait(models, NAME)
    # what the operator read can only be vLLM's gauge: the pods export no queue under our runtime's name
    waited = prom.custom_query(
        f"max_over_time(vllm:num_requests_waiting{{{selector}}}[{int(time.time() - loaded) + 5}s])"
    )
    assert max(float(s["value"][1]) for s in waited) > TARGET
    assert not prom.custom_query(f"moe_runtime_queue_depth{{{selector}}}[{int(time.time() - loaded) + 5}s]")
