"""Runs the single-threaded engine in one thread, stepping the scheduler, and hands tokens to asyncio.

The HTTP side calls `submit` and `cancel` from the event loop; everything that touches the engine
(forward passes, caches, expert counters) happens on the worker thread.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from dataclasses import dataclass

import torch

from moe_runtime.metrics import RuntimeMetrics
from moe_runtime.sampling import SamplingParams, make_generator, sample_next
from moe_runtime.scheduler import FinishReason, Request, Scheduler, SchedulerConfig, Step

log = logging.getLogger(__name__)

EXPERT_COUNT_INTERVAL_S = 1.0


@dataclass(frozen=True)
class Tokens:
    ids: list[int]


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    prompt_tokens: int
    output_tokens: int


class GenerationStream:
    """The asyncio side of one request: yields `Tokens` events, then one `Finished`."""

    def __init__(self, request_id: str, worker: EngineWorker) -> None:
        self.request_id = request_id
        self._worker = worker
        self._events: asyncio.Queue[Tokens | Finished] = asyncio.Queue()

    def cancel(self) -> None:
        self._worker.cancel(self.request_id)

    def put(self, event: Tokens | Finished) -> None:
        """Called on the event loop with what the engine thread produced."""
        self._events.put_nowait(event)

    async def __aiter__(self):
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, Finished):
                return


@dataclass
class _Live:
    stream: GenerationStream
    params: SamplingParams
    generator: torch.Generator | None
    arrival: float
    cache: object = None
    first_token_at: float | None = None


class EngineWorker:
    def __init__(
        self, engine, config: SchedulerConfig, metrics: RuntimeMetrics, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self._loop = loop
        self._scheduler = Scheduler(config)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._live: dict[str, _Live] = {}
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._last_expert_flush = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join()

    @property
    def idle(self) -> bool:
        with self._lock:
            return self._scheduler.idle

    def submit(self, prompt: list[int], params: SamplingParams, timeout_s: float | None) -> GenerationStream:
        """Queues a request; raises `QueueFull` when the waiting queue is full. Call from the event loop."""
        now = time.monotonic()
        request_id = f"req-{next(self._ids)}"
        stream = GenerationStream(request_id, self)
        request = Request(
            request_id,
            prompt,
            params.max_tokens,
            arrival=now,
            stop_token_ids=frozenset(params.stop_token_ids),
            deadline=None if timeout_s is None else now + timeout_s,
        )
        live = _Live(stream, params, make_generator(params), now)
        with self._lock:
            self._scheduler.add(request)
            self._live[request_id] = live
            self.metrics.queue_depth.set(len(self._scheduler.waiting))
        self._wake.set()
        return stream

    def cancel(self, request_id: str) -> None:
        with self._lock:
            self._scheduler.cancel(request_id)
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            with self._lock:
                step = self._scheduler.schedule(time.monotonic())
                self._publish_gauges()
            deliveries = [self._end(r) for r in step.dropped]
            if step.work:
                deliveries += self._execute(step)
            self._deliver(deliveries)
            # before going idle, publish what the last steps routed: the next step may be far off
            self._flush_expert_counts(force=not step.work)
            if not step.work:
                self._wait_for_work()

    def _wait_for_work(self) -> None:
        # Wake at least once a second: waiting requests may time out with nothing else happening.
        self._wake.wait(timeout=1.0)
        self._wake.clear()

    def _execute(self, step: Step) -> list:
        self.metrics.batch_size.observe(len(step.work))
        try:
            logits = self.engine.forward([(self._cache(item.request.id), item.tokens) for item in step.work])
        except Exception:
            log.exception("engine step failed; failing its %d requests", len(step.work))
            return self._fail([w.request for w in step.work])
        sampled, unsampled = self._sample(step, logits)
        deliveries = self._fail(unsampled)
        self.metrics.prompt_tokens.inc(sum(len(w.tokens) for w in step.work if w.request.is_prefilling))
        with self._lock:
            finished = self._scheduler.complete(step, sampled)
        tokens = self._token_deliveries(step, sampled)
        self.metrics.generation_tokens.inc(len(tokens))
        return deliveries + tokens + [self._end(r) for r in finished]

    def _fail(self, requests: list[Request]) -> list:
        with self._lock:
            failed = self._scheduler.fail(requests)
        return [self._end(r) for r in failed]

    def _cache(self, request_id: str):
        live = self._live[request_id]
        if live.cache is None:
            live.cache = self.engine.new_sequence()
        return live.cache

    def _sample(self, step: Step, logits: torch.Tensor) -> tuple[list[int | None], list[Request]]:
        """Next tokens of the sampling rows, and the requests whose sampling failed (retried one by one,
        so one request's bad parameters cannot fail its batch-mates)."""
        sampled: list[int | None] = [None] * len(step.work)
        rows = [i for i, w in enumerate(step.work) if w.samples]
        if not rows:
            return sampled, []
        lives = [self._live[step.work[i].request.id] for i in rows]
        unsampled = []
        try:
            tokens = sample_next(logits[rows], [x.params for x in lives], [x.generator for x in lives])
        except Exception:
            log.exception("sampling failed for a batch of %d; retrying one by one", len(rows))
            tokens = []
            for i, live in zip(rows, lives, strict=True):
                try:
                    tokens += sample_next(logits[i : i + 1], [live.params], [live.generator])
                except Exception:
                    tokens.append(None)
                    unsampled.append(step.work[i].request)
        for i, token in zip(rows, tokens, strict=True):
            sampled[i] = token
        return sampled, unsampled

    def _token_deliveries(self, step: Step, sampled: list[int | None]) -> list:
        now = time.monotonic()
        deliveries = []
        for item, token in zip(step.work, sampled, strict=True):
            request = item.request
            if token is None or request.finish_reason is FinishReason.STOP:
                continue
            live = self._live[request.id]
            if live.first_token_at is None:
                live.first_token_at = now
                self.metrics.time_to_first_token.observe(now - live.arrival)
            deliveries.append((live.stream, Tokens([token])))
        return deliveries

    def _end(self, request: Request):
        live = self._live.pop(request.id)
        if live.cache is not None:
            self.engine.release(live.cache)
        if request.finish_reason in (FinishReason.STOP, FinishReason.LENGTH):
            now = time.monotonic()
            self.metrics.request_latency.observe(now - live.arrival)
            if live.first_token_at is not None and len(request.output) > 1:
                self.metrics.time_per_output_token.observe(
                    (now - live.first_token_at) / (len(request.output) - 1)
                )
        return live.stream, Finished(request.finish_reason, len(request.prompt), len(request.output))

    def _deliver(self, deliveries: list) -> None:
        if not deliveries:
            return

        def put_all() -> None:
            for stream, event in deliveries:
                stream.put(event)

        try:
            self._loop.call_soon_threadsafe(put_all)
        except RuntimeError:
            log.warning("event loop closed; %d events undelivered", len(deliveries))

    def _publish_gauges(self) -> None:
        self.metrics.queue_depth.set(len(self._scheduler.waiting))
        self.metrics.requests_running.set(len(self._scheduler.running))
        self.metrics.kv_cache_usage.set(self.engine.kv_cache_usage())

    def _flush_expert_counts(self, force: bool) -> None:
        now = time.monotonic()
        if force or now - self._last_expert_flush >= EXPERT_COUNT_INTERVAL_S:
            self._last_expert_flush = now
            self.metrics.expert_tokens.add(self.engine.take_expert_token_counts())
