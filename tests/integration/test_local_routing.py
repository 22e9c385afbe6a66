"""spec.routing on the local stack: the operator's router pods (real processes, reading the API as their own
ServiceAccount), runtime pods behind them, clients through status.url and the stack's Service proxy."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from moe_runtime.tools.loadgen import LoadConfig, LoadGenerator, Shape
from tests.integration.local_stack import (
    START_TIMEOUT_S,
    processes,
    routed_md,
    service_url,
    write_tiny_checkpoint,
)
from tests.integration.operator_support import OperatorProcess
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

POD_HEADER = "x-moedeploy-pod"


@pytest.fixture(scope="module")
def operator(cluster, md_namespace, tmp_path_factory):
    """The operator with the stack's Prometheus (scale to zero reads the routers from it)."""
    args = ["--namespace", md_namespace, "--prometheus-url", cluster.prometheus_url]
    process = OperatorProcess(cluster, args, tmp_path_factory.mktemp("operator") / "operator.log")
    process.start()
    yield process
    process.stop()
    print(process.log()[-5000:])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("local-routing") / "tiny-qwen3-moe")


def routed_url(cluster, models, name: str) -> str:
    """status.url as the machine reaches it, once the router answers there."""

    def reachable() -> str | None:
        url = ((models.get(name) or {}).get("status") or {}).get("url")
        local = url and service_url(cluster.services_file, url)
        if not local:
            return None
        try:
            return local if httpx.get(f"{local}/ready", timeout=2).status_code == 200 else None
        except httpx.HTTPError:
            return None

    return wait_for(reachable, timeout=START_TIMEOUT_S, what=f"{name}'s status.url to answer")


