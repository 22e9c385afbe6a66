"""OpenAI-compatible request bodies, error bodies and response bodies (the wire format only)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ApiError(Exception):
    """An answer other than success, in the OpenAI error format."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None, code: str | None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# Names pydantic puts into error locations for the members of a union; they are not parameters.
_UNION_MEMBER_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def validation_error(errors: Sequence[dict[str, Any]]) -> ApiError:
    """One 400 naming the first offending parameter, from pydantic's (or FastAPI's) error list."""
    first = errors[0]
    param = _param(first["loc"])
    kind = first["type"]
    if kind == "json_invalid":
        return ApiError(400, f"Invalid JSON body: {first.get('ctx', {}).get('error', first['msg'])}")
    if param is None:
        return ApiError(400, "The request body must be a JSON object")
    if kind == "missing":
        return ApiError(400, f"Missing required parameter: {param}", param)
    if kind == "extra_forbidden":
        return ApiError(400, f"Unrecognized request argument supplied: {param}", param)
    messages = dict.fromkeys(e["msg"] for e in errors if _param(e["loc"]) == param)
    return ApiError(400, f"Invalid value for {param}: {' or '.join(messages)}", param)


def _param(loc: Sequence[str | int]) -> str | None:
    path = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.isidentifier() and part not in _UNION_MEMBER_TAGS:
            path += f".{part}" if path else part
        else:
            break
    return path or None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class _Body(BaseModel):
    # Unknown fields are refused rather than ignored: a client relying on one would silently get other output.
    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        """OpenAI's API takes null for any optional parameter, meaning its default."""
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class StreamOptions(_Body):
    include_usage: bool = False


Temperature = Annotated[float, Field(ge=0.0, le=2.0)]


class _SamplingFields(_Body):
    model: str | None = None
    temperature: Temperature = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None  # how many and how long: `limits.check_stop`
    seed: Annotated[int, Field(ge=-(2**63), le=2**64 - 1)] | None = None  # what torch.Generator accepts
    presence_penalty: Literal[0] = 0
    frequency_penalty: Literal[0] = 0
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @field_validator("logit_bias")
    @classmethod
    def _no_logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value:
            raise ValueError("logit_bias is not supported")
        return value

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


PositiveInt = Annotated[int, Field(ge=1)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class CompletionRequest(_SamplingFields):
    prompt: (
        Annotated[str, Field(min_length=1)]
        | TokenIds
        | Annotated[list[str], Field(min_length=1, max_length=1)]
    )
    max_tokens: PositiveInt = 16
    echo: bool = False
    best_of: Literal[1] = 1
    logprobs: None = None
    suffix: None = None


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ResponseFormat(_Body):
    type: Literal["text"]


class ChatCompletionRequest(_SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    logprobs: Literal[False] = False
    top_logprobs: None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[dict], Field(max_length=0)] | None = None
    tool_choice: Literal["none"] | None = None
    parallel_tool_calls: bool | None = None

    def output_limit(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(
    request_id: str, model: str, text: str | None, finish_reason: str | None, usage_: dict | None = None
) -> dict:
    """A whole completion, or (with `usage_` None and `text` the delta) one streamed chunk."""
    body = {
        "id": request_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage_ is not None:
        body["usage"] = usage_
    return body


def chat_completion_body(request_id: str, model: str, text: str, finish_reason: str, usage_: dict) -> dict:
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage_,
    }


def chat_chunk_body(request_id: str, model: str, delta: dict, finish_reason: str | None) -> dict:
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def usage_chunk_body(request_id: str, model: str, object_: str, usage_: dict) -> dict:
    """The final chunk of a stream with `stream_options.include_usage`: no choices, only usage."""
    return {
        "id": request_id,
        "object": object_,
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": usage_,
    }


def models_body(model: str, created: int) -> dict:
    return {
        "object": "list",
        "data": [{"id": model, "object": "model", "created": created, "owned_by": "moedeploy"}],
    }
