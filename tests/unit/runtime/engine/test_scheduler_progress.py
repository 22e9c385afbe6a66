"""The scheduler's promises over random configs and workloads: every request ends, no step is empty while a
request is admitted, and a waiting request is overtaken only as far as the aging bound allows."""

import random
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from moe_runtime.engine.scheduler import FinishReason, Policy, Scheduler, SchedulerConfig
from moe_runtime.engine.sequence import Sequence
from tests.unit.runtime.helpers import sequence

TICK_S = 0.25  # one step of simulated time (a power of two: priority keys compare exactly)
STOP_TOKEN = 0


@dataclass
class Arrival:
    step: int
    prompt_len: int
    max_tokens: int
    cancel_after: int | None  # steps after arrival; None: never cancelled


@st.composite
def configs(draw) -> SchedulerConfig:
    max_running = draw(st.integers(1, 6))
    return SchedulerConfig(
        max_queue=10_000,
        max_running=max_running,
        token_budget=draw(st.integers(max_running, max_running + 40)),
        prefill_chunk=draw(st.integers(1, 48)),
        policy=draw(st.sampled_from(Policy)),
        aging_tokens_per_s=draw(st.sampled_from([0.0, 0.5, 4.0, 64.0])),
        kv_capacity_tokens=draw(st.one_of(st.none(), st.integers(0, 200))),  # added to the largest need
        kv_tokens_per_sequence=draw(st.one_of(st.none(), st.integers(8, 64))),
    )


arrivals = st.lists(
    st.builds(
        Arrival,
        step=st.integers(0, 30),
        prompt_len=st.integers(1, 60),
        max_tokens=st.integers(1, 8),
        cancel_after=st.one_of(st.none(), st.integers(0, 40)),
    ),
    min_size=1,
    max_size=12,
)


def fitting(config: SchedulerConfig, workload: list[Arrival]) -> SchedulerConfig:
    """The config with its KV capacity raised so that every request fits alone (the server refuses the
    others with a 400 before they reach the scheduler)."""
    if config.kv_capacity_tokens is None:
        return config
    need = max(config.kv_reservation(a.prompt_len, a.max_tokens) for a in workload)
    return SchedulerConfig(**{**config.__dict__, "kv_capacity_tokens": need + config.kv_capacity_tokens})


@dataclass
class Trace:
    request: Sequence
    arrival_step: int
    admitted_step: int | None = None
    ended_step: int | None = None


def simulate(config: SchedulerConfig, workload: list[Arrival], seed: int) -> list[Trace]:
    """Runs the workload to the end, checking after every schedule that the step is not empty while the
    scheduler holds a request. Sampled tokens are random; some are the stop token."""
    rng = random.Random(seed)
    scheduler = Scheduler(config)
    traces = [
        Trace(sequence(f"r{i}", [1] * a.prompt_len, a.max_tokens, arrival=a.step * TICK_S,
                       stop_token_ids=(STOP_TOKEN,)), a.step)
        for i, a in enumerate(workload)
    ]  # fmt: skip
    by_id = {t.request.id: t for t in traces}
    # every step feeds at least one token of some request, so the work bounds the number of steps
    work = sum(a.prompt_len + a.max_tokens for a in workload)
    last_step = max(a.step for a in workload) + work + 1
    for step_no in range(last_step + 1):
        now = step_no * TICK_S
        for trace, arrival in zip(traces, workload, strict=True):
            if arrival.step == step_no:
                scheduler.add(trace.request)
            if arrival.cancel_after is not None and step_no == arrival.step + arrival.cancel_after:
                scheduler.cancel(trace.request.id)
        step = scheduler.schedule(now)
        for request in scheduler.running:
            if by_id[request.id].admitted_step is None:
                by_id[request.id].admitted_step = step_no
        assert step.work or scheduler.idle, f"empty step {step_no} while holding {scheduler.running}"
        tokens = [rng.choice([STOP_TOKEN, 5, 6, 7]) if w.samples else None for w in step.work]
        for request in [*step.dropped, *scheduler.complete(step, tokens)]:
            by_id[request.id].ended_step = step_no
        if scheduler.idle and step_no > max(a.step for a in workload):
            return traces
    raise AssertionError(f"requests still pending after {last_step} steps: {scheduler.running}")


@settings(max_examples=150, deadline=None)
@given(config=configs(), workload=arrivals, seed=st.integers(0, 2**16))
def test_every_request_ends_and_no_step_is_empty_while_a_request_is_held(config, workload, seed):
    traces = simulate(fitting(config, workload), workload, seed)
    for trace in traces:
        assert trace.ended_step is not None
        reason = trace.request.finish_reason
        assert reason in (FinishReason.STOP, FinishReason.LENGTH, FinishReason.CANCELLED)
        if reason is not FinishReason.CANCELLED:
            assert trace.admitted_step is not None


@settings(max_examples=150, deadline=None)
@given(config=configs(), workload=arrivals, seed=st.integers(0, 2**16))
def test_a_waiting_request_is_overtaken_only_within_the_aging_bound(config, workload, seed):
    """The docstring's bound: while Q waits, a later arrival R is admitted before Q only under length_aware,
    and only if len(R) + aging * arrival(R) < len(Q) + aging * arrival(Q), that is, only if R arrived less
    than (len(Q) - len(R)) / aging seconds after Q."""
    config = fitting(config, workload)
    traces = simulate(config, workload, seed)
    aging = config.aging_tokens_per_s
    in_arrival_order = sorted(traces, key=lambda t: t.arrival_step)  # stable: same step, order of adding
    for position, q in enumerate(in_arrival_order):
        for r in in_arrival_order[position + 1 :]:
            if r.admitted_step is None:
                continue
            q_waiting = q.admitted_step is None or r.admitted_step < q.admitted_step
            if not q_waiting or (q.ended_step is not None and q.ended_step <= r.admitted_step):
                continue
            assert config.policy is Policy.LENGTH_AWARE, "fcfs admitted a later arrival first"
            q_key = len(q.request.prompt) + aging * q.request.arrival
            r_key = len(r.request.prompt) + aging * r.request.arrival
            assert r_key < q_key, (q, r)


def test_a_waiting_request_that_cannot_start_does_not_stall_the_running_prefills():
    for policy in Policy:
        s = Scheduler(SchedulerConfig(max_running=2, token_budget=512, prefill_chunk=256, policy=policy))
        s.add(sequence("long-1", [1] * 3000, 8, arrival=0.0))
        s.add(sequence("long-2", [1] * 3000, 8, arrival=0.0))
        s.schedule(0.0)
        s.add(sequence("short", [1] * 10, 8, arrival=0.1))
        step = s.schedule(0.2)
        assert step.num_tokens == 512, policy
        assert {w.seq.id for w in step.work} <= {"long-1", "long-2"}
