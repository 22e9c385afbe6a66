"""A request's generation streams (one per choice) as an HTTP answer: one JSON body, or server-sent events
ending in `data: [DONE]`.

Streaming: each choice's chunks carry its `index`; the choices' chunks interleave as their tokens come. A chunk
per generated token (its text may be empty, as vLLM streams), then a closing chunk with `finish_reason`;
usage (`stream_options.include_usage`) in a last chunk without choices, and with `continuous_usage_stats` in
every chunk too (that choice's prompt and the tokens it generated so far). An error after the headers went out
travels as an error event before [DONE]; one choice failing ends them all.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from fastapi import Request

from moe_runtime.api.bodies import (
    Choice,
    chat_body,
    chat_chunk,
    chat_logprobs,
    completion_body,
    completion_chunk,
    completion_logprobs,
)
from moe_runtime.api.choices import Choices, ClientGone, Delta, Job, Outcome, deltas
from moe_runtime.api.protocol import ApiError, usage, usage_chunk_body
from moe_runtime.engine.logprobs import TokenLogprob
from moe_runtime.engine.streams import GenerationStream

CLIENT_CLOSED_REQUEST = 499  # nginx's code for "the client went away first"; only ever seen in metrics


class Endpoint:
    """How one endpoint shapes its bodies."""

    id_prefix: str
    chunk_object: str

    def opening(self, rid: str, model: str, index: int, usage_: dict | None) -> dict | None:
        return None

    def logprobs(self, entries: Sequence[TokenLogprob], tokenizer, offset: int) -> tuple[dict, int]:
        raise NotImplementedError

    def chunk(self, rid: str, model: str, index: int, text: str, logprobs: dict | None, usage_) -> dict:
        raise NotImplementedError

    def closing(self, rid: str, model: str, index: int, outcome: Outcome, usage_: dict | None) -> dict:
        raise NotImplementedError

    def whole(self, rid: str, model: str, choices: list[Choice], usage_: dict) -> dict:
        raise NotImplementedError


class _Completions(Endpoint):
    id_prefix, chunk_object = "cmpl", "text_completion"

    def logprobs(self, entries, tokenizer, offset):
        return completion_logprobs(entries, tokenizer, offset)

    def chunk(self, rid, model, index, text, logprobs, usage_):
        return completion_chunk(rid, model, index, text, logprobs, usage=usage_)

    def closing(self, rid, model, index, outcome, usage_):
        return completion_chunk(
            rid, model, index, "", None, outcome.finish_reason, outcome.stop_reason, usage_
        )

    def whole(self, rid, model, choices, usage_):
        return completion_body(rid, model, choices, usage_)


class _Chat(Endpoint):
    id_prefix, chunk_object = "chatcmpl", "chat.completion.chunk"

    def opening(self, rid, model, index, usage_):
        return chat_chunk(rid, model, index, {"role": "assistant", "content": ""}, usage=usage_)

    def logprobs(self, entries, tokenizer, offset):
        return chat_logprobs(entries, tokenizer), offset

    def chunk(self, rid, model, index, text, logprobs, usage_):
        return chat_chunk(rid, model, index, {"content": text}, logprobs, usage=usage_)

    def closing(self, rid, model, index, outcome, usage_):
        return chat_chunk(rid, model, index, {}, None, outcome.finish_reason, outcome.stop_reason, usage_)

    def whole(self, rid, model, choices, usage_):
        return chat_body(rid, model, choices, usage_)


COMPLETIONS: Endpoint = _Completions()
CHAT: Endpoint = _Chat()


class Answer:
    """One accepted request's answer. `count` records the HTTP status of its outcome exactly once."""

    def __init__(
        self,
        endpoint: Endpoint,
        model: str,
        tokenizer,
        request: Request,
        streams: list[GenerationStream],
        choices: Choices,
        count: Callable[[int], None],
        deadline: float | None = None,
    ) -> None:
        self.endpoint, self.model, self.tokenizer = endpoint, model, tokenizer
        self.request, self.streams, self.choices, self.count = request, streams, choices, count
        self.deadline = deadline  # the event loop's clock; past it the request ends with 504
        self.id = f"{endpoint.id_prefix}-{uuid.uuid4().hex}"

    async def whole(self) -> dict:
        """The complete body; raises `ApiError` (counted by the error handler) when there is none."""
        jobs = self.choices.jobs
        texts, entries = [""] * len(jobs), [[] for _ in jobs]
        outcomes: list[Outcome | None] = [None] * len(jobs)
        try:
            async with self._cancel_on_disconnect():
                async for index, item in self._merged(incremental=False):
                    if isinstance(item, Outcome):
                        outcomes[index] = item
                    else:
                        texts[index] += item.text
                        entries[index] += item.logprobs
        except ClientGone:
            raise ApiError(CLIENT_CLOSED_REQUEST, "The client closed the request") from None
        if any(outcome is None for outcome in outcomes):
            raise AssertionError("generation ended without an outcome")
        choices = [
            Choice(
                index,
                texts[index],
                self.endpoint.logprobs(entries[index], self.tokenizer, 0)[0] if _logprobs(job) else None,
                outcomes[index].finish_reason,
                outcomes[index].stop_reason,
            )
            for index, job in enumerate(jobs)
        ]
        self.count(200)
        return self.endpoint.whole(self.id, self.model, choices, self._total_usage(outcomes))

    async def events(self, include_usage: bool, continuous_usage: bool = False) -> AsyncIterator[str]:
        """SSE events; an error after the headers went out travels as an event before [DONE]."""
        endpoint, rid, model, jobs = self.endpoint, self.id, self.model, self.choices.jobs
        status = (
            CLIENT_CLOSED_REQUEST  # unless the stream gets to its end: a gone client cancels this generator
        )
        offsets = [0] * len(jobs)
        outcomes: list[Outcome | None] = [None] * len(jobs)

        def usage_of(index: int, completion_tokens: int) -> dict | None:
            return usage(len(jobs[index].prompt_ids), completion_tokens) if continuous_usage else None

        try:
            try:
                for index in range(len(jobs)):
                    if (opening := endpoint.opening(rid, model, index, usage_of(index, 0))) is not None:
                        yield _sse(opening)
                async with self._cancel_on_disconnect():
                    async for index, item in self._merged(incremental=True):
                        if isinstance(item, Delta):
                            logprobs = None
                            if _logprobs(jobs[index]):
                                logprobs, offsets[index] = endpoint.logprobs(
                                    item.logprobs, self.tokenizer, offsets[index]
                                )
                            usage_ = usage_of(index, item.completion_tokens)
                            yield _sse(endpoint.chunk(rid, model, index, item.text, logprobs, usage_))
                            continue
                        outcomes[index] = item
                        usage_ = usage_of(index, item.completion_tokens)
                        yield _sse(endpoint.closing(rid, model, index, item, usage_))
                if include_usage:
                    yield _sse(
                        usage_chunk_body(rid, model, endpoint.chunk_object, self._total_usage(outcomes))
                    )
                status = 200
            except ApiError as error:
                status = error.status
                yield _sse(error.body())
            except ClientGone:
                return
            yield _sse("[DONE]")
        finally:
            self.count(status)

    def _total_usage(self, outcomes: Sequence[Outcome]) -> dict:
        """Each prompt counts once, whatever n: its cached tokens are those the cache held for all its choices."""
        n = self.choices.n
        cached = sum(min(o.cached_tokens for o in outcomes[i : i + n]) for i in range(0, len(outcomes), n))
        return usage(self.choices.prompt_tokens, sum(o.completion_tokens for o in outcomes), cached)

    async def _merged(self, incremental: bool) -> AsyncIterator[tuple[int, Delta | Outcome]]:
        """Every choice's deltas and outcome, tagged with its index, in the order they come."""
        sources = [
            deltas(stream, job, self.tokenizer, incremental, self.deadline)
            for stream, job in zip(self.streams, self.choices.jobs, strict=True)
        ]
        if len(sources) == 1:
            async for item in sources[0]:
                yield 0, item
            return
        async for tagged in _interleave(sources):
            yield tagged

    @asynccontextmanager
    async def _cancel_on_disconnect(self):
        async def watch() -> None:
            # The body has been read, so the next message is the disconnect (or the end of the response).
            while (await self.request.receive())["type"] != "http.disconnect":
                pass
            self._cancel_all()

        watcher = asyncio.create_task(watch())
        try:
            yield
        finally:
            watcher.cancel()
            self._cancel_all()  # a no-op for finished choices; frees the sequences of interrupted ones

    def _cancel_all(self) -> None:
        for stream in self.streams:
            stream.cancel()


def _logprobs(job: Job) -> bool:
    return job.params.logprobs is not None or job.params.prompt_logprobs is not None


_END = object()


async def _interleave(sources: list[AsyncIterator]) -> AsyncIterator[tuple[int, object]]:
    """Items of several async iterators as they come, tagged with the iterator's index. The first exception
    of any ends it (the others are cancelled) and is raised."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, source: AsyncIterator) -> None:
        try:
            async for item in source:
                queue.put_nowait((index, item, None))
            queue.put_nowait((index, _END, None))
        except Exception as error:  # ApiError, ClientGone: handed to the reader
            queue.put_nowait((index, None, error))

    tasks = [asyncio.create_task(pump(i, source)) for i, source in enumerate(sources)]
    try:
        running = len(tasks)
        while running:
            index, item, error = await queue.get()
            if error is not None:
                raise error
            if item is _END:
                running -= 1
                continue
            yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _sse(body: dict | str) -> str:
    return f"data: {body if isinstance(body, str) else json.dumps(body)}\n\n"
