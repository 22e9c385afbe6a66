"""The batching policy alone: plain data in, plain data out."""

import pytest

from moe_runtime.engine.blocks import BlockManager
from moe_runtime.engine.scheduler import FinishReason, Policy, QueueFull, Scheduler, SchedulerConfig
from moe_runtime.engine.sequence import Sequence
from tests.unit.runtime.helpers import sequence


def request(rid: str, prompt_len: int, arrival: float = 0.0, max_tokens: int = 4, **kw) -> Sequence:
    return sequence(rid, list(range(1, prompt_len + 1)), max_tokens, arrival=arrival, **kw)


def run_step(scheduler: Scheduler, now: float = 0.0, token: int = 7):
    step = scheduler.schedule(now)
    finished = scheduler.complete(step, [token if w.samples else None for w in step.work])
    return step, finished


def plan(step) -> dict[str, int]:
    return {w.seq.id: len(w.tokens) for w in step.work}


def test_prompt_fits_in_one_step_then_decodes_one_token_per_step():
    s = Scheduler(SchedulerConfig())
    s.add(request("a", 5))
    step, _ = run_step(s)
    assert plan(step) == {"a": 5} and step.work[0].samples
    step, _ = run_step(s, token=8)
    assert step.work[0].tokens == [7]  # feeds back the token sampled last step
    assert s.running[0].output == [7, 8]


def test_long_prompt_is_prefilled_in_chunks_that_sample_only_at_the_end():
    s = Scheduler(SchedulerConfig(prefill_chunk=4, token_budget=100))
    s.add(request("long", 10))
    chunks = []
    while not s.running or s.running[0].is_prefilling:
        step, _ = run_step(s)
        chunks.append((step.work[0].tokens, step.work[0].samples))
    assert chunks == [([1, 2, 3, 4], False), ([5, 6, 7, 8], False), ([9, 10], True)]


def test_decodes_always_run_and_prefill_gets_only_the_remaining_budget():
    s = Scheduler(SchedulerConfig(token_budget=8, max_running=4, prefill_chunk=100))
    for rid in "abc":
        s.add(request(rid, 1, max_tokens=50))
    run_step(s)  # all three prefilled (3 tokens) and now decoding
    s.add(request("long", 30, max_tokens=50))
    step, _ = run_step(s)
    assert plan(step) == {"a": 1, "b": 1, "c": 1, "long": 5}
    assert step.num_tokens == 8


def test_length_aware_prefills_a_short_prompt_before_an_earlier_long_one():
    s = Scheduler(
        SchedulerConfig(max_running=4, token_budget=10, prefill_chunk=10, policy=Policy.LENGTH_AWARE)
    )
    s.add(request("long", 100, arrival=0.0))
    s.add(request("short", 3, arrival=0.1))
    step = s.schedule(now=0.2)
    assert plan(step) == {"short": 3, "long": 7}


def test_fcfs_serves_arrival_order_even_when_the_first_prompt_is_long():
    s = Scheduler(SchedulerConfig(max_running=4, token_budget=10, prefill_chunk=10, policy=Policy.FCFS))
    s.add(request("long", 100, arrival=0.0))
    s.add(request("short", 3, arrival=0.1))
    assert plan(s.schedule(now=0.2)) == {"long": 10}


def test_aging_lets_a_long_waiting_prompt_overtake_fresh_short_ones():
    def first_prefill(now: float) -> str:
        s = Scheduler(
            SchedulerConfig(max_running=4, token_budget=4, prefill_chunk=4, aging_tokens_per_s=10.0)
        )
        s.add(request("long", 50, arrival=0.0))
        s.add(request("short", 4, arrival=now))
        return s.schedule(now).work[0].seq.id

    assert first_prefill(now=1.0) == "short"  # 50 - 10 > 4
    assert first_prefill(now=9.0) == "long"  # 50 - 90 < 4


def test_queue_is_bounded():
    s = Scheduler(SchedulerConfig(max_queue=2))
    s.add(request("a", 1))
    s.add(request("b", 1))
    with pytest.raises(QueueFull):
        s.add(request("c", 1))


def test_admission_is_limited_by_running_sequences():
    s = Scheduler(SchedulerConfig(max_running=2, token_budget=100))
    for rid in "abc":
        s.add(request(rid, 2))
    step, _ = run_step(s)
    assert plan(step) == {"a": 2, "b": 2}
    assert [r.id for r in s.waiting] == ["c"]


