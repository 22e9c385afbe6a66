"""One sequence, the object carried from the API to the engine: what a choice asked for (prompt ids, sampling
parameters, adapter), where the scheduler has it, what it generated, the KV cache blocks that hold it, and the
stream its tokens go to.

Threads: the API builds it and hands it to the engine thread (`EngineWorker.submit_all`); from then on only the
engine thread touches it, and the asyncio side reads the `GenerationStream` it was given instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import TYPE_CHECKING

from moe_runtime.engine.blocks import KvState
from moe_runtime.engine.sampling import SamplingParams

if TYPE_CHECKING:
    import torch

    from moe_runtime.engine.streams import GenerationStream


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    ERROR = "error"
    ADAPTER_FAILED = "adapter_failed"  # waited for a LoRA adapter whose load failed


class Sequence(KvState):
    def __init__(
        self,
        prompt: Iterable[int] = (),
        params: SamplingParams | None = None,
        *,
        id: str = "",  # noqa: A002 - the request id, as the scheduler and logs name it
        adapter: str | None = None,
        arrival: float = 0.0,
        deadline: float | None = None,
        window: int | None = None,
    ) -> None:
        super().__init__(adapter=adapter)
        # what was asked
        self.id = id
        self.prompt = list(prompt)
        self.params = params or SamplingParams()
        self.max_tokens = self.params.max_tokens
        self.stop_token_ids = frozenset(self.params.stop_token_ids)
        self.arrival = arrival
        self.deadline = deadline
        # the scheduler's: what the cache must hold before the next token is sampled (the prompt, or after
        # an out-of-memory requeue the prompt and the tokens generated so far) and how much of it is fed
        self.prefill_tokens = self.prompt
        self.prefilled = 0
        self.cached_tokens = 0  # positions the prefix cache held at admission (after a requeue, output too)
        self.output: list[int] = []
        self.cancelled = False
        self.finish_reason: FinishReason | None = None
        self.stop_token_id: int | None = None  # the stop token that ended it (not part of `output`)
        # the engine thread's
        self.generator: torch.Generator | None = None
        self.scored = (
            1  # prompt tokens before this one had their log-probabilities delivered (none the first)
        )
        self.stream: GenerationStream | None = None
        # every layer windowed: the positions it can hold at most (window + sinks); None: all of them
        self.window = window

    def __repr__(self) -> str:
        return f"Sequence({self.id!r}, prompt={len(self.prompt)}, output={len(self.output)}, length={self.length})"

    @property
    def remaining_prompt(self) -> int:
        return len(self.prefill_tokens) - self.prefilled

    @property
    def is_prefilling(self) -> bool:
        return self.prefilled < len(self.prefill_tokens)

    @property
    def starts_prefill(self) -> bool:
        """Its next chunk is the first one it feeds since admission (what the prefix cache held is skipped)."""
        return self.is_prefilling and self.prefilled == self.cached_tokens

    @property
    def cached_prompt_tokens(self) -> int:
        """Prompt tokens its (last) admission found in the prefix cache, as usage reports them. A requeued
        sequence prefills its output too, and the cache may hold some of that: it is not prompt."""
        return min(self.cached_tokens, len(self.prompt))

    @property
    def tokens_held(self) -> int:
        """Positions whose keys and values later tokens still see."""
        return self.length if self.window is None else min(self.length, self.window)
