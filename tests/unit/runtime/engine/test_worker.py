"""The engine thread against a fake engine that honours the engine contract: batching, cancellation,
failures and timeouts as the asyncio side sees them."""

import asyncio

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_runtime.engine.sampling import SamplingParams
from moe_runtime.engine.scheduler import FinishReason, QueueFull, SchedulerConfig
from moe_runtime.engine.sequence import Sequence
from moe_runtime.engine.streams import PromptLogprobs
from moe_runtime.engine.worker import EngineFailed, Finished, Tokens, unscored_span
from moe_runtime.metrics import RuntimeMetrics
from tests.unit.runtime.engine.fake_engine import (
    FakeEngine,
    collect,
    expected_output,
    next_token,
    next_token_logits,
    run_with_worker,
)


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


def test_a_stop_token_ends_generation_and_comes_last_flagged_and_counted_as_vllm_counts_it():
    prompt = [4, 4]
    stop = expected_output(prompt, 3)[2]

    async def body(worker):
        stream = worker.submit(prompt, SamplingParams(max_tokens=10, stop_token_ids=(stop,)), None)
        events = []
        async for event in stream:
            events.append(event)
        return events

    events = run_with_worker(FakeEngine(), SchedulerConfig(), body)
    *tokens, finished = events
    assert [t.ids[0] for t in tokens] == expected_output(prompt, 3)
    assert [t.stop for t in tokens] == [False, False, True]
    assert finished == Finished(FinishReason.STOP, len(prompt), 3)


def test_a_request_whose_sampling_fails_does_not_fail_its_batch_mates(monkeypatch):
    import moe_runtime.engine.worker as worker_module

    real_sample_next = worker_module.sample_next

    def sample_next(logits, params, generators, *history):
        if any(p.seed == 666 for p in params):
            raise RuntimeError("bad parameters")
        return real_sample_next(logits, params, generators, *history)

    monkeypatch.setattr(worker_module, "sample_next", sample_next)

    async def body(worker):
        bad = worker.submit([3], SamplingParams(max_tokens=3, seed=666), None)
        good = worker.submit([3], SamplingParams(max_tokens=3), None)
        return await asyncio.gather(collect(bad), collect(good))

    (_, bad), (ids, good) = run_with_worker(FakeEngine(), SchedulerConfig(), body)
    assert bad.reason is FinishReason.ERROR
    assert good.reason is FinishReason.LENGTH and ids == expected_output([3], 3)


def test_a_failure_outside_the_guarded_step_fails_every_open_request_and_the_worker_refuses_more(caplog):
    engine = FakeEngine(release_fails=True)

    async def body(worker):
        short = worker.submit([1], SamplingParams(max_tokens=1), None)  # its release() raises
        long = worker.submit([2], SamplingParams(max_tokens=10**6), None)
        waiting = worker.submit([3], SamplingParams(max_tokens=1), None)
        results = await asyncio.gather(collect(short), collect(long), collect(waiting))
        with pytest.raises(EngineFailed):
            worker.submit([4], SamplingParams(), None)
        assert worker.idle  # a drain does not wait for requests that can never finish
        return results, worker.failure

    results, failure = run_with_worker(engine, SchedulerConfig(max_running=2), body)
    assert [finished.reason for _, finished in results] == [FinishReason.ERROR] * 3
    assert "illegal memory access" in str(failure)
    assert "engine loop failed" in caplog.text and "Traceback" in caplog.text


def test_out_of_memory_pushes_back_and_every_request_completes_with_its_own_output():
    engine = FakeEngine(oom_above=2)  # a step of more than 2 sequences fails half way through
    prompts = [[i + 1] * (1 + 3 * i) for i in range(8)]

    async def body(worker):
        streams = [worker.submit(p, SamplingParams(max_tokens=5), None) for p in prompts]
        return await asyncio.gather(*(collect(s) for s in streams))

    results = run_with_worker(engine, SchedulerConfig(max_running=8, prefill_chunk=4, token_budget=32), body)
    for prompt, (ids, finished) in zip(prompts, results, strict=True):
        assert finished == Finished(FinishReason.LENGTH, len(prompt), 5)
        assert ids == expected_output(prompt, 5)
    assert max(engine.batch_sizes) > 2 and not engine.live


