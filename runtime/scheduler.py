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
Admission stops at the first request in that order that does not fit (no free sequence slot or not enough
KV cache left): skipping ahead of it would starve it.

KV cache: each admitted request reserves the most cache it can ever hold (prompt + max_tokens, capped per
sequence for windowed attention), so a running sequence never runs out of room and nothing is preempted.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum


class Policy(StrEnum):
    LENGTH_AWARE = "length_aware"
    FCFS = "fcfs"


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    ERROR = "error"


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
    kv_tokens_per_sequence: int | None = None

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
        need = prompt_tokens + max_tokens
        return need if self.kv_tokens_per_sequence is None else min(need, self.kv_tokens_per_sequence)


@dataclass(eq=False)
class Request:
    id: str
    prompt: list[int]
    max_tokens: int
    arrival: float
    stop_token_ids: frozenset[int] = frozenset()
    deadline: float | None = None
    prefilled: int = 0
    output: list[int] = field(default_factory=list)
    cancelled: bool = False
    finish_reason: FinishReason | None = None

    @property
    def remaining_prompt(self) -> int:
        return len(self.prompt) - self.prefilled

    @property
    def is_prefilling(self) -> bool:
        return self.prefilled < len(self.prompt)


@dataclass(frozen=True)
class Work:
    """One sequence's part of a step: feed `tokens`; when `samples`, the logits of the last give the next token."""

    request: Request
    tokens: list[int]
    samples: bool


@dataclass
class Step:
    work: list[Work]
    dropped: list[Request]

    @property
    def num_tokens(self) -> int:
        return sum(len(w.tokens) for w in self.work)


class Scheduler:
    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self._by_id: dict[str, Request] = {}
        self._arrival_order = itertools.count()
        self._order: dict[str, int] = {}

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def add(self, request: Request) -> None:
        if request.id in self._by_id:
            raise ValueError(f"duplicate request id {request.id}")
        if len(self.waiting) >= self.config.max_queue:
            raise QueueFull
        self.waiting.append(request)
        self._by_id[request.id] = request
        self._order[request.id] = next(self._arrival_order)

    def cancel(self, request_id: str) -> None:
        """Marks a request to be dropped at the next step (no-op when it already finished)."""
        if (request := self._by_id.get(request_id)) is not None:
            request.cancelled = True

    def schedule(self, now: float) -> Step:
        dropped = self._drop_cancelled_and_expired(now)
        work = [Work(r, [r.output[-1]], samples=True) for r in self.running if not r.is_prefilling]
        budget = self.config.token_budget - len(work)
        for request in self._prefill_order(now):
            if budget <= 0:
                break
            if request not in self.running:
                if not self._can_admit(request):
                    break
                self.waiting.remove(request)
                self.running.append(request)
            chunk = min(request.remaining_prompt, self.config.prefill_chunk, budget)
            start = request.prefilled
            work.append(
                Work(
                    request,
                    request.prompt[start : start + chunk],
                    samples=start + chunk == len(request.prompt),
                )
            )
            budget -= chunk
        return Step(work, dropped)

    def complete(self, step: Step, sampled: Sequence[int | None]) -> list[Request]:
        """Records a step's outcome (`sampled[i]` is the token for `step.work[i]` where it samples; requests
        failed meanwhile are skipped); returns the requests that finished."""
        finished = []
        for item, token in zip(step.work, sampled, strict=True):
            request = item.request
            if request.finish_reason is not None:
                continue
            if request.is_prefilling:
                request.prefilled += len(item.tokens)
            if not item.samples:
                continue
            assert token is not None
            if token in request.stop_token_ids:
                self._finish(request, FinishReason.STOP)
            else:
                request.output.append(token)
                if len(request.output) >= request.max_tokens:
                    self._finish(request, FinishReason.LENGTH)
            if request.finish_reason is not None:
                finished.append(request)
        return finished

    def fail(self, requests: Sequence[Request]) -> list[Request]:
        """The engine failed on these requests: they end with an error. Returns those not finished before."""
        failed = [r for r in requests if r.finish_reason is None]
        for request in failed:
            self._finish(request, FinishReason.ERROR)
        return failed

    def _drop_cancelled_and_expired(self, now: float) -> list[Request]:
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

    def _prefill_order(self, now: float) -> list[Request]:
        candidates = [r for r in self.running if r.is_prefilling] + self.waiting
        if self.config.policy is Policy.FCFS:
            return sorted(candidates, key=lambda r: self._order[r.id])
        aging = self.config.aging_tokens_per_s
        return sorted(
            candidates, key=lambda r: (r.remaining_prompt - aging * (now - r.arrival), self._order[r.id])
        )

    def _can_admit(self, request: Request) -> bool:
        if len(self.running) >= self.config.max_running:
            return False
        capacity = self.config.kv_capacity_tokens
        if capacity is None:
            return True
        reserved = sum(self._reservation(r) for r in self.running)
        return reserved + self._reservation(request) <= capacity

    def _reservation(self, request: Request) -> int:
        return self.config.kv_reservation(len(request.prompt), request.max_tokens)

    def _finish(self, request: Request, reason: FinishReason) -> None:
        request.finish_reason = reason
        if request in self.running:
            self.running.remove(request)
        else:
            self.waiting.remove(request)
        del self._by_id[request.id]
        del self._order[request.id]
