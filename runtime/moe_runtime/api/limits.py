"""Bounds on what one request may ask for, so that no request makes the server do unbounded work. Each is a
`serve` flag; a request over one gets a 400 (413 for the body) naming the parameter and the flag.

The body limit is enforced while the body is read (`body_limit.BodyLimit`); the others are checked on the
parsed body before anything is tokenized. A token-id prompt is bounded by the context length
(`--max-model-len`), checked before anything is decoded. A batch of prompts counts its characters together;
its prompts times `n` are sequences that must all fit in the waiting queue at once (`--max-queue`, checked
in `generation`).
"""

from __future__ import annotations

from dataclasses import dataclass

from moe_runtime.api.protocol import ApiError, ChatCompletionRequest, CompletionRequest


@dataclass(frozen=True)
class RequestLimits:
    max_request_bytes: int = 4 * 2**20
    max_prompt_chars: int = 2**20
    max_messages: int = 2048
    max_stop_strings: int = 4
    max_stop_string_chars: int = 256
    max_logprobs: int = 20  # vLLM's --max-logprobs default


def check_completion(body: CompletionRequest, limits: RequestLimits) -> None:
    chars = sum(len(prompt) for prompt in body.prompts() if isinstance(prompt, str))
    if chars > limits.max_prompt_chars:
        raise _too_long("prompt", f"The prompt has {chars} characters", limits)
    check_stop(body.stop_strings(), limits)
    check_logprobs(body.logprobs, "logprobs", limits)


def check_chat(body: ChatCompletionRequest, limits: RequestLimits) -> None:
    if len(body.messages) > limits.max_messages:
        raise ApiError(
            400,
            f"The request has {len(body.messages)} messages; this server takes at most {limits.max_messages} "
            "(--max-messages)",
            "messages",
            code="too_many_messages",
        )
    chars = sum(len(m.text()) for m in body.messages)
    if chars > limits.max_prompt_chars:
        raise _too_long("messages", f"The messages have {chars} characters", limits)
    check_stop(body.stop_strings(), limits)
    check_logprobs(body.top_logprobs, "top_logprobs", limits)


def check_logprobs(count: int | None, param: str, limits: RequestLimits) -> None:
    if count is not None and count > limits.max_logprobs:
        raise ApiError(
            400,
            f"{param} asks for {count} log-probabilities per token; this server returns at most "
            f"{limits.max_logprobs} (--max-logprobs)",
            param,
        )


def check_stop(stop: tuple[str, ...], limits: RequestLimits) -> None:
    if len(stop) > limits.max_stop_strings:
        raise ApiError(
            400,
            f"stop has {len(stop)} strings; this server takes at most {limits.max_stop_strings} "
            "(--max-stop-strings)",
            "stop",
        )
    longest = max(map(len, stop), default=0)
    if longest > limits.max_stop_string_chars:
        raise ApiError(
            400,
            f"A stop string has {longest} characters; this server takes at most "
            f"{limits.max_stop_string_chars} (--max-stop-string-chars)",
            "stop",
        )


def _too_long(param: str, what: str, limits: RequestLimits) -> ApiError:
    return ApiError(
        400,
        f"{what}; this server takes at most {limits.max_prompt_chars} (--max-prompt-chars)",
        param,
        code="prompt_too_long",
    )
