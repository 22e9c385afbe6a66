"""Dynamic batching policy: which sequences take part in the next engine step, and with which tokens.

Pure bookkeeping over plain data: no engine, no clock (callers pass `now`), no threads, no I/O.

A step runs every decoding sequence (one token each) plus prefill work for as many prompt tokens as the
per-step token budget leaves. A long prompt is fed in chunks of at most `prefill_chunk` tokens, so it shares
every step with the decodes and with shorter prompts instead of stalling them.

Prefill order:
- `length_aware`: shortest remaining prompt first, with aging: each second of waiting counts as
  `aging_tokens_per_s` tokens shorter, so a long prompt under a steady stream of short ones still reaches the
  front. (Buckets would need tuned boundaries; one continuous key needs one knob.)
- `fcfs`: arrival order.
- `static`: static batching, the baseline continuous batching is measured against: when nothing runs, the
  requests waiting then (in arrival order, as many as fit) form a batch, and it runs to completion before the
  next one starts; nobody joins it meanwhile.
Walking that order, running prefills get their chunks; waiting requests are admitted until the first one
that does not fit (no free sequence slot or not enough KV cache left). After it no other waiting request is
admitted in that step (skipping ahead of it would starve it), but the running prefills behind it still get
their chunks.

Progress: while the scheduler holds a request, every step has work. Decodes always run; when no running
sequence decodes, some running one is prefilling and gets at least one token, since the budget left after
the decodes is at least 1 (`token_budget >= max_running`); when nothing runs, the first waiting request fits
(requests that could never fit are refused by `add`).

Starvation bound: a waiting request Q of prompt length L_Q is admitted after a request R that arrived later
only under `length_aware`, and only if L_R + a * arrival_R < L_Q + a * arrival_Q (a = aging_tokens_per_s), that
is, only if R arrived less than (L_Q - L_R) / a <= (L_Q - 1) / a seconds after Q: the relative order of two
waiting requests never changes while they wait. So no request arriving (L_Q - 1) / a seconds or more after Q
starts before it. `fcfs` admits strictly in arrival order. With a = 0, length_aware has no bound: a steady
stream of shorter prompts can hold a long one back for as long as it lasts. (A request put back after an
out-of-memory step keeps its arrival time and waits with its generated tokens as prompt.)

LoRA: a waiting request whose adapter is not in memory is passed over (it neither starts nor holds up others);
a running request's adapter stays in memory until it finishes (adapters/residency.py).

Prefix caching: with the engine's block manager, an admitted request takes the cached blocks its prompt
starts with (`BlockManager.match_prefix`) and prefills only the rest.

KV cache: each admitted request reserves the most cache it can ever hold (prompt + max_tokens rounded up to
whole blocks of `block_size`, capped per sequence for windowed attention), so a running sequence never runs
out of room and nothing is preempted for lack of reserved cache.

Out of memory: when the device runs out of memory in a step anyway (activations, fragmentation), `back_off`
halves the sequences and tokens a step may take, and `requeue` puts that step's requests back to waiting
(their caches were dropped; each one's prompt plus what it generated is prefilled again). After
`RECOVERY_STEPS` good steps the limits double again, up to the configured ones.
"""

from __future__ import annotations

import itertools
from collections.abc import Container
from collections.abc import Sequence as Many
from dataclasses import dataclass
from enum import StrEnum

from moe_runtime.engine.blocks import BlockManager
from moe_runtime.engine.sequence import FinishReason, Sequence

__all__ = ["FinishReason", "Policy", "QueueFull", "Scheduler", "SchedulerConfig", "Sequence", "Step", "Work"]

RECOVERY_STEPS = 64


class Policy(StrEnum):
    LENGTH_AWARE = "length_aware"
    FCFS = "fcfs"
    STATIC = "static"  # no continuous batching: a batch runs to its end before the next one starts


class QueueFull(Exception):
    """The waiting queue holds `max_queue` requests already."""