def test_requests_join_between_steps():
    s = Scheduler(SchedulerConfig(max_running=4))
    s.add(request("a", 2, max_tokens=10))
    run_step(s)
    s.add(request("b", 2))
    step, _ = run_step(s)
    assert plan(step) == {"a": 1, "b": 2}


def test_cancelled_requests_are_dropped_waiting_or_running():
    s = Scheduler(SchedulerConfig(max_running=1))
    s.add(request("running", 2, max_tokens=10))
    s.add(request("waiting", 2))
    run_step(s)
    s.cancel("running")
    s.cancel("waiting")
    s.cancel("unknown")
    step = s.schedule(0.0)
    assert step.work == []
    assert {r.id: r.finish_reason for r in step.dropped} == {
        "running": FinishReason.CANCELLED,
        "waiting": FinishReason.CANCELLED,
    }
    assert s.idle


def test_requests_past_their_deadline_time_out():
    s = Scheduler(SchedulerConfig(max_running=1))
    s.add(request("a", 2, max_tokens=10, deadline=5.0))
    s.add(request("b", 2, deadline=5.0))
    run_step(s, now=1.0)
    step = s.schedule(now=5.0)
    assert {r.id: r.finish_reason for r in step.dropped} == {
        "a": FinishReason.TIMEOUT,
        "b": FinishReason.TIMEOUT,
    }


def test_stop_token_finishes_without_entering_the_output():
    s = Scheduler(SchedulerConfig())
    s.add(request("a", 2, stop_token_ids=frozenset({0})))
    run_step(s, token=5)
    _, finished = run_step(s, token=0)
    assert finished[0].finish_reason is FinishReason.STOP and finished[0].output == [5]
    assert finished[0].stop_token_id == 0
    assert s.idle


def test_the_requests_of_one_call_are_queued_all_or_none():
    s = Scheduler(SchedulerConfig(max_queue=3))
    s.add(request("a", 2))
    with pytest.raises(QueueFull):
        s.add_all([request("b", 2), request("c", 2), request("d", 2)])
    assert [r.id for r in s.waiting] == ["a"]
    s.add_all([request("b", 2), request("c", 2)])
    assert [r.id for r in s.waiting] == ["a", "b", "c"]


def test_max_tokens_finishes_with_length():
    s = Scheduler(SchedulerConfig())
    s.add(request("a", 2, max_tokens=2))
    run_step(s)
    _, finished = run_step(s)
    assert finished[0].finish_reason is FinishReason.LENGTH and len(finished[0].output) == 2


def test_engine_failure_fails_the_step_requests_only():
    s = Scheduler(SchedulerConfig(max_running=1))
    s.add(request("a", 2))
    s.add(request("b", 2))
    step = s.schedule(0.0)
    assert [r.id for r in s.fail([w.seq for w in step.work])] == ["a"]
    assert [r.id for r in s.waiting] == ["b"]


def test_a_request_failed_during_a_step_is_skipped_when_the_step_completes():
    s = Scheduler(SchedulerConfig())
    s.add(request("bad", 2))
    s.add(request("good", 2, max_tokens=1))
    step = s.schedule(0.0)
    s.fail([step.work[0].seq])
    assert [r.id for r in s.complete(step, [None, 5])] == ["good"]
    assert s.idle


def test_kv_capacity_reserves_prompt_plus_max_tokens_and_does_not_skip_the_head():
    s = Scheduler(SchedulerConfig(kv_capacity_tokens=20, policy=Policy.FCFS))
    s.add(request("a", 8, max_tokens=4))  # 12
    s.add(request("b", 6, max_tokens=4))  # 10: does not fit beside a
    s.add(request("c", 2, max_tokens=2))  # 4: would fit, but must not overtake b
    step = s.schedule(0.0)
    assert plan(step) == {"a": 8}


def test_windowed_kv_reservation_is_capped_per_sequence():
    s = Scheduler(SchedulerConfig(kv_capacity_tokens=20, kv_tokens_per_sequence=10))
    s.add(request("a", 30, max_tokens=10))
    s.add(request("b", 30, max_tokens=10))
    s.schedule(0.0)
    assert len(s.running) == 2


@pytest.mark.parametrize(
    "bad",
    [{"max_queue": 0}, {"max_running": 0}, {"token_budget": 4, "max_running": 8}, {"aging_tokens_per_s": -1}],
)
def test_config_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        SchedulerConfig(**bad)


def test_a_request_that_could_never_fit_the_kv_cache_is_refused_at_add():
    s = Scheduler(SchedulerConfig(kv_capacity_tokens=20))
    with pytest.raises(ValueError, match="KV cache"):
        s.add(request("huge", 18, max_tokens=4))


