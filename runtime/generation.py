"""From a validated OpenAI request to prompt ids and sampling parameters, and from a stream of generated
tokens to the finished text or to text deltas, with the checks that need the model (context, vocabulary)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from moe_runtime.detokenizer import TextAssembler
from moe_runtime.limits import RequestLimits, check_chat, check_completion
from moe_runtime.protocol import ApiError, ChatCompletionRequest, CompletionRequest
from moe_runtime.sampling import SamplingParams
from moe_runtime.scheduler import FinishReason
from moe_runtime.streams import Finished, GenerationStream, Tokens


@dataclass(frozen=True)
class Limits:
    max_context: int
    vocab_size: int
    default_max_tokens: int
    kv_capacity_tokens: int | None = None
    kv_tokens_per_sequence: int | None = None
    request: RequestLimits = RequestLimits()


@dataclass(frozen=True)
class Job:
    prompt_ids: list[int]
    params: SamplingParams
    stop: tuple[str, ...]
    prefix: str = ""  # text shown before the generated text (completions with echo)


def completion_job(body: CompletionRequest, tokenizer, limits: Limits) -> Job:
    """Checks and tokenizes a completion request (seconds for a long prompt: run it off the event loop)."""
    check_completion(body, limits.request)
    prompt = (
        body.prompt[0] if isinstance(body.prompt, list) and isinstance(body.prompt[0], str) else body.prompt
    )
    ids = _tokenize(tokenizer.encode, prompt, "prompt") if isinstance(prompt, str) else list(prompt)
    _check_lengths(ids, body.max_tokens, "prompt", limits)
    if not isinstance(prompt, str) and max(ids) >= limits.vocab_size:
        raise ApiError(
            400, f"Token id {max(ids)} is outside the vocabulary (size {limits.vocab_size})", "prompt"
        )
    echoed = "" if not body.echo else prompt if isinstance(prompt, str) else tokenizer.decode(ids)
    return Job(ids, _sampling(body, body.max_tokens, tokenizer), body.stop_strings(), echoed)


def chat_job(body: ChatCompletionRequest, tokenizer, limits: Limits) -> Job:
    """Checks and tokenizes a chat request (seconds for a long prompt: run it off the event loop)."""
    check_chat(body, limits.request)
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    ids = _tokenize(tokenizer.encode_chat, messages, "messages")
    room = limits.max_context - len(ids)
    max_tokens = body.output_limit(default=max(1, min(limits.default_max_tokens, room)))
    param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    _check_lengths(ids, max_tokens, "messages", limits, max_tokens_param=param)
    return Job(ids, _sampling(body, max_tokens, tokenizer), body.stop_strings())


def _tokenize(encode, text, param: str) -> list[int]:
    try:
        return encode(text)
    except (TypeError, ValueError) as error:  # e.g. lone UTF-16 surrogates, which JSON can carry
        raise ApiError(400, f"The {param} cannot be tokenized: {error}", param) from None


def _sampling(body: CompletionRequest | ChatCompletionRequest, max_tokens: int, tokenizer) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop_token_ids=tuple(sorted(tokenizer.eos_token_ids)),
    )


def _check_lengths(
    ids: list[int], max_tokens: int, prompt_param: str, limits: Limits, max_tokens_param: str = "max_tokens"
) -> None:
    if not ids:
        raise ApiError(400, "The prompt is empty after tokenization", prompt_param)
    if len(ids) >= limits.max_context:
        raise ApiError(
            400,
            f"This model's maximum context length is {limits.max_context} tokens; the prompt has {len(ids)}",
            prompt_param,
            code="context_length_exceeded",
        )
    if len(ids) + max_tokens > limits.max_context:
        raise ApiError(
            400,
            f"This model's maximum context length is {limits.max_context} tokens; the prompt has {len(ids)} "
            f"and {max_tokens_param} asks for {max_tokens} more",
            max_tokens_param,
            code="context_length_exceeded",
        )
    if limits.kv_capacity_tokens is not None:
        need = len(ids) + max_tokens
        if limits.kv_tokens_per_sequence is not None:
            need = min(need, limits.kv_tokens_per_sequence)
        if need > limits.kv_capacity_tokens:
            raise ApiError(
                400,
                f"The prompt plus {max_tokens_param} needs {need} tokens of KV cache; this server has "
                f"{limits.kv_capacity_tokens}",
                max_tokens_param,
                code="context_length_exceeded",
            )


@dataclass(frozen=True)
class Outcome:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def _raise_for(event: Finished) -> None:
    """The error a request that ended without an answer maps to."""
    if event.reason is FinishReason.TIMEOUT:
        raise _timed_out()
    if event.reason is FinishReason.ERROR:
        raise ApiError(500, "The engine failed while running this request", type="server_error")
    if event.reason is FinishReason.CANCELLED:
        raise ClientGone


def _timed_out() -> ApiError:
    return ApiError(504, "The request timed out before it finished", type="timeout_error", code="timeout")


class ClientGone(Exception):
    """The client disconnected; there is nobody to answer."""


async def deltas(
    stream: GenerationStream, job: Job, tokenizer, incremental: bool = True, deadline: float | None = None
) -> AsyncIterator[str | Outcome]:
    """Text deltas as they become safe to show (all at the end unless `incremental`), then the `Outcome`.
    Raises `ApiError` or `ClientGone`. Past `deadline` (the event loop's clock) the request is given up with a
    504 whatever the engine does: a backstop for an engine that never answers."""
    assembler = TextAssembler(tokenizer, job.stop, incremental)
    generated = 0
    while True:
        try:
            event = await stream.get(deadline)
        except TimeoutError:
            stream.abandon()
            raise _timed_out() from None
        if isinstance(event, Tokens):
            generated += len(event.ids)
            if delta := assembler.add(event.ids):
                yield delta
            if assembler.stopped:
                stream.cancel()
                yield Outcome(assembler.text, "stop", len(job.prompt_ids), generated)
                return
            continue
        _raise_for(event)
        if delta := assembler.finish():
            yield delta
        reason = "stop" if assembler.stopped else event.reason.value
        yield Outcome(assembler.text, reason, event.prompt_tokens, event.output_tokens)
        return