@dataclass(frozen=True)
class SchedulerConfig:
    max_queue: int = 256
    max_running: int = 32
    token_budget: int = 512
    prefill_chunk: int = 256
    policy: Policy = Policy.LENGTH_AWARE
    aging_tokens_per_s: float = 64.0
    kv_capacity_tokens: int | None = None
    kv_tokens_per_sequence: int | None = None  # a multiple of block_size
    block_size: int = 1

    def __post_init__(self) -> None:
        for name in ("max_queue", "max_running", "token_budget", "prefill_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.token_budget < self.max_running:
            raise ValueError(
                "token_budget must be at least max_running: every running sequence decodes each step"
            )
        if self.aging_tokens_per_s < 0:
            raise ValueError("aging_tokens_per_s must not be negative")

    def kv_reservation(self, prompt_tokens: int, max_tokens: int) -> int:
        need = -(-(prompt_tokens + max_tokens) // self.block_size) * self.block_size
        return need if self.kv_tokens_per_sequence is None else min(need, self.kv_tokens_per_sequence)


@dataclass(frozen=True)
class Work:
    """One sequence's part of a step: feed `tokens`; when `samples`, the logits of the last give the next token."""

    seq: Sequence
    tokens: list[int]
    samples: bool


@dataclass
class Step:
    work: list[Work]
    dropped: list[Sequence]

    @property
    def num_tokens(self) -> int:
        return sum(len(w.tokens) for w in self.work)


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv: BlockManager | None = None) -> None:
        """`kv`: the engine's block manager, whose prefix cache an admitted sequence starts from (None: every
        prompt is prefilled whole)."""
        self.config = config
        self._kv = kv
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self._by_id: dict[str, Sequence] = {}
        self._arrival_order = itertools.count()
        self._order: dict[str, int] = {}
        # lowered by `back_off` after an out-of-memory step, raised again by `step_succeeded`
        self.max_running = config.max_running
        self.token_budget = config.token_budget
        self._good_steps = 0

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def add(self, request: Sequence) -> None:
        self.add_all([request])

    def add_all(self, requests: Many[Sequence]) -> None:
        """Queues all of them or none (QueueFull when the queue lacks room for all: the sequences of one HTTP
        request, its prompts times `n`, are accepted together or refused together)."""
        capacity = self.config.kv_capacity_tokens
        for request in requests:
            if request.id in self._by_id:
                raise ValueError(f"duplicate request id {request.id}")
            if capacity is not None and self._reservation(request) > capacity:
                raise ValueError(
                    f"request {request.id} needs more KV cache than the {capacity} tokens there are"
                )
        if len(self.waiting) + len(requests) > self.config.max_queue:
            raise QueueFull
        for request in requests:
            self.waiting.append(request)
            self._by_id[request.id] = request
            self._order[request.id] = next(self._arrival_order)

    def cancel(self, request_id: str) -> None:
        """Marks a request to be dropped at the next step (no-op when it already finished)."""
        if (request := self._by_id.get(request_id)) is not None:
            request.cancelled = True

    def schedule(self, now: float, adapters: Container[str] | None = None) -> Step:
        """`adapters`: the LoRA adapters ready to take new requests (None: all). A waiting request for any other
        adapter is passed over without holding up the requests behind it (adapters/residency.py brings its
        adapter in)."""
        dropped = self._drop_cancelled_and_expired(now)
        work = [Work(r, [r.output[-1]], samples=True) for r in self.running if not r.is_prefilling]
        budget = self.token_budget - len(work)
        admitting = True
        if self.config.policy is Policy.STATIC:
            if not self.running:  # the last batch has finished: the next one is whatever waits (that fits)
                for request in sorted(self.waiting, key=lambda r: self._order[r.id]):
                    if not _ready(request, adapters):
                        continue
                    if not self._can_admit(request):
                        break
                    self._admit(request)
            admitting = False  # nobody joins a batch that runs
        for request in self._prefill_order(now):
            if budget <= 0:
                break
            if request not in self.running:
                if not admitting or not _ready(request, adapters):
                    continue
                if not self._can_admit(request):
                    admitting = False  # nobody may overtake it; the running prefills behind it go on
                    continue
                self._admit(request)
            chunk = min(request.remaining_prompt, self.config.prefill_chunk, budget)
            start = request.prefilled
            end = start + chunk
            work.append(Work(request, request.prefill_tokens[start:end], end == len(request.prefill_tokens)))
            budget -= chunk
        return Step(work, dropped)

    def _admit(self, request: Sequence) -> None:
        self.waiting.remove(request)
        self.running.append(request)
        # prompt log-probabilities need every prompt position computed: no cache for them (as vLLM)
        cached = 0
        if self._kv is not None and request.params.prompt_logprobs is None:
            cached = self._kv.match_prefix(request, request.prefill_tokens)
        request.prefilled = request.cached_tokens = cached

    def complete(self, step: Step, sampled: Many[int | None]) -> list[Sequence]:
        """Records a step's outcome (`sampled[i]` is the token for `step.work[i]` where it samples; requests
        failed meanwhile are skipped); returns the requests that finished."""
        self._step_succeeded()
        finished = []
        for item, token in zip(step.work, sampled, strict=True):
            request = item.seq
            if request.finish_reason is not None:
                continue
            if request.is_prefilling:
                request.prefilled += len(item.tokens)
            if not item.samples:
                continue
            assert token is not None
            if token in request.stop_token_ids:
                request.stop_token_id = token
                self._finish(request, FinishReason.STOP)
            else:
                request.output.append(token)
                if len(request.output) >= request.max_tokens:
                    self._finish(request, FinishReason.LENGTH)
            if request.finish_reason is not None:
                finished.append(request)
        return finished

    def fail(self, requests: Many[Sequence], reason: FinishReason = FinishReason.ERROR) -> list[Sequence]:
        """These requests cannot go on: they end with `reason`. Returns those not finished before."""
        failed = [r for r in requests if r.finish_reason is None]
        for request in failed:
            self._finish(request, reason)
        return failed

    def back_off(self, step: Step) -> bool:
        """A step ran out of memory: later steps take at most half its sequences and half its tokens.
        False when it was as small as a step gets (one sequence, one token): nothing smaller can run."""
        if len(step.work) <= 1 and step.num_tokens <= 1:
            return False
        self.max_running = max(1, len(step.work) // 2)
        self.token_budget = max(self.max_running, step.num_tokens // 2)
        self._good_steps = 0
        return True

    def requeue(self, requests: Many[Sequence]) -> None:
        """Puts running requests back to waiting, their caches gone: each one prefills its prompt and the
        tokens it generated again, then goes on where it was (it keeps its arrival time and priority)."""
        for request in requests:
            if request.finish_reason is not None or request not in self.running:
                continue
            self.running.remove(request)
            self.waiting.append(request)
            request.prefill_tokens = request.prompt + request.output
            request.prefilled = request.cached_tokens = 0

    def _step_succeeded(self) -> None:
        if self.max_running == self.config.max_running and self.token_budget == self.config.token_budget:
            return
        self._good_steps += 1
        if self._good_steps >= RECOVERY_STEPS:
            self._good_steps = 0
            self.max_running = min(self.config.max_running, 2 * self.max_running)
            self.token_budget = min(self.config.token_budget, 2 * self.token_budget)

    def _drop_cancelled_and_expired(self, now: float) -> list[Sequence]:
        dropped = []
        for request in [*self.waiting, *self.running]:
            if request.cancelled:
                self._finish(request, FinishReason.CANCELLED)
            elif request.deadline is not None and now >= request.deadline:
                self._finish(request, FinishReason.TIMEOUT)
            else:
                continue
            dropped.append(request)
        return dropped

    def _prefill_order(self, now: float) -> list[Sequence]:
        candidates = [r for r in self.running if r.is_prefilling] + self.waiting
        if self.config.policy is not Policy.LENGTH_AWARE:
            return sorted(candidates, key=lambda r: self._order[r.id])
        aging = self.config.aging_tokens_per_s
        return sorted(
            candidates, key=lambda r: (r.remaining_prompt - aging * (now - r.arrival), self._order[r.id])
        )

    def _can_admit(self, request: Sequence) -> bool:
        if len(self.running) >= self.max_running:
            return False
        capacity = self.config.kv_capacity_tokens
        if capacity is None:
            return True
        reserved = sum(self._reservation(r) for r in self.running)
        return reserved + self._reservation(request) <= capacity

    def _reservation(self, request: Sequence) -> int:
        return self.config.kv_reservation(len(request.prompt), request.max_tokens)

    def _finish(self, request: Sequence, reason: FinishReason) -> None:
        request.finish_reason = reason
        if request in self.running:
            self.running.remove(request)
        else:
            self.waiting.remove(request)
        del self._by_id[request.id]
        del self._order[request.id]


def _ready(request: Sequence, adapters: Container[str] | None) -> bool:
    """Its adapter (if any) can take new requests."""
    return request.adapter is None or adapters is None or request.adapter in adapters
