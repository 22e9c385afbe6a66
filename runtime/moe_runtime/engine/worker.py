"""Runs the single-threaded engine in one thread, stepping the scheduler, and hands tokens to asyncio.

The HTTP side calls `submit` and `cancel` from the event loop; everything that touches the engine
(forward passes, caches, expert counters) happens on the worker thread.

Failures: an exception in a forward pass fails that step's requests, and one in sampling fails only the
requests whose sampling failed; the worker goes on. Running out of device memory in a step fails nobody: the
step's requests wait again and later steps are smaller (`Scheduler.back_off`). Anything else that raises on
the worker thread ends the engine loop: `failure` is set, every open request ends with an error, and the
worker accepts nothing more (`EngineFailed`), which turns /health and /ready to 503.

Log-probabilities, for the requests that ask: a generated token's come from the logits the sampler got, before
its logits processors (vLLM's default); a prompt token's from the prefill chunks, for which the engine then
returns every position's logits (`Engine.forward(every_position=...)`), each delivered once even when an
out-of-memory step makes a prompt prefill again. A stop token that ends a sequence is delivered too (flagged),
so that usage counts it and `include_stop_str_in_output` can show it, as vLLM does.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Sequence as Many

import torch

from moe_runtime.adapters.manager import LoraManager
from moe_runtime.engine.logprobs import TokenLogprob, token_logprobs
from moe_runtime.engine.sampling import SamplingParams, make_generator, sample_next
from moe_runtime.engine.scheduler import Scheduler, SchedulerConfig, Step, Work
from moe_runtime.engine.sequence import FinishReason, Sequence
from moe_runtime.engine.streams import Finished, GenerationStream, OpenStreams, PromptLogprobs, Tokens
from moe_runtime.faults import Faults
from moe_runtime.metrics import ExpertMetrics, RuntimeMetrics

__all__ = ["EngineFailed", "EngineWorker", "Finished", "GenerationStream", "Tokens"]

log = logging.getLogger(__name__)

EXPERT_COUNT_INTERVAL_S = 1.0


class EngineFailed(Exception):
    """The engine loop has died; no request can run any more."""


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in message or "not enough memory" in message)


def unscored_span(start: int, count: int, prompt_length: int, scored: int) -> tuple[int, int] | None:
    """The prompt tokens (first, last; inclusive) that a chunk of `count` tokens fed from position `start`
    predicts and that were not scored yet (those before `scored` were), or None. Row j of the chunk predicts
    the token at start + j + 1; a requeued request prefills its prompt again, maybe cut differently, and
    must not score a token twice."""
    first, last = max(scored, start + 1), min(start + count, prompt_length - 1)
    return (first, last) if first <= last else None


class EngineWorker:
    def __init__(
        self,
        engine,
        config: SchedulerConfig,
        metrics: RuntimeMetrics,
        loop: asyncio.AbstractEventLoop,
        adapters: LoraManager | None = None,
        faults: Faults | None = None,
    ) -> None:
        self.engine = engine
        self.faults = faults or Faults()
        self.metrics = metrics
        self.failure: BaseException | None = None
        self._loop = loop
        self._scheduler = Scheduler(config, getattr(engine, "blocks", None))
        self._streams = OpenStreams(metrics)
        metrics.oldest_request_age.set_function(self._streams.oldest_age)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._last_expert_flush = 0.0
        self._step_started_at: float | None = None  # while a forward pass runs
        self._prefix_counted = (0, 0)  # the block manager's prefix cache counts already in the metrics
        self.adapters = adapters or LoraManager(engine, metrics.lora, base_model="", max_loras=1)
        self.adapters.wake = self._wake.set  # loads that finish and list changes wake an idle engine thread

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join()
        self.adapters.close()

    @property
    def idle(self) -> bool:
        """Nothing left to do: no request held, or the engine loop died (nothing will happen any more)."""
        if self.failure is not None:
            return True
        with self._lock:
            return self._scheduler.idle

    def submit(
        self, prompt: list[int], params: SamplingParams, timeout_s: float | None, adapter: str | None = None
    ) -> GenerationStream:
        """Queues one sequence; see `submit_all`."""
        return self.submit_all([Sequence(prompt, params, adapter=adapter)], timeout_s)[0]

    def submit_all(self, sequences: Many[Sequence], timeout_s: float | None) -> list[GenerationStream]:
        """Queues several sequences (one HTTP request's choices, which share their adapter) all together or,
        with `QueueFull`, none; each gets its id, arrival, deadline and stream here. Raises `EngineFailed`
        after the engine loop died and `AdapterError` for an adapter that cannot serve. Call from the event
        loop; the sequences belong to the engine thread from then on."""
        if self.failure is not None:
            raise EngineFailed(str(self.failure))
        now = time.monotonic()
        deadline = None if timeout_s is None else now + timeout_s
        adapters = {seq.adapter for seq in sequences} - {None}
        streams = []
        with self._lock:
            for adapter in adapters:
                self.adapters.check(adapter)
            for seq in sequences:
                seq.id, seq.arrival, seq.deadline = f"req-{next(self._ids)}", now, deadline
            self._scheduler.add_all(sequences)
            for adapter in adapters:
                self.adapters.count_request(adapter)
            for seq in sequences:
                seq.generator = make_generator(seq.params)
                seq.stream = GenerationStream(seq.id, len(seq.prompt), self.cancel, self._streams)
                streams.append(seq.stream)
            self.metrics.set_waiting(len(self._scheduler.waiting))
        self._wake.set()
        return streams

    def seconds_in_step(self) -> float | None:
        """How long the engine step in flight has run; None between steps. Any thread."""
        started = self._step_started_at
        return None if started is None else time.monotonic() - started

    def check_adapter(self, name: str) -> None:
        """AdapterError unless new requests may ask for the adapter `name`."""
        with self._lock:
            self.adapters.check(name)

    def adapter_models(self) -> list[tuple[str, str]]:
        """(name, path) of the adapters that serve, for /v1/models."""
        with self._lock:
            return self.adapters.models()

    def cancel(self, request_id: str) -> None:
        with self._lock:
            self._scheduler.cancel(request_id)
        self._wake.set()

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._step()
        except Exception as error:
            self._die(error)

    def _die(self, error: Exception) -> None:
        log.critical("engine loop failed; failing every open request", exc_info=error)
        self.failure = error
        try:
            self._loop.call_soon_threadsafe(self._streams.fail_all)
        except RuntimeError:
            log.warning("event loop closed; open requests not failed")

    def _step(self) -> None:
        with self._lock:
            now = time.monotonic()
            adapters = self.adapters.step(self._scheduler, now)
            step = self._scheduler.schedule(now, adapters.admissible)
            self._publish_gauges()
        deliveries = [self._end(r) for r in step.dropped] + self._fail(
            adapters.unservable, FinishReason.ADAPTER_FAILED
        )
        if step.work:
            self._step_started_at = time.monotonic()
            # the prompts whose prefill begins in this step (what --inject-faults acts on), read before the
            # step moves them on
            started = [len(w.seq.prefill_tokens) for w in step.work if w.seq.starts_prefill]
            try:
                deliveries += self._execute(step)
                self.faults.after_step(started)
            finally:
                self._step_started_at = None
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
            logits, prompt_logprobs = self._forward(step)
        except Exception as error:
            if is_out_of_memory(error):
                return self._push_back(step, error)
            log.exception("engine step failed; failing its %d requests", len(step.work))
            return self._fail([w.seq for w in step.work])
        sampled, logprobs, unsampled = self._sample(step, logits)
        deliveries = prompt_logprobs + self._fail(unsampled)
        self.metrics.prompt_tokens.inc(sum(len(w.tokens) for w in step.work if w.seq.is_prefilling))
        with self._lock:
            self.adapters.after_step(step.work, sampled, time.monotonic())
            finished = self._scheduler.complete(step, sampled)
        tokens = self._token_deliveries(step, sampled, logprobs)
        self.metrics.generation_tokens.inc(len(tokens))
        return deliveries + tokens + [self._end(r) for r in finished]

    def _forward(self, step: Step) -> tuple[torch.Tensor, list]:
        """One forward pass: the logits of each item's last token, and the prompt log-probabilities the step
        computed (deliveries). Items that need prompt log-probabilities get every position's logits; without
        them the engine is called exactly as before."""
        items = [(w.seq, w.tokens, w.seq.adapter) for w in step.work]
        scored = [self._scores_prompt(w) for w in step.work]
        if not any(scored):
            return self.engine.forward(items), []
        logits = self.engine.forward(items, every_position=scored)
        last, deliveries, row = [], [], 0
        for item, scores in zip(step.work, scored, strict=True):
            rows = len(item.tokens) if scores else 1
            if scores:
                deliveries += self._prompt_logprobs(item, logits[row : row + rows])
            last.append(row + rows - 1)
            row += rows
        return logits[last], deliveries

    def _scores_prompt(self, item: Work) -> bool:
        return item.seq.params.prompt_logprobs is not None and self._unscored(item) is not None

    def _unscored(self, item: Work) -> tuple[int, int] | None:
        seq = item.seq
        return unscored_span(seq.prefilled, len(item.tokens), len(seq.prompt), seq.scored)

    def _prompt_logprobs(self, item: Work, logits: torch.Tensor) -> list:
        """The entries of the prompt tokens this chunk predicts (row j predicts the token at start + j + 1)."""
        seq, start = item.seq, item.seq.prefilled
        first, last = self._unscored(item)
        entries = token_logprobs(
            logits[first - start - 1 : last - start], seq.prompt[first : last + 1], seq.params.prompt_logprobs
        )
        seq.scored = last + 1
        return [(seq.stream, PromptLogprobs(entries))]

    def _push_back(self, step: Step, error: Exception) -> list:
        """The step ran out of memory: its requests wait again with their caches dropped (a forward pass
        that stopped half way leaves them inconsistent), and the next steps are smaller."""
        sequences = [w.seq for w in step.work]
        with self._lock:
            smaller = self._scheduler.back_off(step)
        if not smaller:
            log.error("out of memory with one token of one sequence (%s); failing its request", error)
            return self._fail(sequences)
        for seq in sequences:
            self.engine.release(seq)
        with self._lock:
            self._scheduler.requeue(sequences)
            limits = (self._scheduler.max_running, self._scheduler.token_budget)
        if self.engine.device.type == "cuda":
            torch.cuda.empty_cache()
        log.warning(
            "out of memory in a step of %d sequences and %d tokens (%s); they wait again, and steps now take "
            "at most %d sequences and %d tokens",
            len(step.work),
            step.num_tokens,
            error,
            *limits,
        )
        return []

    def _fail(self, sequences: list[Sequence], reason: FinishReason = FinishReason.ERROR) -> list:
        with self._lock:
            failed = self._scheduler.fail(sequences, reason)
        return [self._end(seq) for seq in failed]

    def _sample(
        self, step: Step, logits: torch.Tensor
    ) -> tuple[list[int | None], list[TokenLogprob | None], list[Sequence]]:
        """Next tokens of the sampling rows, their log-probabilities where asked for, and the requests whose
        sampling failed (retried one by one, so one request's bad parameters cannot fail its batch-mates)."""
        sampled: list[int | None] = [None] * len(step.work)
        logprobs: list[TokenLogprob | None] = [None] * len(step.work)
        rows = [i for i, w in enumerate(step.work) if w.samples]
        if not rows:
            return sampled, logprobs, []
        unsampled = []
        try:
            tokens = self._sample_rows(step, logits, rows)
        except Exception:
            log.exception("sampling failed for a batch of %d; retrying one by one", len(rows))
            tokens = []
            for i in rows:
                try:
                    tokens += self._sample_rows(step, logits, [i])
                except Exception:
                    tokens.append((None, None))
                    unsampled.append(step.work[i].seq)
        for i, (token, entry) in zip(rows, tokens, strict=True):
            sampled[i], logprobs[i] = token, entry
        return sampled, logprobs, unsampled

    def _sample_rows(
        self, step: Step, logits: torch.Tensor, rows: list[int]
    ) -> list[tuple[int, TokenLogprob | None]]:
        sequences = [step.work[i].seq for i in rows]
        tokens = sample_next(
            logits[rows],
            [seq.params for seq in sequences],
            [seq.generator for seq in sequences],
            [(seq.prompt, seq.output) for seq in sequences],
        )
        entries: list[TokenLogprob | None] = [None] * len(rows)
        wanted = [j for j, seq in enumerate(sequences) if seq.params.logprobs is not None]
        if wanted:  # from the raw logits, before the logits processors (vLLM's default, raw_logprobs)
            k = max(sequences[j].params.logprobs for j in wanted)
            computed = token_logprobs(logits[[rows[j] for j in wanted]], [tokens[j] for j in wanted], k)
            for j, entry in zip(wanted, computed, strict=True):
                keep = sequences[j].params.logprobs
                entries[j] = (
                    entry if keep == k else TokenLogprob(entry.token, entry.logprob, entry.top[:keep])
                )
        return list(zip(tokens, entries, strict=True))

    def _token_deliveries(
        self, step: Step, sampled: list[int | None], logprobs: list[TokenLogprob | None]
    ) -> list:
        deliveries = []
        for item, token, entry in zip(step.work, sampled, logprobs, strict=True):
            if token is None or item.seq.finish_reason in (FinishReason.ERROR, FinishReason.CANCELLED):
                continue
            stop = item.seq.finish_reason is FinishReason.STOP
            event = Tokens([token], None if entry is None else [entry], stop, item.seq.cached_prompt_tokens)
            deliveries.append((item.seq.stream, event))
        return deliveries

    def _end(self, seq: Sequence):
        if seq.length or seq.block_table:  # it ran: give its cache back
            self.engine.release(seq)
        generated = len(seq.output) + (seq.stop_token_id is not None)
        return seq.stream, Finished(seq.finish_reason, len(seq.prompt), generated)

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
        blocks = getattr(self.engine, "blocks", None)
        if blocks is not None and blocks.prefix_queries != self._prefix_counted[0]:
            queries, hits = blocks.prefix_queries, blocks.prefix_hits
            self.metrics.count_prefix_cache(queries - self._prefix_counted[0], hits - self._prefix_counted[1])
            self._prefix_counted = (queries, hits)
        self.metrics.set_load(
            len(self._scheduler.waiting), len(self._scheduler.running), self.engine.kv_cache_usage()
        )

    def _flush_expert_counts(self, force: bool) -> None:
        if self.metrics.expert_tokens.mode is ExpertMetrics.OFF:
            return
        now = time.monotonic()
        if force or now - self._last_expert_flush >= EXPERT_COUNT_INTERVAL_S:
            self._last_expert_flush = now
            self.metrics.expert_tokens.add(self.engine.take_expert_token_counts())
