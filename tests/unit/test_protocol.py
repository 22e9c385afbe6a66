"""Request validation and its translation into OpenAI-style 400s that name the parameter."""

import pytest
from pydantic import ValidationError

from moe_runtime.protocol import ChatCompletionRequest, CompletionRequest, validation_error


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
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "max_tokens": "7"}, "max_tokens"),
        ({"prompt": "x", "max_tokens": True}, "max_tokens"),
        ({"prompt": "x", "temperature": -0.1}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "top_p": 1.5}, "top_p"),
        ({"prompt": "x", "n": 2}, "n"),
        ({"prompt": "x", "stop": ["a", 5]}, "stop"),
        ({"prompt": "x", "logprobs": 3}, "logprobs"),
        ({"prompt": "x", "presence_penalty": 1}, "presence_penalty"),
        ({"prompt": "x", "logit_bias": {"5": 1.0}}, "logit_bias"),
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
