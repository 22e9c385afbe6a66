"""Bad input gets a 400 naming the parameter, a full queue gets 429, and nothing makes the server fail."""

import concurrent.futures
import json
import urllib.error
import urllib.request

import httpx
import pytest

from tests.integration.runtime_server.harness import RuntimeServer

pytestmark = pytest.mark.integration

CHAT = {"messages": [{"role": "user", "content": "hi"}]}

BAD_REQUESTS = [
    # (path, raw body or JSON, param the error must name)
    ("/v1/completions", b'{"prompt": "x", "max_tokens": ', None),
    ("/v1/completions", b"[1, 2, 3]", None),
    ("/v1/completions", {}, "prompt"),
    ("/v1/completions", b'{"prompt": "\\ud800"}', "prompt"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\udfff"}]}', "messages"),
    ("/v1/completions", {"prompt": 42}, "prompt"),
    ("/v1/completions", {"prompt": ""}, "prompt"),
    ("/v1/completions", {"prompt": [10**9]}, "prompt"),
    ("/v1/completions", {"prompt": ["one", "x" * 2**20]}, "prompt"),
    ("/v1/completions", {"prompt": [[1, 2], [10**9]]}, "prompt"),
    ("/v1/completions", {"prompt": "x " * 5000}, "prompt"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 10**7}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "ten"}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "temperature": -1}, "temperature"),
    ("/v1/completions", {"prompt": "x", "top_p": 0}, "top_p"),
    ("/v1/completions", {"prompt": "x", "top_p": 1.01}, "top_p"),
    ("/v1/completions", {"prompt": "x", "n": 3, "temperature": 0}, "n"),
    ("/v1/completions", {"prompt": ["a", "b"], "n": 200}, "n"),
    ("/v1/completions", {"prompt": ["x"] * 300}, "prompt"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 2, "min_tokens": 3}, "min_tokens"),
    ("/v1/completions", {"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"999999": 5}}, "logit_bias"),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"one": 5}}, "logit_bias"),
    ("/v1/completions", {"prompt": "x", "stop_token_ids": [999999]}, "stop_token_ids"),
    ("/v1/completions", {"prompt": "x", "repetition_penalty": -1}, "repetition_penalty"),
    ("/v1/completions", {"prompt": "x", "presence_penalty": 3}, "presence_penalty"),
    ("/v1/completions", {"prompt": "x", "top_k": 5}, "top_k"),
    ("/v1/completions", {"prompt": "x", "stream": "sometimes"}, "stream"),
    ("/v1/completions", {"prompt": "x", "stop": [1, 2]}, "stop"),
    ("/v1/completions", {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("/v1/completions", {"prompt": "x", "stop": "s" * 257}, "stop"),
    ("/v1/completions", {"prompt": "x" * (2**20 + 1)}, "prompt"),
    ("/v1/completions", {"prompt": list(range(5000))}, "prompt"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}] * 2049}, "messages"),
    ("/v1/completions", {"prompt": "x", "seed": 2**70}, "seed"),
    ("/v1/completions", {"prompt": "x", "logprobs": 21}, "logprobs"),
    ("/v1/chat/completions", {**CHAT, "top_logprobs": 2}, "top_logprobs"),
    ("/v1/chat/completions", {**CHAT, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/completions", {"prompt": "x", "frobnicate": True}, "frobnicate"),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": "hi"}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ("/v1/chat/completions", {**CHAT, "max_completion_tokens": -5}, "max_completion_tokens"),
    ("/v1/chat/completions", {**CHAT, "temperature": 9}, "temperature"),
    ("/v1/chat/completions", {**CHAT, "response_format": {"type": "json_object"}}, "response_format.type"),
    ("/v1/chat/completions", {**CHAT, "tools": [{"type": "function"}]}, "tools"),
]


@pytest.mark.parametrize(("path", "body", "param"), BAD_REQUESTS)
def test_bad_input_gets_400_naming_the_parameter(server, path, body, param):
    if isinstance(body, bytes):
        response = httpx.post(server.url + path, content=body, headers={"content-type": "application/json"})
    else:
        response = httpx.post(server.url + path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]
    assert httpx.get(server.url + "/health").status_code == 200


def test_a_body_over_the_size_limit_gets_413_without_being_read_whole(server):
    response = httpx.post(server.url + "/v1/completions", json={"prompt": "x" * (5 * 2**20)}, timeout=60)
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "request_too_large" and "--max-request-bytes" in error["message"]
    assert httpx.get(server.url + "/health").status_code == 200


@pytest.mark.parametrize("megabytes", [8, 40])
def test_a_client_that_sends_its_whole_body_before_reading_still_gets_the_413(server, megabytes):
    """urllib (like many clients) writes the whole body before it reads the answer: a server that answers and
    closes while bytes are still coming resets the connection, and the client sees that, not the 413. The
    server reads the rest of an oversized body (up to a bound) before it closes, as nginx's lingering close."""
    body = json.dumps({"prompt": "x" * (megabytes * 2**20)}).encode()
    request = urllib.request.Request(
        server.url + "/v1/completions", data=body, headers={"content-type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 413
    assert refused.value.headers["connection"] == "close"
    assert json.loads(refused.value.read())["error"]["code"] == "request_too_large"
    assert httpx.get(server.url + "/health").status_code == 200


def test_unknown_routes_and_methods_answer_in_the_error_format(server):
    for response in (httpx.get(server.url + "/v1/nothing"), httpx.delete(server.url + "/v1/models")):
        assert response.status_code in (404, 405)
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_full_queue_answers_429_with_retry_after_and_never_5xx(checkpoint):
    # Configured the way the operator configures pods: through the environment.
    env = {
        "MOE_RUNTIME_MAX_QUEUE": "2",
        "MOE_RUNTIME_MAX_BATCH_SEQS": "1",
        "MOE_RUNTIME_MAX_BATCH_TOKENS": "64",
        "MOE_RUNTIME_SERVED_MODEL_NAME": "small-queue",
    }
    with RuntimeServer(checkpoint, env=env) as small:
        assert httpx.get(small.url + "/v1/models").json()["data"][0]["id"] == "small-queue"

        def ask(i: int) -> httpx.Response:
            body = {"prompt": f"request {i}", "max_tokens": 8, "temperature": 0}
            return httpx.post(small.url + "/v1/completions", json=body, timeout=120)

        with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
            responses = list(pool.map(ask, range(24)))
        codes = [r.status_code for r in responses]
        assert set(codes) == {200, 429}, codes
        for r in responses:
            if r.status_code == 429:
                assert r.headers["retry-after"] and r.json()["error"]["type"] == "rate_limit_error"
            else:
                assert r.json()["choices"][0]["text"] is not None
        assert httpx.get(small.url + "/ready").status_code == 200
