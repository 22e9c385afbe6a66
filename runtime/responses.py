"""A generation stream as an HTTP answer: one JSON body, or server-sent events ending in `data: [DONE]`."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import Request

from moe_runtime.generation import ClientGone, Job, Outcome, deltas
from moe_runtime.protocol import (
    ApiError,
    chat_chunk_body,
    chat_completion_body,
    completion_body,
    usage,
    usage_chunk_body,
)
from moe_runtime.streams import GenerationStream

CLIENT_CLOSED_REQUEST = 499  # nginx's code for "the client went away first"; only ever seen in metrics


@dataclass(frozen=True)
class Endpoint:
    """How one endpoint shapes its bodies; each callable takes the response id and the model name first."""

    id_prefix: str
    chunk_object: str
    opening: Callable[[str, str, Job], list[dict]]
    delta: Callable[[str, str, str], dict]
    closing: Callable[[str, str, str], dict]
    whole: Callable[[str, str, Job, Outcome], dict]


def _usage(outcome: Outcome) -> dict:
    return usage(outcome.prompt_tokens, outcome.completion_tokens)


COMPLETIONS = Endpoint(
    id_prefix="cmpl",
    chunk_object="text_completion",
    opening=lambda rid, model, job: [completion_body(rid, model, job.prefix, None)] if job.prefix else [],
    delta=lambda rid, model, text: completion_body(rid, model, text, None),
    closing=lambda rid, model, reason: completion_body(rid, model, "", reason),
    whole=lambda rid, model, job, outcome: completion_body(
        rid, model, job.prefix + outcome.text, outcome.finish_reason, _usage(outcome)
    ),
)

CHAT = Endpoint(
    id_prefix="chatcmpl",
    chunk_object="chat.completion.chunk",
    opening=lambda rid, model, job: [chat_chunk_body(rid, model, {"role": "assistant", "content": ""}, None)],
    delta=lambda rid, model, text: chat_chunk_body(rid, model, {"content": text}, None),
    closing=lambda rid, model, reason: chat_chunk_body(rid, model, {}, reason),
    whole=lambda rid, model, job, outcome: chat_completion_body(
        rid, model, outcome.text, outcome.finish_reason, _usage(outcome)
    ),
)


class Answer:
    """One accepted request's answer. `count` records the HTTP status of its outcome exactly once."""

    def __init__(
        self,
        endpoint: Endpoint,
        model: str,
        tokenizer,
        request: Request,
        stream: GenerationStream,
        job: Job,
        count: Callable[[int], None],
        deadline: float | None = None,
    ) -> None:
        self.endpoint, self.model, self.tokenizer = endpoint, model, tokenizer
        self.request, self.stream, self.job, self.count = request, stream, job, count
        self.deadline = deadline  # the event loop's clock; past it the request ends with 504
        self.id = f"{endpoint.id_prefix}-{uuid.uuid4().hex}"

    async def whole(self) -> dict:
        """The complete body; raises `ApiError` (counted by the error handler) when there is none."""
        try:
            async with self._cancel_on_disconnect():
                async for item in deltas(self.stream, self.job, self.tokenizer, False, self.deadline):
                    if isinstance(item, Outcome):
                        self.count(200)
                        return self.endpoint.whole(self.id, self.model, self.job, item)
        except ClientGone:
            raise ApiError(CLIENT_CLOSED_REQUEST, "The client closed the request") from None
        raise AssertionError("generation ended without an outcome")

    async def events(self, include_usage: bool) -> AsyncIterator[str]:
        """SSE events; an error after the headers went out travels as an event before [DONE]."""
        endpoint, rid, model = self.endpoint, self.id, self.model
        status = (
            CLIENT_CLOSED_REQUEST  # unless the stream gets to its end: a gone client cancels this generator
        )
        try:
            try:
                for body in endpoint.opening(rid, model, self.job):
                    yield _sse(body)
                async with self._cancel_on_disconnect():
                    async for item in deltas(self.stream, self.job, self.tokenizer, True, self.deadline):
                        if not isinstance(item, Outcome):
                            yield _sse(endpoint.delta(rid, model, item))
                            continue
                        yield _sse(endpoint.closing(rid, model, item.finish_reason))
                        if include_usage:
                            yield _sse(usage_chunk_body(rid, model, endpoint.chunk_object, _usage(item)))
                status = 200
            except ApiError as error:
                status = error.status
                yield _sse(error.body())
            except ClientGone:
                return
            yield _sse("[DONE]")
        finally:
            self.count(status)

    @asynccontextmanager
    async def _cancel_on_disconnect(self):
        async def watch() -> None:
            # The body has been read, so the next message is the disconnect (or the end of the response).
            while (await self.request.receive())["type"] != "http.disconnect":
                pass
            self.stream.cancel()

        watcher = asyncio.create_task(watch())
        try:
            yield
        finally:
            watcher.cancel()
            self.stream.cancel()  # a no-op when the request finished; frees the sequence when interrupted


def _sse(body: dict | str) -> str:
    return f"data: {body if isinstance(body, str) else json.dumps(body)}\n\n"
