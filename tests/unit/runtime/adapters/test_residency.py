"""Which LoRA adapters are in memory (adapters/residency.py): plain data in, a plan out; and, with the real
scheduler, that a request for a configured adapter never fails or starves for lack of room."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from moe_runtime.adapters.residency import Demand, Residency, Status
from moe_runtime.engine.scheduler import Scheduler, SchedulerConfig
from tests.unit.runtime.helpers import sequence


def settle(residency: Residency, now: float = 0.0) -> None:
    """Plans without requests until nothing more loads, each load finishing at once (in plan order)."""
    while plan := residency.plan({}, now).load:
        for name, _ in plan:
            residency.loaded(name, now)
            now += 1


def statuses(residency: Residency) -> dict[str, str]:
    return {name: entry.status.value for name, entry in residency.entries.items()}


def test_never_tried_adapters_load_eagerly_into_free_room_and_then_into_idle_room():
    r = Residency(max_resident=2)
    r.configure({"a": "/a", "b": "/b", "c": "/c"})
    plan = r.plan({}, now=0)
    assert plan.load == (("a", "/a"), ("b", "/b")) and not r.all_tried
    r.loaded("a", 1)
    r.loaded("b", 2)
    plan = r.plan({}, now=3)
    assert plan.unload == ("a",) and plan.load == (("c", "/c"),)  # a is the least recently used
    r.loaded("c", 4)
    assert r.all_tried and statuses(r) == {"a": "evicted", "b": "resident", "c": "resident"}
    assert all(e.loaded for e in r.entries.values())


def test_a_waiting_request_brings_its_adapter_back_in_place_of_an_idle_one():
    r = Residency(max_resident=1)
    r.configure({"a": "/a", "b": "/b"})
    settle(r)
    assert statuses(r) == {"a": "evicted", "b": "resident"}
    plan = r.plan({"a": Demand(waiting=2, oldest_waiting=5)}, now=6)
    assert plan.unload == ("b",) and plan.load == (("a", "/a"),) and plan.admissible == frozenset()
    r.loaded("a", 7)
    assert r.plan({"a": Demand(waiting=2)}, now=8).admissible == {"a"}


def test_when_every_resident_adapter_runs_requests_the_lru_one_drains_and_then_makes_room():
    r = Residency(max_resident=2)
    r.configure({"a": "/a", "b": "/b", "c": "/c"})
    settle(r)
    assert statuses(r) == {"a": "evicted", "b": "resident", "c": "resident"}
    r.used(["b"], 10)
    r.used(["c"], 11)
    busy = {
        "b": Demand(running=1, waiting=3),
        "c": Demand(running=1),
        "a": Demand(waiting=1, oldest_waiting=9),
    }
    plan = r.plan(busy, now=12)
    assert plan.load == () and plan.unload == ()
    assert plan.admissible == {"c"}, "b drains: its waiting requests do not start"
    plan = r.plan({**busy, "b": Demand(running=0, waiting=3)}, now=13)
    assert plan.unload == ("b",) and plan.load == (("a", "/a"),)
    assert r.entries["b"].status is Status.EVICTED and r.entries["b"].loaded


def test_an_adapter_whose_requests_only_wait_is_not_evicted_for_another():
    r = Residency(max_resident=1)
    r.configure({"a": "/a", "b": "/b"})
    settle(r)  # b resident, a evicted
    plan = r.plan({"b": Demand(waiting=1, oldest_waiting=2), "a": Demand(waiting=1, oldest_waiting=1)}, now=3)
    assert plan.unload == () and plan.load == () and plan.admissible == {"b"}


def test_a_failed_load_is_retried_with_back_off_and_its_waiting_requests_fail():
    r = Residency(max_resident=1, backoff_initial_s=2, backoff_cap_s=5)
    r.configure({"a": "/a"})
    assert r.plan({"a": Demand(waiting=1)}, now=0).load == (("a", "/a"),)
    r.failed("a", "rank 32 ...", "rank_above_max", now=1)
    entry = r.entries["a"]
    assert (entry.status, entry.tried, entry.servable, entry.loaded) == (Status.FAILED, True, False, False)
    plan = r.plan({"a": Demand(waiting=1)}, now=2)
    assert plan.unservable == {"a"} and plan.load == ()
    retries = []
    for now in range(3, 30):
        if r.plan({}, now).load:
            retries.append(now)
            r.failed("a", "rank 32 ...", "rank_above_max", now)
    assert retries == [3, 7, 12, 17, 22, 27]  # 2, 4, then capped at 5 seconds after each failure
    assert r.plan({"ghost": Demand(waiting=1)}, now=30).unservable == {"ghost"}


def test_a_removed_adapter_serves_its_requests_then_goes():
    r = Residency(max_resident=2)
    r.configure({"a": "/a", "b": "/b"})
    settle(r)
    r.configure({"b": "/b"})
    assert not r.entries["a"].servable
    plan = r.plan({"a": Demand(running=1, waiting=1)}, now=5)
    assert plan.unload == () and "a" in plan.admissible, "accepted requests still run"
    plan = r.plan({}, now=6)
    assert plan.unload == ("a",) and set(r.entries) == {"b"}


def test_a_changed_path_reloads_once_the_running_requests_finish():
    r = Residency(max_resident=1)
    r.configure({"a": "/a1"})
    settle(r)
    r.configure({"a": "/a2"})
    plan = r.plan({"a": Demand(running=1, waiting=1)}, now=1)
    assert plan.admissible == frozenset() and plan.unload == ()
    plan = r.plan({"a": Demand(waiting=1, oldest_waiting=1)}, now=2)
    assert plan.unload == ("a",) and plan.load == (("a", "/a2"),)


def test_a_failure_of_the_old_path_does_not_count_against_the_new_one():
    r = Residency(max_resident=1)
    r.configure({"a": "/a1"})
    r.plan({}, now=0)
    r.configure({"a": "/a2"})
    r.failed("a", "gone", "missing_files", now=1)
    assert r.entries["a"].status is Status.PENDING and r.entries["a"].servable
    assert r.plan({}, now=1).load == (("a", "/a2"),)


# ---- the property: with the real scheduler, every request for a configured adapter finishes ---------------

requests_strategy = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d", None]), st.integers(1, 6), st.integers(1, 4), st.integers(0, 5)
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(
    requests=requests_strategy,
    max_resident=st.integers(1, 4),
    max_running=st.integers(1, 4),
    load_steps=st.integers(0, 3),
)
def test_a_request_for_a_configured_adapter_never_fails_for_lack_of_residency(
    requests, max_resident, max_running, load_steps
):
    """Requests (adapter, prompt length, max tokens, arrival step) for four adapters under a `max_resident`
    bound; loads take `load_steps` steps. Every request finishes by length, and at no time are more adapters
    in memory than the bound, nor does a running request's adapter leave memory."""
    residency = Residency(max_resident)
    residency.configure({name: f"/{name}" for name in "abcd"})
    scheduler = Scheduler(SchedulerConfig(max_running=max_running, token_budget=16))
    in_memory: set[str] = set()
    loading: dict[str, int] = {}  # name -> steps left
    pending = sorted(enumerate(requests), key=lambda item: item[1][3])
    finished: dict[str, str] = {}
    for now in range(2000):
        while pending and pending[0][1][3] <= now:
            i, (adapter, prompt, max_tokens, _) = pending.pop(0)
            scheduler.add(sequence(f"r{i}", [1] * prompt, max_tokens, arrival=now, adapter=adapter))
        for name in [n for n, left in loading.items() if left <= 0]:
            del loading[name]
            in_memory.add(name)
            residency.loaded(name, now)
        demand = {}
        for name in "abcd":
            waiting = [r.arrival for r in scheduler.waiting if r.adapter == name]
            running = sum(r.adapter == name for r in scheduler.running)
            if waiting or running:
                demand[name] = Demand(len(waiting), running, min(waiting, default=float("inf")))
        plan = residency.plan(demand, now)
        assert not plan.unservable
        for name in plan.unload:
            assert not any(r.adapter == name for r in scheduler.running), "evicted under a running request"
            in_memory.discard(name)
        for name, _ in plan.load:
            loading[name] = load_steps
        assert len(in_memory) + len(loading) <= max_resident
        step = scheduler.schedule(now, plan.admissible)
        assert all(w.seq.adapter is None or w.seq.adapter in in_memory for w in step.work)
        done = scheduler.complete(step, [7 if w.samples else None for w in step.work])
        residency.used({w.seq.adapter for w in step.work} - {None}, now)
        finished.update({r.id: r.finish_reason.value for r in done})
        loading = {name: left - 1 for name, left in loading.items()}
        if not pending and scheduler.idle:
            break
    assert finished == {f"r{i}": "length" for i in range(len(requests))}


