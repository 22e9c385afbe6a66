"""Request validation and its translation into OpenAI-style 400s that name the parameter."""

import pytest
from pydantic import ValidationError

from moe_runtime.api.protocol import ChatCompletionRequest, CompletionRequest, validation_error


def error_for(model, body: dict):
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    # FastAPI reports body errors with a leading "body" in the location.
    errors = [{**e, "loc": ("body", *e["loc"])} for e in caught.value.errors()]
    return validation_error(errors)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [1, -2]}, "prompt"),
        ({"prompt": [["a"]]}, "prompt"),
        ({"prompt": [[1], []]}, "prompt"),
        ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
        ({"prompt": "x", "max_tokens": "7"}, "max_tokens"),
        ({"prompt": "x", "max_tokens": True}, "max_tokens"),
        ({"prompt": "x", "temperature": -0.1}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "top_p": 1.5}, "top_p"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "stop": ["a", 5]}, "stop"),
        ({"prompt": "x", "logprobs": -1}, "logprobs"),
        ({"prompt": "x", "logprobs": True}, "logprobs"),
        ({"prompt": "x", "presence_penalty": 2.5}, "presence_penalty"),
        ({"prompt": "x", "frequency_penalty": -2.01}, "frequency_penalty"),
        ({"prompt": "x", "repetition_penalty": 0}, "repetition_penalty"),
        ({"prompt": "x", "logit_bias": {"5": "up"}}, "logit_bias"),
        ({"prompt": "x", "min_tokens": -1}, "min_tokens"),
        ({"prompt": "x", "ignore_eos": "yes"}, "ignore_eos"),
        ({"prompt": "x", "stop_token_ids": [-3]}, "stop_token_ids[0]"),
        (
            {"prompt": "x", "stream_options": {"continuous_usage_stats": "on"}},
            "stream_options.continuous_usage_stats",
        ),
        ({"prompt": "x", "best_of": 2}, "best_of"),
        ({"prompt": "x", "stream": "yes"}, "stream"),
        ({"prompt": "x", "bogus": 1}, "bogus"),
        ({"prompt": "x", "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
    ],
)
def test_completion_errors_name_the_parameter(body, param):
    error = error_for(CompletionRequest, body)
    assert (error.status, error.param, error.type) == (400, param, "invalid_request_error")
    assert param.split(".")[0] in error.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": -1},
            "max_completion_tokens",
        ),
        ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, "tools"),
        ({"messages": [{"role": "user", "content": "hi"}], "logprobs": 1}, "logprobs"),
        ({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": -1}, "top_logprobs"),
        (
            {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 0},
            "max_completion_tokens",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}},
            "response_format.type",
        ),
    ],
)
def test_chat_errors_name_the_parameter(body, param):
    error = error_for(ChatCompletionRequest, body)
    assert (error.status, error.param) == (400, param)


def test_invalid_json_and_non_object_bodies_have_no_param():
    json_error = validation_error(
        [
            {
                "type": "json_invalid",
                "loc": ("body", 3),
                "msg": "JSON decode error",
                "ctx": {"error": "Expecting value"},
            }
        ]
    )
    assert (json_error.status, json_error.param) == (400, None)
    assert "Expecting value" in json_error.message
    not_object = validation_error(
        [{"type": "model_attributes_type", "loc": ("body",), "msg": "Input should be an object"}]
    )
    assert (not_object.status, not_object.param) == (400, None)


def test_null_means_the_default():
    body = CompletionRequest.model_validate(
        {"prompt": "x", "temperature": None, "n": None, "max_tokens": None}
    )
    assert (body.temperature, body.n, body.max_tokens) == (1.0, 1, 16)
    assert error_for(CompletionRequest, {"prompt": None}).param == "prompt"


def test_valid_requests_keep_their_values():
    body = CompletionRequest.model_validate({"prompt": [1, 2], "temperature": 1, "stop": "x", "seed": 3})
    assert body.temperature == 1.0 and body.stop_strings() == ("x",)
    chat = ChatCompletionRequest.model_validate(
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
            ]
        }
    )
    assert chat.messages[0].text() == "ab" and chat.output_limit(default=9) == 9


def test_vllm_fields_this_server_lacks_are_refused_by_name_and_said_to_be_vllm_ones():
    error = error_for(CompletionRequest, {"prompt": "x", "top_k": 5})
    assert (error.param, error.status) == ("top_k", 400) and "vLLM" in error.message
    unknown = error_for(CompletionRequest, {"prompt": "x", "frobnicate": 5})
    assert unknown.param == "frobnicate" and "vLLM" not in unknown.message


def test_the_vllm_and_openai_fields_clients_send_are_accepted():
    body = CompletionRequest.model_validate(
        {
            "prompt": [[1, 2], [3]],
            "n": 2,
            "ignore_eos": True,
            "min_tokens": 2,
            "stop_token_ids": [7],
            "include_stop_str_in_output": True,
            "skip_special_tokens": False,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            "repetition_penalty": 1.1,
            "presence_penalty": -0.5,
            "frequency_penalty": 2,
            "logit_bias": {"5": 100},
            "logprobs": 3,
            "echo": True,
            "user": "me",
        }
    )
    assert body.prompts() == [[1, 2], [3]] and body.stream_options.continuous_usage_stats
    assert CompletionRequest.model_validate({"prompt": ["a", "b"]}).prompts() == ["a", "b"]
    assert CompletionRequest.model_validate({"prompt": [4, 5]}).prompts() == [[4, 5]]
    chat = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 2, "n": 3}
    )
    assert (chat.logprobs, chat.top_logprobs, chat.n) == (True, 2, 3)
    # vLLM: stream_options given means usage unless it says otherwise
    assert CompletionRequest.model_validate(
        {"prompt": "x", "stream_options": {}}
    ).stream_options.include_usage
