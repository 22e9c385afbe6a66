"""From a validated OpenAI request to the sequences it runs (one per choice: each prompt `n` times) with their
prompt ids and sampling parameters, and from each sequence's stream of generated tokens to text deltas (and
log-probabilities), with the checks that need the model (context, vocabulary)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from moe_runtime.api.detokenizer import TextAssembler
from moe_runtime.api.limits import RequestLimits, check_chat, check_completion
from moe_runtime.api.protocol import ApiError, ChatCompletionRequest, CompletionRequest
from moe_runtime.api.request_checks import check_fields, check_min_tokens, logit_bias, stop_token_ids
from moe_runtime.engine.logprobs import TokenLogprob
from moe_runtime.engine.sampling import SamplingParams
from moe_runtime.engine.scheduler import FinishReason
from moe_runtime.engine.streams import Finished, GenerationStream, PromptLogprobs, Tokens


@dataclass(frozen=True)
class Limits:
    max_context: int
    vocab_size: int
    default_max_tokens: int
    kv_capacity_tokens: int | None = None
    kv_tokens_per_sequence: int | None = None
    request: RequestLimits = RequestLimits()
    max_sequences: int | None = None  # sequences one request may start: the waiting queue's size
    block_size: int = 1  # the KV cache's: a sequence holds whole blocks


@dataclass(frozen=True)
class Job:
    """One choice: one sequence in the engine, and how its tokens become the choice's text."""

    prompt_ids: list[int]
    params: SamplingParams
    stop: tuple[str, ...] = ()
    echo: bool = False  # completions: the prompt comes first, as `prefix` (and its log-probabilities)
    prefix: str = ""
    show_output: bool = True  # false: echo with max_tokens 0, the prompt alone (vLLM generates one token)
    include_stop_str: bool = False
    skip_special_tokens: bool = True
    stop_reason_ids: frozenset[int] = frozenset()  # the request's stop_token_ids, which `stop_reason` names


@dataclass(frozen=True)
class Choices:
    """What one request runs: its choices in index order (prompt i, sample j: index i * n + j)."""

    jobs: list[Job]
    prompt_tokens: int  # usage counts each prompt once, whatever n
    n: int = 1  # choices per prompt


def completion_choices(body: CompletionRequest, tokenizer, limits: Limits) -> Choices:
    """Checks and tokenizes a completion request (seconds for a long prompt: run it off the event loop)."""
    check_fields(body)
    check_completion(body, limits.request)
    prompts = body.prompts()
    _check_sequences(len(prompts) * body.n, "n" if body.n > 1 else "prompt", limits)
    check_min_tokens(body.min_tokens, body.max_tokens)
    max_tokens = max(1, body.max_tokens)
    jobs, prompt_tokens = [], 0
    for prompt in prompts:
        ids = _tokenize(tokenizer.encode, prompt, "prompt") if isinstance(prompt, str) else list(prompt)
        _check_lengths(ids, max_tokens, "prompt", limits)
        if not isinstance(prompt, str) and max(ids) >= limits.vocab_size:
            raise ApiError(
                400, f"Token id {max(ids)} is outside the vocabulary (size {limits.vocab_size})", "prompt"
            )
        prompt_tokens += len(ids)
        prefix = ""
        if body.echo:
            prefix = prompt if isinstance(prompt, str) else _decode(tokenizer, ids, body.skip_special_tokens)
        prompt_logprobs = body.logprobs if body.echo else None
        jobs += [
            _job(body, ids, _sampling(body, max_tokens, tokenizer, limits, j, body.logprobs, prompt_logprobs),
                 echo=body.echo, prefix=prefix, show_output=body.max_tokens > 0)
            for j in range(body.n)
        ]  # fmt: skip
    return Choices(jobs, prompt_tokens, body.n)


def chat_choices(body: ChatCompletionRequest, tokenizer, limits: Limits) -> Choices:
    """Checks and tokenizes a chat request (seconds for a long prompt: run it off the event loop)."""
    check_fields(body)
    check_chat(body, limits.request)
    _check_sequences(body.n, "n", limits)
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    ids = _tokenize(tokenizer.encode_chat, messages, "messages")
    room = limits.max_context - len(ids)
    max_tokens = body.output_limit(default=max(1, min(limits.default_max_tokens, room)))
    param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    _check_lengths(ids, max_tokens, "messages", limits, max_tokens_param=param)
    check_min_tokens(body.min_tokens, max_tokens)
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    jobs = [
        _job(body, ids, _sampling(body, max_tokens, tokenizer, limits, j, logprobs)) for j in range(body.n)
    ]
    return Choices(jobs, len(ids), body.n)


def _job(
    body: CompletionRequest | ChatCompletionRequest, ids: list[int], params: SamplingParams, **kw
) -> Job:
    return Job(
        ids,
        params,
        body.stop_strings(),
        include_stop_str=body.include_stop_str_in_output,
        skip_special_tokens=body.skip_special_tokens,
        stop_reason_ids=frozenset(body.stop_token_ids or ()),
        **kw,
    )


def _tokenize(encode, text, param: str) -> list[int]:
    try:
        return encode(text)
    except (TypeError, ValueError) as error:  # e.g. lone UTF-16 surrogates, which JSON can carry
        raise ApiError(400, f"The {param} cannot be tokenized: {error}", param) from None


def _decode(tokenizer, ids: list[int], skip_special_tokens: bool) -> str:
    return tokenizer.decode(ids) if skip_special_tokens else tokenizer.decode(ids, skip_special_tokens=False)


