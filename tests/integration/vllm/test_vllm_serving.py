"""A ModelDeployment of engine vllm on the local stack: a real vLLM server (its CPU build) as the pod, Ready once it
serves, answering chat and completions through its OpenAI API, scraped by the stack's Prometheus under every
name the operator queries for vLLM, and stopped with the pod. Real processes throughout: the control plane, the
local kubelet, Prometheus, the operator, vLLM.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_api_client import PrometheusConnect

from moe_operator.decisions.engine_metrics import ENGINES, VLLM
from tests.integration.vllm.support import (
    SERVED,
    START_S,
    VLLM_IMAGE,
    chat,
    completion,
    delete_and_wait,
    exposed_names,
    pod_processes,
    pod_urls,
    scrape,
    vllm_md,
)
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = "vllm-serving"


@pytest.fixture(scope="module")
def serving(models, measuring_operator, moe_checkpoint):
    models.apply(vllm_md(NAME, moe_checkpoint))
    md = models.wait_ready(NAME, replicas=1, timeout=START_S)
    (pod,) = models.pods(NAME)
    yield md, pod
    delete_and_wait(models, NAME)


def test_the_pod_is_a_vllm_server_from_the_vllm_environment(cluster, models, serving, vllm_env):
    md, pod = serving
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["vllm", "serve"] and container["image"] == VLLM_IMAGE
    processes = pod_processes(cluster.state_dir, models.namespace, pod["metadata"]["name"])
    # the API server, and vLLM's engine core and worker it started (their names are their titles)
    assert any(
        Path(p["cmdline"][0]).parent == vllm_env / "bin" and "serve" in p["cmdline"] for p in processes
    ), processes
    assert len(processes) >= 3, processes
    assert md["status"]["model"] == SERVED
    wide = models.kubectl("get", "md", NAME, "-o", "wide").stdout
    assert "ENGINE" in wide.splitlines()[0] and " vllm " in wide.splitlines()[1]


def test_it_answers_chat_and_completions(cluster, models, serving):
    urls = pod_urls(cluster.targets_file, models.namespace, NAME)
    assert list(urls) == [serving[1]["metadata"]["name"]]
    (url,) = urls.values()
    answered = completion(url)
    assert answered["status"] == 200, answered
    assert answered["body"]["model"] == SERVED and answered["body"]["usage"]["completion_tokens"] == 16
    assert answered["body"]["choices"][0]["text"]
    talked = chat(url)
    assert talked["status"] == 200, talked
    assert talked["body"]["choices"][0]["message"]["role"] == "assistant"
    assert completion(url, model="not-served")["status"] == 404


def test_every_name_the_operator_queries_is_exported_and_scraped(cluster, models, serving):
    """vLLM has renamed metrics before (gpu_cache_usage_perc became kv_cache_usage_perc): the table the operator
    queries vLLM by (engine_metrics.py) must name what a real server exports, and Prometheus must hold it with the
    labels the queries select by."""
    (url,) = pod_urls(cluster.targets_file, models.namespace, NAME).values()
    completion(url)  # the status counter has a series once a generation request was answered
    wanted = set(ENGINES[VLLM].names())
    assert not wanted - exposed_names(scrape(url)), (
        f"vLLM no longer exports {sorted(wanted - exposed_names(scrape(url)))}"
    )
    prom = PrometheusConnect(url=cluster.prometheus_url, disable_ssl=True)
    pod = serving[1]["metadata"]["name"]
    selector = f'namespace="{models.namespace}",model_deployment="{NAME}",pod="{pod}"'

    def scraped() -> set[str]:
        return {name for name in wanted if prom.custom_query(f'count({{__name__="{name}",{selector}}})')}

    found = wait_for(
        lambda: (s := scraped()) == wanted and s, timeout=60, what="every queried series in Prometheus"
    )
    assert found == wanted
    outcomes = prom.custom_query(f"{ENGINES[VLLM].outcomes}{{{selector},{ENGINES[VLLM].outcome_selector}}}")
    assert {s["metric"]["status"] for s in outcomes} >= {"2xx", "4xx"}, "vLLM groups its statuses"


def test_deleting_the_model_deployment_stops_every_vllm_process(cluster, models, serving):
    pod = serving[1]["metadata"]["name"]
    assert pod_processes(cluster.state_dir, models.namespace, pod)
    delete_and_wait(models, NAME)
    wait_for(
        lambda: not pod_processes(cluster.state_dir, models.namespace, pod), timeout=60,
        what="the API server, engine core and worker of the deleted pod to exit",
    )  # fmt: skip