def test_requests_through_status_url_reach_the_pods_through_the_router_streamed(
    cluster, models, operator, model_dir, created
):
    name = created(routed_md("routed", {"hostPath": {"path": str(model_dir)}}, replicas=2))
    models.wait_ready(name, replicas=2, timeout=START_TIMEOUT_S)
    url = routed_url(cluster, models, name)
    engines = {
        p["metadata"]["name"]
        for p in models.pods(name)
        if p["metadata"]["labels"].get("app.kubernetes.io/component") == "engine"
    }
    assert len(engines) == 2

    served = set()
    for i in range(6):
        body = {"prompt": f"hello {i}", "max_tokens": 3, "temperature": 0}
        answer = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        served.add(answer.headers[POD_HEADER])
    assert served <= engines and served, served

    # one event per token (that the router passes them on unbuffered: tests/integration/router/)
    body = {"prompt": "stream", "max_tokens": 50, "temperature": 0, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200 and response.headers[POD_HEADER] in engines
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert len([e for e in events[:-1] if json.loads(e)["choices"]]) >= 50  # and the finishing event


def wait_routers_scraped(cluster, models, name: str) -> None:
    """Prometheus has read the routers (the operator sees held requests through it): a new router pod reaches
    Prometheus' file discovery within seconds, not at once."""
    from prometheus_api_client import PrometheusConnect

    prom = PrometheusConnect(url=cluster.prometheus_url, disable_ssl=True)
    query = f'moe_router_held_requests{{namespace="{models.namespace}",model_deployment="{name}"}}'
    wait_for(lambda: prom.custom_query(query), timeout=60, what=f"Prometheus to scrape {name}'s router")


def engine_pods(models, name: str) -> list[dict]:
    return [
        p
        for p in models.pods(name)
        if p["metadata"]["labels"].get("app.kubernetes.io/component") == "engine"
        and not p["metadata"].get("deletionTimestamp")
    ]


def replicas(models, name: str) -> int:
    return models.deployment(name)["spec"]["replicas"]


def test_idle_goes_to_zero_and_a_request_at_zero_is_held_kept_alive_and_answered(
    cluster, models, operator, model_dir, created
):
    body = routed_md(
        "sleepy", {"hostPath": {"path": str(model_dir)}}, replicas=1, scaleToZero={"idleSeconds": 5}
    )
    body["spec"]["minReplicas"] = 0
    name = created(body)
    models.wait_ready(name, replicas=1, timeout=START_TIMEOUT_S)
    url = routed_url(cluster, models, name)
    assert (
        httpx.post(f"{url}/v1/completions", json={"prompt": "warm", "max_tokens": 2}, timeout=60).status_code
        == 200
    )

    wait_for(
        lambda: replicas(models, name) == 0 and not engine_pods(models, name),
        timeout=90, what="the idle ModelDeployment to reach zero pods",
    )  # fmt: skip
    assert any(e["reason"] == "Scaled" and "scaling to zero" in e["message"] for e in models.events(name))

    lines: list[tuple[float, str]] = []
    sent = time.monotonic()

    def stream() -> int:
        body = {"prompt": "wake up", "max_tokens": 5, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=180) as response:
            for line in response.iter_lines():
                lines.append((time.monotonic() - sent, line))
            return response.status_code

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answered = pool.submit(stream)
        wait_for(
            lambda: replicas(models, name) == 1, timeout=60, interval=0.2, what="the held request to wake it"
        )
        assert answered.result(timeout=START_TIMEOUT_S) == 200
    events = [line for _, line in lines if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and len(events) >= 6
    first_data = next(t for t, line in lines if line.startswith("data: {"))
    # the router's first keep-alive comes after --keepalive-interval (5 s): a shorter hold may see none (its
    # keep-alives are tested against the router process in tests/integration/router)
    if first_data > 5 + 1:
        assert any(line == ": keep-alive" for t, line in lines if t < first_data), (
            "no keep-alive while it was held"
        )


def test_at_zero_with_a_pod_that_cannot_start_the_request_gets_503_after_the_bound(
    cluster, models, operator, tmp_path, created
):
    empty = tmp_path / "not-a-checkpoint"
    empty.mkdir()
    body = routed_md("broken", {"hostPath": {"path": str(empty)}}, replicas=0, holdTimeoutSeconds=8,
                     scaleToZero={"idleSeconds": 300})  # fmt: skip
    body["spec"]["minReplicas"] = 0
    name = created(body)
    url = routed_url(cluster, models, name)
    wait_routers_scraped(cluster, models, name)
    started = time.monotonic()
    refused = httpx.post(f"{url}/v1/completions", json={"prompt": "anyone?", "max_tokens": 2}, timeout=60)
    waited = time.monotonic() - started
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) > 0, refused.text
    assert refused.json()["error"]["code"] == "no_capacity"
    assert waited >= 8, "answered before the bound"
    assert replicas(models, name) == 1, "the held request woke it, though its pod cannot start"


def test_scale_in_promotion_rollback_and_a_router_restart_under_load_through_the_router_fail_no_request(
    cluster, models, operator, model_dir, created
):
    name = created(routed_md("steady", {"hostPath": {"path": str(model_dir)}}, replicas=2))
    models.wait_ready(name, replicas=2, timeout=START_TIMEOUT_S)
    routed_url(cluster, models, name)
    config = LoadConfig(
        service_url=models.get(name)["status"]["url"], services_file=cluster.services_file, concurrency=4,
        duration_s=600, mix=(Shape(12, 24),), timeout_s=120, retries=2,
    )  # fmt: skip
    load = LoadGenerator(config)
    with load.background():
        wait_for(lambda: load.summary()["completed"] >= 8, timeout=60, what="load to flow")
        models.patch_spec(name, {"replicas": 1})  # scale-in: a pod drains under load
        wait_for(lambda: len(engine_pods(models, name)) == 1, timeout=120, what="the scale-in")
        # a new revision: canary, then (no SLO) promoted, and the stable pod rolls
        models.patch_spec(
            name,
            {"runtime": {**models.get(name)["spec"]["runtime"], "env": [{"name": "ROUND", "value": "2"}]}},
        )
        models.wait_ready(name, replicas=1, timeout=START_TIMEOUT_S * 2)
        # the router itself rolls (its settings changed): accepted requests are answered by the old one
        models.patch_spec(name, {"routing": {**models.get(name)["spec"]["routing"], "strategy": "LeastLoad"}})
        wait_for(lambda: _router_rolled(models, name, "LeastLoad"), timeout=120, what="the router to roll")
        # a revision whose canary breaches its SLO under that load: rejected and rolled back
        runtime = {**models.get(name)["spec"]["runtime"], "env": [{"name": "ROUND", "value": "3"}]}
        slo = {"p99LatencySeconds": 0.001, "analysisIntervalSeconds": 3, "scrapeIntervalSeconds": 1,
               "minRequests": 2, "failureLimit": 0}  # fmt: skip
        models.patch_spec(name, {"runtime": runtime, "slo": slo})
        wait_for(lambda: (models.get(name).get("status") or {}).get("rejectedRevisions"), timeout=START_TIMEOUT_S,
                 what="the canary to be rolled back")  # fmt: skip
        wait_for(lambda: not models.deployment(f"{name}-canary"), timeout=60, what="the canary to go")
        done = load.summary()["completed"]
        wait_for(lambda: load.summary()["completed"] >= done + 8, timeout=60, what="load after the rollouts")
    summary = load.result
    assert summary["errors"] == {} and summary["completed"] >= 24, summary
    assert summary["by_pod"], "the answers named their pods: they came through the router"


def _router_rolled(models, name: str, strategy: str) -> bool:
    router = models.deployment(f"{name}-router")
    env = {e["name"]: e.get("value") for e in router["spec"]["template"]["spec"]["containers"][0]["env"]}
    status = router.get("status") or {}
    return (
        env["MOE_RUNTIME_ROUTER_STRATEGY"] == strategy
        and status.get("updatedReplicas")
        == status.get("replicas")
        == status.get("readyReplicas")
        == router["spec"]["replicas"]
    )


def test_a_router_replica_killed_under_load_costs_clients_a_retry_not_a_request(
    cluster, models, operator, model_dir, created
):
    name = created(routed_md("twice", {"hostPath": {"path": str(model_dir)}}, replicas=1))
    models.wait_ready(name, replicas=1, timeout=START_TIMEOUT_S)
    routed_url(cluster, models, name)
    wait_for(lambda: (models.deployment(f"{name}-router").get("status") or {}).get("readyReplicas") == 2,
             timeout=60, what="two Ready routers")  # fmt: skip
    config = LoadConfig(
        service_url=models.get(name)["status"]["url"], services_file=cluster.services_file, concurrency=4,
        duration_s=600, mix=(Shape(12, 8),), timeout_s=120, retries=2,
    )  # fmt: skip
    load = LoadGenerator(config)
    with load.background():
        wait_for(lambda: load.summary()["completed"] >= 8, timeout=60, what="load to flow")
        routers = processes(cluster.state_dir, models.namespace, f"{name}-router")
        victim = sorted(routers.values(), key=lambda p: p["pid"])[0]
        os.kill(victim["pid"], signal.SIGKILL)
        done = load.summary()["completed"]
        wait_for(lambda: load.summary()["completed"] >= done + 16, timeout=90, what="load after the kill")
    summary = load.result
    lost = {k: v for k, v in summary["errors"].items()}
    # requests in flight in the killed process broke midway (nothing can be retried after the first byte);
    # every other request, the retried ones included, was answered
    assert sum(lost.values()) <= config.concurrency, summary
    assert summary["retried"] >= 1 or sum(lost.values()) >= 1, "the kill went unnoticed"
