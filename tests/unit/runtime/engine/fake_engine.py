"""A fake engine that honours the engine contract (greedy next token a function of the whole sequence, so a
batching mistake changes outputs), and running the engine thread against it: shared by the tests of the engine
thread and of what runs on it (adapters, prefix caching)."""

import asyncio

import torch

from moe_runtime.engine.worker import EngineWorker, Finished, Tokens
from moe_runtime.metrics import RuntimeMetrics

VOCAB = 50


def next_token(tokens: list[int]) -> int:
    return (sum(tokens) * 7 + len(tokens)) % VOCAB


class FakeEngine:
    """Greedy next token is a function of the whole sequence, so batching mistakes change outputs."""

    device = torch.device("cpu")
    max_context = 256

    def __init__(
        self,
        fail_when_batch_has: int | None = None,
        oom_above: int | None = None,
        release_fails: bool = False,
    ) -> None:
        self.live: dict[int, list[int]] = {}  # id(sequence) -> the tokens it was fed
        self.batch_sizes: list[int] = []
        self.fail_when_batch_has = fail_when_batch_has
        self.oom_above = oom_above
        self.release_fails = release_fails

    def forward(self, batch, every_position=()):
        self.batch_sizes.append(len(batch))
        rows = []
        for i, (sequence, tokens, *_) in enumerate(batch):
            if self.fail_when_batch_has in tokens:
                raise RuntimeError("boom")
            fed = self.live.setdefault(id(sequence), [])
            start = len(fed)
            fed += tokens
            sequence.length = len(fed)
            if self.oom_above is not None and i == self.oom_above:  # half way, as a real forward pass would
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            flagged = i < len(every_position) and every_position[i]
            for end in range(start + 1, len(fed) + 1) if flagged else [len(fed)]:
                rows.append(next_token_logits(fed[:end]))
        return torch.stack(rows)

    def release(self, sequence) -> None:
        if self.release_fails:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        self.live.pop(id(sequence), None)
        sequence.length = 0

    def kv_cache_usage(self) -> float:
        return sum(len(tokens) for tokens in self.live.values()) / 10_000

    def take_expert_token_counts(self) -> torch.Tensor:
        return torch.ones(2, 3, dtype=torch.int64)


def next_token_logits(tokens: list[int]) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(next_token(tokens)), VOCAB).float()


def expected_output(prompt: list[int], max_tokens: int) -> list[int]:
    tokens, out = list(prompt), []
    for _ in range(max_tokens):
        out.append(next_token(tokens))
        tokens.append(out[-1])
    return out


async def collect(stream) -> tuple[list[int], Finished]:
    ids = []
    async for event in stream:
        if isinstance(event, Tokens):
            ids += event.ids
        else:
            return ids, event
    raise AssertionError("stream ended without Finished")


def run_with_worker(engine, config, body, metrics: RuntimeMetrics | None = None):
    async def main():
        worker = EngineWorker(engine, config, metrics or RuntimeMetrics(), asyncio.get_running_loop())
        worker.start()
        try:
            return await asyncio.wait_for(body(worker), timeout=30)
        finally:
            worker.stop()

    return asyncio.run(main())
