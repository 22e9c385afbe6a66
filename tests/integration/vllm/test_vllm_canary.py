"""Canary analysis of vLLM revisions from vLLM's own histograms, judged against the stable track in the same
windows: under steady load a good revision (more sequences batched) is analysed beside the stable pod and
promoted; a bad one (a checkpoint six times as deep: every token takes several times as long) is more than
`1 + maxRelativeIncrease` times slower than the stable pod, read from vLLM's histograms, and is rolled back
without the stable Deployment ever changing. Real vLLM
servers on the local kubelet's node, the stack's Prometheus, the operator as a process.
"""

from __future__ import annotations

import time

import pytest
from prometheus_api_client import PrometheusConnect

from moe_runtime.tools.loadgen import LoadConfig, LoadGenerator, Shape
from tests.integration.canary_stack import new_revision, rejected, template_revision
from tests.integration.vllm.support import (
    START_S,
    delete_and_wait,
    pod_urls,
    vllm_md,
)
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = "vllm-canary"
CLIENTS = 10
WINDOW_S = 6
# Judged against the stable track only: two vLLM pods share two busy cores, so any absolute latency measured
# here says more about the machine than about the revision. The bad revision used to be the same model running
# one sequence at a time: on two overloaded cores batching buys little, and it measured anywhere from 1.2x to
# 5.2x slower to its first token (and faster per token): promoted once at 1.18x, and once, held inconclusive,
# at 1.31x. A deeper model is slower per token however the machine is loaded. The good revisions measured
# 0.64-1.13x (upper bounds 1.26-1.44x): a canary more than 1.75x as slow fails.
ANALYSIS = {
    "maxRelativeIncrease": 0.75,
    "maxErrorRatio": 0.05,
    "analysisIntervalSeconds": WINDOW_S,
    "scrapeIntervalSeconds": 1,
    "metricDelaySeconds": 2,
    "initialDelaySeconds": 10,  # a canary's first seconds say little: its queue is still building
    "measurements": 3,
    "failureLimit": 1,
    "minRequests": 3,
    "bakeSeconds": 0,
}


def ttft_p99(prom: PrometheusConnect, namespace: str, revision: str, window_s: int) -> float | None:
    selector = f'namespace="{namespace}",model_deployment="{NAME}",revision="{revision}"'
    query = (
        f"histogram_quantile(0.99, sum by (le) "
        f"(increase(vllm:time_to_first_token_seconds_bucket{{{selector}}}[{window_s}s])))"
    )
    result = prom.custom_query(query)
    value = float(result[0]["value"][1]) if result else float("nan")
    return value if value == value else None  # NaN: no request in the window


def test_a_good_vllm_revision_is_promoted_and_a_bad_one_rolled_back(
    cluster, models, measuring_operator, moe_checkpoint, deep_moe_checkpoint
):
    body = vllm_md(NAME, moe_checkpoint, batching={"maxBatchSequences": 8})
    body["spec"]["rollout"] = {"strategy": "Canary", "canaryReplicas": 1}
    body["spec"]["slo"] = ANALYSIS
    models.apply(body)
    first = models.wait_ready(NAME, replicas=1, timeout=START_S)["status"]["stableRevision"]
    prom = PrometheusConnect(url=cluster.prometheus_url, disable_ssl=True)
    # retries as the openai client's (max_retries 2) and only where it retries: a connection lost before any
    # answer (one lost later still fails the test). Two full runs lost 3 and 1 of ~2,900 requests to ReadError,
    # with a 5 s and a 15 s drain delay alike: most likely a kept-alive connection to a vLLM pod closing as a
    # request went out
    config = LoadConfig(
        targets_file=cluster.targets_file, model_deployment=NAME, namespace=models.namespace,
        concurrency=CLIENTS, duration_s=3600, mix=(Shape(8, 32),), timeout_s=300, ignore_eos=True, retries=2,
    )  # fmt: skip
    phases, canary_pods = [], set()

    def watch() -> dict:
        md = models.get(NAME)
        canary = (md.get("status") or {}).get("canary")
        if canary and (not phases or phases[-1] != canary["phase"]):
            phases.append(canary["phase"])
        canary_pods.update(
            p for p in pod_urls(cluster.targets_file, models.namespace, NAME) if "-canary-" in p
        )
        return md

    try:
        with LoadGenerator(config).background() as load:
            # good: more sequences batched
            models.patch_spec(NAME, {"runtime": {"batching": {"maxBatchSequences": 12}}})
            good = new_revision(models, NAME, first)

            def promoted() -> dict | None:
                md = watch()
                status = md["status"]
                deployment = models.deployment(NAME)
                done = (
                    status.get("stableRevision") == good
                    and "canary" not in status
                    and template_revision(models.deployment(NAME)) == good
                    and deployment["status"].get("readyReplicas") == deployment["status"].get("replicas") == 1
                    and models.deployment(f"{NAME}-canary") is None
                )
                return md if done else None

            md = wait_for(promoted, timeout=3 * START_S, interval=1, what="the good vLLM revision promoted")
            assert "Analyzing" in phases, phases
            good_phases, good_canaries = list(phases), set(canary_pods)
            assert not rejected(md, good)

            # bad: six times as many layers
            phases.clear()
            canary_pods.clear()
            models.patch_spec(NAME, {"model": {"source": {"hostPath": {"path": str(deep_moe_checkpoint)}}}})
            bad = new_revision(models, NAME, good)
            started = time.time()

            def rolled_back() -> dict | None:
                md = watch()
                assert template_revision(models.deployment(NAME)) == good, "the stable Deployment changed"
                done = (
                    rejected(md, bad)
                    and "canary" not in md["status"]
                    and not models.deployment(f"{NAME}-canary")
                )
                return md if done else None

            md = wait_for(
                rolled_back, timeout=2 * START_S, interval=1, what="the bad vLLM revision rolled back"
            )
            analysed_s = int(time.time() - started) + 5
            stable_ttft = ttft_p99(prom, models.namespace, good, analysed_s)
            bad_ttft = ttft_p99(prom, models.namespace, bad, analysed_s)
        result = load.result
    finally:
        delete_and_wait(models, NAME)
    print(
        f"TTFT p99 during the bad canary's analysis: stable {stable_ttft}, bad canary {bad_ttft}; load {result}"
    )
    assert good_canaries and canary_pods, "each canary served its share of the load"
    assert "Analyzing" in phases, phases
    entry = rejected(md, bad)
    assert entry["reason"] == "SLOBreached", entry
    status = md["status"]
    assert status["stableRevision"] == good and status["currentRevision"] == bad
    assert bad_ttft is not None and stable_ttft is not None and bad_ttft > stable_ttft
    assert any(
        "Relative" in (m.get("rules") or [m.get("rule")])
        and ("time to first token" in m["message"] or "time per output token" in m["message"])
        for m in entry["measurements"]
    ), entry["measurements"]
    # a drained pod refuses nothing here (it leaves targets.json before vLLM stops taking requests)
    assert not result["errors"], result
    print(f"phases: good {good_phases}, bad {phases}")
