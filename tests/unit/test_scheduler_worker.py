"""The engine thread against a fake engine that honours the engine contract: batching, cancellation,
failures and timeouts as the asyncio side sees them."""

import asyncio

import pytest
import torch

from moe_runtime.metrics import RuntimeMetrics
from moe_runtime.sampling import SamplingParams
from moe_runtime.scheduler import FinishReason, QueueFull, SchedulerConfig
from moe_runtime.worker import EngineWorker, Finished, Tokens

VOCAB = 50


class FakeSequence:
    def __init__(self) -> None:
        self.tokens: list[int] = []


def next_token(tokens: list[int]) -> int:
    return (sum(tokens) * 7 + len(tokens)) % VOCAB


class FakeEngine:
    """Greedy next token is a function of the whole sequence, so batching mistakes change outputs."""

    device = torch.device("cpu")
    max_context = 256

    def __init__(self, fail_when_batch_has: int | None = None) -> None:
        self.live: set[FakeSequence] = set()
        self.batch_sizes: list[int] = []
        self.fail_when_batch_has = fail_when_batch_has

    def new_sequence(self) -> FakeSequence:
        sequence = FakeSequence()
        self.live.add(sequence)
        return sequence

    def forward(self, batch):
        self.batch_sizes.append(len(batch))
        rows = []
        for sequence, tokens in batch:
            if self.fail_when_batch_has in tokens:
                raise RuntimeError("boom")
            sequence.tokens += tokens
            rows.append(torch.nn.functional.one_hot(torch.tensor(next_token(sequence.tokens)), VOCAB).float())
        return torch.stack(rows)

    def release(self, sequence: FakeSequence) -> None:
        self.live.remove(sequence)

    def kv_cache_usage(self) -> float:
        return sum(len(s.tokens) for s in self.live) / 10_000

    def take_expert_token_counts(self) -> torch.Tensor:
        return torch.ones(2, 3, dtype=torch.int64)


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


def run_with_worker(engine, config, body):
    async def main():
        worker = EngineWorker(engine, config, RuntimeMetrics(), asyncio.get_running_loop())
        worker.start()
        try:
            return await asyncio.wait_for(body(worker), timeout=30)
        finally:
            worker.stop()

    return asyncio.run(main())


def test_concurrent_requests_are_batched_and_each_gets_its_own_greedy_output():
    engine = FakeEngine()
    prompts = [[i + 1] * (1 + 5 * i) for i in range(8)]

    async def body(worker):
        streams = [worker.submit(p, SamplingParams(max_tokens=6), None) for p in prompts]
        return await asyncio.gather(*(collect(s) for s in streams))

    results = run_with_worker(engine, SchedulerConfig(prefill_chunk=8, token_budget=64), body)
    for prompt, (ids, finished) in zip(prompts, results, strict=True):
        assert ids == expected_output(prompt, 6)
        assert finished == Finished(FinishReason.LENGTH, len(prompt), 6)
    assert max(engine.batch_sizes) == len(prompts)
    assert not engine.live  # every cache released


def test_cancel_drops_the_request_and_releases_its_cache():
    engine = FakeEngine()

    async def body(worker):
        stream = worker.submit([1, 2, 3], SamplingParams(max_tokens=200), None)
        async for event in stream:
            if isinstance(event, Tokens):
                stream.cancel()
            else:
                return event

    assert run_with_worker(engine, SchedulerConfig(), body).reason is FinishReason.CANCELLED
    assert not engine.live


def test_engine_failure_ends_the_step_requests_with_an_error_and_the_worker_goes_on():
    engine = FakeEngine(fail_when_batch_has=13)

    async def body(worker):
        failed = await collect(worker.submit([13], SamplingParams(max_tokens=3), None))
        fine = await collect(worker.submit([1], SamplingParams(max_tokens=3), None))
        return failed, fine

    (_, failed), (ids, fine) = run_with_worker(engine, SchedulerConfig(), body)
    assert failed.reason is FinishReason.ERROR
    assert fine.reason is FinishReason.LENGTH and ids == expected_output([1], 3)


def test_requests_time_out():
    async def body(worker):
        return await collect(worker.submit([1], SamplingParams(max_tokens=10**6), timeout_s=0.2))

    _, finished = run_with_worker(FakeEngine(), SchedulerConfig(), body)
    assert finished.reason is FinishReason.TIMEOUT


def test_full_queue_refuses_at_submit():
    async def body(worker):
        running = worker.submit([1], SamplingParams(max_tokens=10**6), None)
        await anext(aiter(running))  # admitted: the only running slot is taken
        waiting = worker.submit([1], SamplingParams(), None)
        with pytest.raises(QueueFull):
            worker.submit([1], SamplingParams(), None)
        running.cancel()
        waiting.cancel()

    run_with_worker(FakeEngine(), SchedulerConfig(max_queue=1, max_running=1), body)


def test_stop_tokens_end_generation_without_being_emitted():
    prompt = [4, 4]
    stop = expected_output(prompt, 3)[2]

    async def body(worker):
        return await collect(
            worker.submit(prompt, SamplingParams(max_tokens=10, stop_token_ids=(stop,)), None)
        )

    ids, finished = run_with_worker(FakeEngine(), SchedulerConfig(), body)
    assert ids == expected_output(prompt, 2) and finished.reason is FinishReason.STOP


def test_a_request_whose_sampling_fails_does_not_fail_its_batch_mates(monkeypatch):
    import moe_runtime.worker as worker_module

    real_sample_next = worker_module.sample_next

    def sample_next(logits, params, generators):
        if any(p.seed == 666 for p in params):
            raise RuntimeError("bad parameters")
        return real_sample_next(logits, params, generators)

    monkeypatch.setattr(worker_module, "sample_next", sample_next)

    async def body(worker):
        bad = worker.submit([3], SamplingParams(max_tokens=3, seed=666), None)
        good = worker.submit([3], SamplingParams(max_tokens=3), None)
        return await asyncio.gather(collect(bad), collect(good))

    (_, bad), (ids, good) = run_with_worker(FakeEngine(), SchedulerConfig(), body)
    assert bad.reason is FinishReason.ERROR
    assert good.reason is FinishReason.LENGTH and ids == expected_output([3], 3)