def test_every_ending_counts_in_latency_and_the_oldest_open_request_has_an_age():
    metrics = RuntimeMetrics()

    def sample(name: str) -> float:
        return metrics.registry.get_sample_value(name) or 0.0

    async def body(worker):
        assert sample("moe_runtime_oldest_request_age_seconds") == 0
        timed_out = worker.submit([1], SamplingParams(max_tokens=10**6), timeout_s=0.3)
        cancelled = worker.submit([2], SamplingParams(max_tokens=10**6), None)
        events = aiter(cancelled)
        await anext(events)
        await anext(events)  # two tokens, so that it counts in the time per output token however soon it ends
        assert sample("moe_runtime_oldest_request_age_seconds") > 0
        cancelled.cancel()
        return await collect(timed_out), await collect(cancelled)

    (_, timed_out), (_, cancelled) = run_with_worker(FakeEngine(), SchedulerConfig(), body, metrics)
    assert (timed_out.reason, cancelled.reason) == (FinishReason.TIMEOUT, FinishReason.CANCELLED)
    assert sample("moe_runtime_request_latency_seconds_count") == 2
    assert sample("moe_runtime_time_per_output_token_seconds_count") == 2
    fast = metrics.registry.get_sample_value("moe_runtime_request_latency_seconds_bucket", {"le": "0.2"})
    assert fast < 2  # the timed out one took 0.3 s or more
    assert sample("moe_runtime_oldest_request_age_seconds") == 0


async def events_of(stream) -> list:
    events = []
    async for event in stream:
        events.append(event)
    return events


def test_prompt_logprobs_come_once_per_prompt_token_in_order_through_chunks_and_requeues():
    engine = FakeEngine(oom_above=1)  # a step of 2+ sequences fails half way: their prompts prefill again
    prompts = [[i + 2] * (5 + 3 * i) for i in range(3)]
    params = SamplingParams(max_tokens=3, logprobs=1, prompt_logprobs=2)

    async def body(worker):
        streams = [worker.submit(p, params, None) for p in prompts]
        return await asyncio.gather(*(events_of(s) for s in streams))

    results = run_with_worker(engine, SchedulerConfig(max_running=4, prefill_chunk=3, token_budget=16), body)
    for prompt, events in zip(prompts, results, strict=True):
        entries = [e for event in events if isinstance(event, PromptLogprobs) for e in event.entries]
        assert [e.token for e in entries] == prompt[1:]
        for position, entry in enumerate(entries, start=1):
            row = torch.log_softmax(next_token_logits(prompt[:position]), dim=-1)
            assert entry.logprob == pytest.approx(row[prompt[position]].item())
            assert len(entry.top) == 2 and entry.top[0] == (
                next_token(prompt[:position]),
                pytest.approx(row.max().item()),
            )
        tokens = [event for event in events if isinstance(event, Tokens)]
        assert [t.ids[0] for t in tokens] == expected_output(prompt, 3)
        assert all(t.logprobs[0].token == t.ids[0] and len(t.logprobs[0].top) == 1 for t in tokens)
        first_token = next(i for i, e in enumerate(events) if isinstance(e, Tokens))
        assert all(not isinstance(e, PromptLogprobs) for e in events[first_token:])
    assert max(engine.batch_sizes) > 1


def test_the_sequences_of_one_request_are_queued_together_or_not_at_all():
    engine = FakeEngine()

    async def body(worker):
        with pytest.raises(QueueFull):
            worker.submit_all([Sequence([1], SamplingParams(max_tokens=2)) for _ in range(3)], None)
        assert worker.idle  # nothing of it was queued
        streams = worker.submit_all(
            [Sequence([1], SamplingParams(max_tokens=2)), Sequence([2, 3], SamplingParams(max_tokens=2))],
            None,
        )
        return await asyncio.gather(*(collect(s) for s in streams))

    (first, _), (second, _) = run_with_worker(engine, SchedulerConfig(max_queue=2), body)
    assert (first, second) == (expected_output([1], 2), expected_output([2, 3], 2))


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 30), data=st.data())
def test_every_prompt_token_after_the_first_is_scored_once_in_order_however_prefill_is_cut_or_restarted(
    length, data
):
    scored, seen = 1, []
    for _ in range(data.draw(st.integers(1, 4))):  # the first prefill, then requeues that start again at 0
        start, stop_at = 0, data.draw(st.integers(1, length))  # a requeue may come before the prompt is in
        while start < stop_at:
            count = data.draw(st.integers(1, stop_at - start))
            if (span := unscored_span(start, count, length, scored)) is not None:
                seen += range(span[0], span[1] + 1)
                scored = span[1] + 1
            start += count
    while start < length:  # the last prefill runs to the end
        count = data.draw(st.integers(1, length - start))
        if (span := unscored_span(start, count, length, scored)) is not None:
            seen += range(span[0], span[1] + 1)
            scored = span[1] + 1
        start += count
    assert seen == list(range(1, length))