def test_back_off_halves_the_step_and_requeued_requests_prefill_what_they_generated():
    s = Scheduler(SchedulerConfig(max_running=4, token_budget=16, prefill_chunk=16))
    for rid in "abcd":
        s.add(request(rid, 3, max_tokens=10))
    run_step(s, token=7)
    step = s.schedule(0.0)  # four decodes
    assert s.back_off(step)
    assert (s.max_running, s.token_budget) == (2, 2)
    s.requeue([w.seq for w in step.work])
    assert not s.running and len(s.waiting) == 4
    step, _ = run_step(s, token=8)
    # 2 tokens of budget for the prompt plus output [1, 2, 3, 7]
    assert [w.tokens for w in step.work] == [[1, 2]]
    step, _ = run_step(s, token=8)
    assert [(w.tokens, w.samples) for w in step.work] == [([3, 7], True)]
    a = s.running[0]
    assert a.output == [7, 8] and not a.is_prefilling
    step, _ = run_step(s, token=9)
    assert plan(step) == {"a": 1, "b": 1}  # a decodes, b starts again


def test_a_requeued_request_reports_the_prompt_tokens_its_last_admission_found_cached():
    """Requeued, a request prefills its prompt and its output again, and the prefix cache may hold both (its own
    blocks, given back): usage's cached prompt tokens are what its last admission found, at most the prompt."""
    kv = BlockManager(16, 4)
    s = Scheduler(SchedulerConfig(), kv)
    a = request("a", 6, max_tokens=10)
    s.add(a)
    for token in (7, 8, 9):
        run_step(s, token=token)
    assert a.output == [7, 8, 9] and a.cached_prompt_tokens == 0
    kv.grow(a, 9)  # what the engine's forward passes wrote and committed, then gave back at the requeue
    kv.commit(a, [1, 2, 3, 4, 5, 6, 7, 8, 9])
    kv.free(a)
    s.requeue([a])
    s.schedule(0.0)
    assert a.cached_tokens == 8 and a.cached_prompt_tokens == 6


def test_the_smallest_step_cannot_back_off_and_limits_recover_after_good_steps():
    from moe_runtime.engine.scheduler import RECOVERY_STEPS

    s = Scheduler(SchedulerConfig(max_running=4, token_budget=8))
    s.add(request("a", 1, max_tokens=10**6))
    step = s.schedule(0.0)
    assert not s.back_off(step)
    s.add(request("b", 1, max_tokens=10**6))
    step = s.schedule(0.0)
    assert s.back_off(step) and s.max_running == 1
    for _ in range(RECOVERY_STEPS):
        run_step(s)
    assert (s.max_running, s.token_budget) == (2, 2)


def test_a_request_whose_adapter_is_not_in_memory_is_passed_over_without_holding_up_the_others():
    s = Scheduler(SchedulerConfig(policy=Policy.FCFS))
    s.add(request("lora", 3, arrival=0, adapter="sql"))
    s.add(request("base", 3, arrival=1))
    s.add(request("other", 3, arrival=2, adapter="chat"))
    step = s.schedule(0, adapters={"chat"})
    assert plan(step) == {"base": 3, "other": 3} and [r.id for r in s.waiting] == ["lora"]
    step = s.schedule(1, adapters={"chat", "sql"})
    assert "lora" in plan(step)


def test_static_batching_runs_a_batch_to_its_end_before_the_next_starts():
    s = Scheduler(SchedulerConfig(max_running=3, token_budget=8, prefill_chunk=4, policy=Policy.STATIC))
    for rid, length, tokens in (("a", 6, 2), ("b", 5, 5), ("c", 1, 1), ("d", 1, 1)):
        s.add(request(rid, length, max_tokens=tokens, arrival=0.0))
    step, _ = run_step(s)
    assert {r.id for r in s.running} == {"a", "b", "c"}  # the first 3 form the batch, even if not all prefill
    assert plan(step) == {"a": 4, "b": 4}
    s.add(request("e", 1, max_tokens=1, arrival=0.1))
    ends = []
    for _ in range(10):
        step, finished = run_step(s)
        ends += [r.id for r in finished]
        if s.running:
            assert {w.seq.id for w in step.work} <= {"a", "b", "c"}  # nobody joins a running batch
        if not s.running:
            break
    assert sorted(ends) == ["a", "b", "c"]
    step, _ = run_step(s)
    assert set(plan(step)) == {"d", "e"}  # then the next batch: what waited, in arrival order
