"""The asyncio side of generation: one stream of events per accepted request, and the registry of the streams
still open, which records every request's latency however it ends and knows the oldest one.

Everything here runs on the event loop: the engine thread hands its events over with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from moe_runtime.engine.logprobs import TokenLogprob
from moe_runtime.engine.sequence import FinishReason
from moe_runtime.metrics import RuntimeMetrics


@dataclass(frozen=True)
class Tokens:
    ids: list[int]
    logprobs: list[TokenLogprob] | None = None  # one per id, when the request asked for them
    stop: bool = False  # the last id is the stop token that ended the sequence
    # prompt tokens the prefix cache held at the sequence's latest admission, for usage: on every event, since a
    # stop string can end a choice before its `Finished` comes
    cached_tokens: int = 0


@dataclass(frozen=True)
class PromptLogprobs:
    """Log-probabilities of prompt tokens (from the second on), in order, as prefill computes them."""

    entries: list[TokenLogprob]


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    prompt_tokens: int
    output_tokens: int  # the stop token counts, as in vLLM's usage


class GenerationStream:
    """Yields `PromptLogprobs` (when asked for) and `Tokens` events, then one `Finished`."""

    def __init__(
        self, request_id: str, prompt_tokens: int, cancel: Callable[[str], None], streams: OpenStreams
    ) -> None:
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self.arrival = time.monotonic()
        self.first_token_at: float | None = None
        self.tokens = 0
        self.closed = False
        self._cancel = cancel
        self._streams = streams
        self._events: asyncio.Queue[Tokens | PromptLogprobs | Finished] = asyncio.Queue()
        streams.open(self)

    def cancel(self) -> None:
        self._cancel(self.request_id)

    def put(self, event: Tokens | PromptLogprobs | Finished) -> None:
        """Called on the event loop with what the engine thread produced."""
        if self.closed:
            return
        if isinstance(event, Tokens):
            self._streams.tokens(self, len(event.ids))
        elif isinstance(event, Finished):
            self._streams.close(self)
        self._events.put_nowait(event)

    def abandon(self) -> None:
        """The HTTP side gives up on this stream (its own deadline passed): it counts as ended now, and
        whatever the engine sends later is dropped. Cancels the generation too."""
        self.cancel()
        if not self.closed:
            self._streams.close(self)

    async def get(self, deadline: float | None = None) -> Tokens | PromptLogprobs | Finished:
        """The next event; TimeoutError once the event loop's clock passes `deadline`."""
        async with asyncio.timeout_at(deadline):
            return await self._events.get()

    async def __aiter__(self):
        while True:
            event = await self.get()
            yield event
            if isinstance(event, Finished):
                return


class OpenStreams:
    """The streams accepted and not yet finished, in arrival order."""

    def __init__(self, metrics: RuntimeMetrics) -> None:
        self._metrics = metrics
        self._open: dict[int, GenerationStream] = {}

    def open(self, stream: GenerationStream) -> None:
        self._open[id(stream)] = stream

    def tokens(self, stream: GenerationStream, count: int) -> None:
        if stream.first_token_at is None:
            stream.first_token_at = time.monotonic()
            self._metrics.time_to_first_token.observe(stream.first_token_at - stream.arrival)
        stream.tokens += count

    def close(self, stream: GenerationStream) -> None:
        """Records the request's latency however it ended, so that the slowest requests (timed out,
        cancelled, failed) count in the percentiles too."""
        stream.closed = True
        self._open.pop(id(stream), None)
        self._metrics.observe_request(time.monotonic(), stream.arrival, stream.first_token_at, stream.tokens)

    def oldest_age(self) -> float:
        """Seconds since the oldest open stream was accepted; 0 when none is open."""
        oldest = next(iter(self._open.values()), None)
        return 0.0 if oldest is None else time.monotonic() - oldest.arrival

    def fail_all(self) -> None:
        for stream in list(self._open.values()):
            stream.put(Finished(FinishReason.ERROR, stream.prompt_tokens, stream.tokens))
