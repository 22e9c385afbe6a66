"""`usage.prompt_tokens_details.cached_tokens` over real HTTP from a real server process (prefix caching on, its
default): a prompt sent again reports the tokens the prefix cache held, in whole KV blocks, both endpoints,
whole and streamed (the final usage chunk of `stream_options.include_usage`); with the cache off, 0 (OpenAI
always sends the field)."""

import json
import uuid

import httpx
import pytest

from tests.integration.runtime_server.harness import RuntimeServer

pytestmark = pytest.mark.integration

MODEL = "tiny-qwen2-moe"
BLOCK_SIZE = 16  # the server's --block-size (the default)


def unique_prompt() -> str:
    """Long enough for several blocks, and seen by no other test: the first answer finds nothing cached."""
    return f"{uuid.uuid4().hex} " + "the router sends every token to its experts " * 8


def body_for(path: str) -> dict:
    prompt = unique_prompt()
    if path == "/v1/completions":
        return {"prompt": prompt}
    return {"messages": [{"role": "user", "content": prompt}]}


def usage_of(server, path: str, body: dict, stream: bool) -> dict:
    body = {"model": MODEL, "max_tokens": 3, "temperature": 0, **body}
    if not stream:
        response = httpx.post(f"{server.url}{path}", json=body, timeout=120)
        assert response.status_code == 200, response.text
        return response.json()["usage"]
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{server.url}{path}", json=body, timeout=120) as response:
        assert response.status_code == 200
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"] == []
    return last["usage"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_a_repeated_prompt_reports_the_tokens_found_in_the_prefix_cache(server, path, stream):
    body = body_for(path)
    first = usage_of(server, path, body, stream)
    second = usage_of(server, path, body, stream)
    assert first["prompt_tokens_details"] == {"cached_tokens": 0}
    assert second["prompt_tokens"] == first["prompt_tokens"] > 4 * BLOCK_SIZE
    cached = second["prompt_tokens_details"]["cached_tokens"]
    assert 0 < cached <= second["prompt_tokens"] and cached % BLOCK_SIZE == 0
    # every full block before the one holding the last prompt token, which is always computed
    assert cached == (second["prompt_tokens"] - 1) // BLOCK_SIZE * BLOCK_SIZE


@pytest.fixture(scope="module")
def uncached_server(checkpoint):
    with RuntimeServer(checkpoint, "--dtype", "float32", "--no-enable-prefix-caching") as running:
        yield running


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_without_the_prefix_cache_nothing_is_reported_cached(uncached_server, path):
    body = body_for(path)
    for stream in (False, True, False):
        assert usage_of(uncached_server, path, body, stream)["prompt_tokens_details"] == {"cached_tokens": 0}
