import json

from moe_runtime.router.requests import RequestView, read_request


def body(**fields) -> bytes:
    return json.dumps(fields).encode()


def test_completions_prompt_stream_and_cost():
    view = read_request("/v1/completions", body(model="m", prompt="x" * 400, max_tokens=50, n=2, stream=True))
    assert view == RequestView(model="m", prompt="x" * 400, stream=True, cost_tokens=100 + 2 * 50)
    assert read_request("/v1/completions", body(prompt=[1, 2, 3])).cost_tokens == 3 + 16
    assert read_request("/v1/completions", body(prompt=["abcd" * 10, "ef"])).prompt == "abcd" * 10


def test_chat_messages_make_the_prompt_and_the_default_output_limit_is_the_runtimes():
    view = read_request(
        "/v1/chat/completions",
        body(
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            ]
        ),
    )
    assert view.prompt == "<system>be brief<user>hi" and view.cost_tokens == len(view.prompt) // 4 + 256


def test_a_body_it_cannot_read_still_has_a_view():
    assert read_request("/v1/completions", b"{not json") == RequestView()
    assert read_request("/v1/completions", b"[1]") == RequestView()
    assert read_request("/v1/completions", body(prompt=None, max_tokens="x", n=True)).cost_tokens == 16