@settings(max_examples=40, deadline=None)
@given(
    busy=st.lists(st.sampled_from(["a", "b"]), min_size=1, max_size=2, unique=True),
    max_running=st.integers(1, 4),
    max_tokens=st.integers(1, 5),
    arrives=st.integers(0, 10),
)
def test_a_parked_adapter_gets_room_even_while_the_resident_ones_never_stop(
    busy, max_running, max_tokens, arrives
):
    """A steady stream of requests for the resident adapters (a new one every step for each) cannot keep
    the request for adapter c waiting: the busy adapter that drains gives up its room within a bounded time."""
    residency = Residency(max_resident=len(busy))
    residency.configure({"a": "/a", "b": "/b", "c": "/c"})
    scheduler = Scheduler(SchedulerConfig(max_queue=10_000, max_running=max_running, token_budget=16))
    in_memory: set[str] = set()
    for now in range(300):
        for name in busy:
            scheduler.add(sequence(f"{name}{now}", [1, 2], max_tokens, arrival=now, adapter=name))
        if now == arrives:
            scheduler.add(sequence("c", [1, 2], max_tokens, arrival=now, adapter="c"))
        demand = {}
        for name in "abc":
            waiting = [r.arrival for r in scheduler.waiting if r.adapter == name]
            running = sum(r.adapter == name for r in scheduler.running)
            if waiting or running:
                demand[name] = Demand(len(waiting), running, min(waiting, default=float("inf")))
        plan = residency.plan(demand, now)
        in_memory -= set(plan.unload)
        for name, _ in plan.load:  # loads finish at once
            in_memory.add(name)
            residency.loaded(name, now)
        plan = residency.plan(demand, now) if plan.load else plan
        step = scheduler.schedule(now, plan.admissible)
        done = scheduler.complete(step, [7 if w.samples else None for w in step.work])
        residency.used({w.seq.adapter for w in step.work}, now)
        if any(r.id == "c" for r in done):
            return
    raise AssertionError("the request for c never finished")