def _sampling(
    body: CompletionRequest | ChatCompletionRequest,
    max_tokens: int,
    tokenizer,
    limits: Limits,
    choice: int,
    logprobs: int | None,
    prompt_logprobs: int | None = None,
) -> SamplingParams:
    eos = tuple(sorted(tokenizer.eos_token_ids))
    stops = stop_token_ids(body, limits.vocab_size, eos)
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=_choice_seed(body.seed, choice),
        stop_token_ids=tuple(sorted(set(stops) | (set() if body.ignore_eos else set(eos)))),
        ignore_eos=body.ignore_eos,
        min_tokens=body.min_tokens,
        eos_token_ids=eos,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty,
        logit_bias=logit_bias(body, limits.vocab_size),
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
    )


def _choice_seed(seed: int | None, choice: int) -> int | None:
    """vLLM gives choice i of a seeded request the seed + i: the choices differ, the request repeats."""
    if seed is None or choice == 0:
        return seed
    return (seed + choice) % 2**64  # torch.Generator takes up to 2**64 - 1


def _check_sequences(count: int, param: str, limits: Limits) -> None:
    if limits.max_sequences is not None and count > limits.max_sequences:
        raise ApiError(
            400,
            f"The request asks for {count} sequences (prompts times n); this server queues at most "
            f"{limits.max_sequences} at once (--max-queue)",
            param,
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
        need = -(-(len(ids) + max_tokens) // limits.block_size) * limits.block_size
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
class Delta:
    """A piece of a choice: text (may be empty: a token whose text is held back or hidden), the
    log-probability entries of the tokens it covers (empty unless asked for), and the tokens generated so far."""

    text: str
    logprobs: list[TokenLogprob]
    completion_tokens: int


@dataclass(frozen=True)
class Outcome:
    finish_reason: str
    stop_reason: int | str | None  # vLLM's: the stop string or the request's stop token id that ended it
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens found in the prefix cache


_ANSWERED = (FinishReason.STOP, FinishReason.LENGTH)


def _raise_for(event: Finished) -> None:
    """The error a request that ended without an answer maps to."""
    if event.reason is FinishReason.TIMEOUT:
        raise _timed_out()
    if event.reason is FinishReason.ERROR:
        raise ApiError(500, "The engine failed while running this request", type="server_error")
    if event.reason is FinishReason.ADAPTER_FAILED:
        # the answer a request that names the adapter after the failure gets (api/app.py)
        raise ApiError(
            404,
            "The model this request names does not exist: adapter failed to load while the request waited; "
            "retrying",
            "model",
            code="model_not_found",
        )
    if event.reason is FinishReason.CANCELLED:
        raise ClientGone


def _timed_out() -> ApiError:
    return ApiError(504, "The request timed out before it finished", type="timeout_error", code="timeout")


class ClientGone(Exception):
    """The client disconnected; there is nobody to answer."""


async def deltas(
    stream: GenerationStream, job: Job, tokenizer, incremental: bool = True, deadline: float | None = None
) -> AsyncIterator[Delta | Outcome]:
    """One choice's `Delta`s, then its `Outcome`. With `incremental` a delta per generated token (as vLLM
    streams: its text may be empty), else one delta with everything; either way they concatenate to the same
    text and log-probabilities. Raises `ApiError` or `ClientGone`. Past `deadline` (the event loop's clock)
    the request is given up with a 504 whatever the engine does: a backstop for an engine that never answers."""
    pieces = _pieces(stream, job, tokenizer, incremental, deadline)
    if incremental:
        async for piece in pieces:
            yield piece
        return
    text: list[str] = []
    entries: list[TokenLogprob] = []
    async for piece in pieces:
        if isinstance(piece, Outcome):
            yield Delta("".join(text), entries, piece.completion_tokens)
            yield piece
            return
        text.append(piece.text)
        entries += piece.logprobs


async def _pieces(
    stream: GenerationStream, job: Job, tokenizer, incremental: bool, deadline: float | None
) -> AsyncIterator[Delta | Outcome]:
    assembler = TextAssembler(tokenizer, job.stop, incremental, job.include_stop_str, job.skip_special_tokens)
    prompt_entries = [TokenLogprob(job.prompt_ids[0], None)]  # nothing predicts the first prompt token
    echo_logprobs = job.echo and job.params.prompt_logprobs is not None
    echoed = not job.echo
    if job.echo and not echo_logprobs:
        echoed = True
        yield Delta(job.prefix, [], 0)
    generated, stop_token, cached = 0, None, 0
    while True:
        try:
            event = await stream.get(deadline)
        except TimeoutError:
            stream.abandon()
            raise _timed_out() from None
        if isinstance(event, PromptLogprobs):
            prompt_entries += event.entries
            continue
        if not echoed and (isinstance(event, Tokens) or event.reason in _ANSWERED):
            echoed = True  # the prompt's log-probabilities all come before the first token
            yield Delta(job.prefix, prompt_entries, 0)
        if isinstance(event, Tokens):
            cached = event.cached_tokens
            if not job.show_output:
                continue
            generated += len(event.ids)
            shown = event.ids
            if event.stop:
                stop_token = event.ids[-1]
                shown = shown if job.include_stop_str else shown[:-1]
            text = assembler.add(shown, can_stop=generated > job.params.min_tokens)
            yield Delta(text, event.logprobs or [], generated)
            if assembler.stopped:
                stream.cancel()
                yield Outcome("stop", assembler.stop_string, len(job.prompt_ids), generated, cached)
                return
            continue
        _raise_for(event)
        if text := assembler.finish():
            yield Delta(text, [], generated)
        stop_reason = stop_token if stop_token in job.stop_reason_ids else assembler.stop_string
        reason = "stop" if assembler.stopped else event.reason.value
        completion = event.output_tokens if job.show_output else 0
        yield Outcome(reason, stop_reason, event.prompt_tokens, completion, cached)
        return
