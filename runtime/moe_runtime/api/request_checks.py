"""Checks of a request that involve several of its fields or the model's vocabulary, with vLLM's rules and
messages; each failure is a 400 naming the parameter."""

from __future__ import annotations

from moe_runtime.api.protocol import ApiError, ChatCompletionRequest, CompletionRequest

GREEDY_BELOW = 1e-5  # vLLM's _SAMPLING_EPS: a lower temperature samples greedily


def check_fields(body: CompletionRequest | ChatCompletionRequest) -> None:
    """What needs no tokenizer: run before the prompt is tokenized."""
    if body.stream_options is not None and not body.stream:
        raise ApiError(400, "Stream options can only be defined when `stream=True`.", "stream_options")
    if body.n > 1 and body.temperature < GREEDY_BELOW:
        raise ApiError(400, f"n must be 1 when using greedy sampling, got {body.n}.", "n")
    if isinstance(body, CompletionRequest) and body.max_tokens == 0 and not body.echo:
        raise ApiError(400, "max_tokens must be at least 1, got 0 (0 only with echo).", "max_tokens")
    if isinstance(body, ChatCompletionRequest) and body.top_logprobs and not body.logprobs:
        raise ApiError(400, "when using `top_logprobs`, `logprobs` must be set to true.", "top_logprobs")


def check_min_tokens(min_tokens: int, max_tokens: int) -> None:
    if min_tokens > max_tokens:
        raise ApiError(
            400,
            f"min_tokens must be less than or equal to max_tokens={max_tokens}, got {min_tokens}.",
            "min_tokens",
        )


def logit_bias(body: CompletionRequest | ChatCompletionRequest, vocab_size: int) -> dict[int, float]:
    """The request's logit bias by token id, each value clamped to [-100, 100] (vLLM)."""
    bias = {}
    for key, value in (body.logit_bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise ApiError(
                400, f"logit_bias contains a key that is not an integer token id: {key!r}", "logit_bias"
            ) from None
        if not 0 <= token < vocab_size:
            raise ApiError(
                400,
                f"logit_bias has token id {token}, outside the vocabulary (size {vocab_size})",
                "logit_bias",
            )
        bias[token] = min(100.0, max(-100.0, value))
    return bias


def stop_token_ids(
    body: CompletionRequest | ChatCompletionRequest, vocab_size: int, eos: tuple[int, ...] = ()
) -> tuple[int, ...]:
    ids = tuple(dict.fromkeys(body.stop_token_ids or ()))
    if any(token >= vocab_size for token in ids):
        raise ApiError(
            400,
            f"stop_token_ids has token id {max(ids)}, outside the vocabulary (size {vocab_size})",
            "stop_token_ids",
        )
    if body.min_tokens and len(set(ids) | set(eos)) >= vocab_size:
        raise ApiError(
            400,
            "With min_tokens, stop_token_ids and the eos tokens leave no token to generate",
            "stop_token_ids",
        )
    return ids
