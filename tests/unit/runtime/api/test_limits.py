"""Request bounds: each answered with a 400 (or 413 for the body) that names the parameter and the flag."""

import asyncio

import httpx
import pytest

from moe_runtime.api.app import ServingState, create_app
from moe_runtime.api.limits import RequestLimits, check_chat, check_completion
from moe_runtime.api.protocol import ApiError, ChatCompletionRequest, CompletionRequest
from moe_runtime.metrics import RuntimeMetrics

LIMITS = RequestLimits(max_prompt_chars=10, max_messages=2, max_stop_strings=2, max_stop_string_chars=3)


def refusal(check, model, body: dict) -> ApiError:
    with pytest.raises(ApiError) as caught:
        check(model.model_validate(body), LIMITS)
    return caught.value


@pytest.mark.parametrize(
    ("body", "param", "flag"),
    [
        ({"prompt": "x" * 11}, "prompt", "--max-prompt-chars"),
        ({"prompt": ["x" * 11]}, "prompt", "--max-prompt-chars"),
        ({"prompt": "x", "stop": ["a", "b", "c"]}, "stop", "--max-stop-strings"),
        ({"prompt": "x", "stop": "abcd"}, "stop", "--max-stop-string-chars"),
    ],
)
def test_completion_over_a_limit_names_the_parameter_and_the_flag(body, param, flag):
    error = refusal(check_completion, CompletionRequest, body)
    assert (error.status, error.param) == (400, param) and flag in error.message


@pytest.mark.parametrize(
    ("messages", "flag"),
    [
        ([{"role": "user", "content": "hi"}] * 3, "--max-messages"),
        ([{"role": "user", "content": "hello"}, {"role": "user", "content": "there!"}], "--max-prompt-chars"),
    ],
)
def test_chat_over_a_limit_names_messages_and_the_flag(messages, flag):
    error = refusal(check_chat, ChatCompletionRequest, {"messages": messages})
    assert (error.status, error.param) == (400, "messages") and flag in error.message


def test_requests_within_the_limits_pass():
    check_completion(CompletionRequest.model_validate({"prompt": "x" * 10, "stop": ["abc", "d"]}), LIMITS)
    check_chat(
        ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"}] * 2}), LIMITS
    )


def post(state: ServingState, **kw) -> httpx.Response:
    async def go():
        transport = httpx.ASGITransport(app=create_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/v1/completions", **kw)

    return asyncio.run(go())


def test_a_body_over_the_byte_limit_gets_413_naming_the_flag_and_is_counted():
    state = ServingState(RuntimeMetrics(), request_timeout_s=None, max_request_bytes=100)
    response = post(state, json={"prompt": "x" * 200})
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "request_too_large" and "--max-request-bytes" in error["message"]
    assert state.metrics.registry.get_sample_value("moe_runtime_requests_total", {"status": "413"}) == 1


def test_a_chunked_body_over_the_byte_limit_gets_413():
    async def chunks():
        for _ in range(10):
            yield b"x" * 50

    state = ServingState(RuntimeMetrics(), request_timeout_s=None, max_request_bytes=100)
    assert post(state, content=chunks(), headers={"content-type": "application/json"}).status_code == 413


def test_a_body_under_the_byte_limit_reaches_validation():
    state = ServingState(RuntimeMetrics(), request_timeout_s=None, max_request_bytes=100)
    response = post(state, json={"prompt": 5})
    assert response.status_code == 400 and response.json()["error"]["param"] == "prompt"
