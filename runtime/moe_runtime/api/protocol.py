"""OpenAI-compatible request bodies, error bodies and response bodies (the wire format only)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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


# Request fields of vLLM's OpenAI server that this one does not implement: refused like unknown fields (a
# client relying on one would get other output), with a message saying what they are.
VLLM_UNSUPPORTED = frozenset(
    {
        "top_k", "min_p", "use_beam_search", "length_penalty", "spaces_between_special_tokens",
        "truncate_prompt_tokens", "allowed_token_ids", "prompt_logprobs", "bad_words", "guided_json",
        "guided_regex", "guided_choice", "guided_grammar", "guided_decoding_backend", "structural_tag",
        "add_special_tokens", "priority", "request_id", "logits_processors", "return_tokens_as_token_ids",
        "cache_salt", "kv_transfer_params", "vllm_xargs", "add_generation_prompt", "continue_final_message",
        "chat_template", "chat_template_kwargs", "documents", "mm_processor_kwargs", "prompt_embeds",
    }
)  # fmt: skip

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
        if param in VLLM_UNSUPPORTED:
            return ApiError(
                400, f"Unsupported parameter: {param} (a vLLM extension this server lacks)", param
            )
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
    include_usage: bool = True  # vLLM's default once stream_options is given
    continuous_usage_stats: bool = False  # vLLM: usage (so far) in every chunk too


Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
PositiveInt = Annotated[int, Field(ge=1)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class _SamplingFields(_Body):
    model: str | None = None
    temperature: Temperature = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    n: PositiveInt = 1  # choices per prompt: as many sequences in the engine (all fit in the queue, or none)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None  # how many and how long: `limits.check_stop`
    seed: Annotated[int, Field(ge=-(2**63), le=2**64 - 1)] | None = None  # what torch.Generator accepts
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    logit_bias: dict[str, float] | None = None  # token id -> bias, clamped to [-100, 100] as vLLM does
    user: str | None = None
    # vLLM's extensions of the OpenAI API (its `SamplingParams`); names, ranges and meaning are vLLM's
    repetition_penalty: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 1.0
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: Annotated[int, Field(ge=0)] = 0
    skip_special_tokens: bool = True

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class CompletionRequest(_SamplingFields):
    # one prompt (text or token ids) or a batch of them, each its own choice (`n` each)
    prompt: (
        Annotated[str, Field(min_length=1)]
        | TokenIds
        | Annotated[list[str], Field(min_length=1)]
        | Annotated[list[TokenIds], Field(min_length=1)]
    )
    max_tokens: Annotated[int, Field(ge=0)] = 16  # 0 only with echo: the prompt alone (vLLM)
    echo: bool = False
    best_of: Literal[1] = 1
    logprobs: Annotated[int, Field(ge=0)] | None = None  # alternatives per token; at most --max-logprobs
    suffix: None = None

    def prompts(self) -> list[str | list[int]]:
        if isinstance(self.prompt, str) or isinstance(self.prompt[0], int):
            return [self.prompt]
        return list(self.prompt)


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
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0)] | None = None  # at most --max-logprobs; needs logprobs
    response_format: ResponseFormat | None = None
    tools: Annotated[list[dict], Field(max_length=0)] | None = None
    tool_choice: Literal["none"] | None = None
    parallel_tool_calls: bool | None = None

    def output_limit(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> dict:
    """OpenAI's usage; `prompt_tokens_details.cached_tokens` (0 when nothing was cached or the prefix cache is
    off, as OpenAI always sends it) where the cached count is known: a request's total, not vLLM's
    `continuous_usage_stats` chunks."""
    body = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cached_tokens is not None:
        body["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return body


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


def models_body(model: str, created: int, adapters: Sequence[tuple[str, str]] = ()) -> dict:
    """The base model, then each LoRA adapter (name, path) with the base model as its parent (vLLM's shape)."""
    entries = [(model, model, None), *((name, path, model) for name, path in adapters)]
    return {
        "object": "list",
        "data": [
            {
                "id": id_,
                "object": "model",
                "created": created,
                "owned_by": "moedeploy",
                "root": root,
                "parent": parent,
            }
            for id_, root, parent in entries
        ],
    }
