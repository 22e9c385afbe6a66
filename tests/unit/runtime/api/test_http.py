"""The HTTP surface before any engine exists: health, readiness while loading, the OpenAPI document."""

import asyncio

import httpx

from moe_runtime.api.app import Phase, ServingState, create_app
from moe_runtime.metrics import RuntimeMetrics


def call(state: ServingState, method: str, path: str, **kw) -> httpx.Response:
    async def go():
        transport = httpx.ASGITransport(app=create_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, **kw)

    return asyncio.run(go())


def loading() -> ServingState:
    return ServingState(RuntimeMetrics(), request_timeout_s=None)


def test_alive_but_not_ready_while_loading():
    state = loading()
    assert call(state, "GET", "/health").status_code == 200
    ready = call(state, "GET", "/ready")
    assert (ready.status_code, ready.json()) == (503, {"status": "loading"})


def test_generation_while_loading_or_draining_is_503_with_retry_after():
    state = loading()
    for phase in (Phase.LOADING, Phase.DRAINING):
        state.phase = phase
        response = call(state, "POST", "/v1/completions", json={"prompt": "hi"})
        assert response.status_code == 503 and response.headers["retry-after"]
        assert response.json()["error"]["code"] == phase.value


def test_validation_still_answers_400_while_loading():
    response = call(loading(), "POST", "/v1/chat/completions", json={"messages": "nope"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"


def test_openapi_documents_400_and_429_and_never_422():
    document = call(loading(), "GET", "/openapi.json").json()
    completions = document["paths"]["/v1/completions"]["post"]["responses"]
    assert {"200", "400", "429", "503"} <= set(completions) and "422" not in completions
    assert "HTTPValidationError" not in document["components"]["schemas"]
    assert "prompt" in document["components"]["schemas"]["CompletionRequest"]["properties"]


def test_metrics_are_exposed_before_the_model_loads():
    response = call(loading(), "GET", "/metrics")
    assert response.status_code == 200 and "moe_runtime_queue_depth 0.0" in response.text


def test_metrics_can_be_asked_for_by_name_as_a_router_does():
    from prometheus_client.parser import text_string_to_metric_families

    from moe_runtime.router.load import WANTED

    response = call(loading(), "GET", "/metrics", params=[("name[]", name) for name in WANTED])
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert names == {"vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"}
