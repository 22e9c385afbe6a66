"""The work queue's promises, over random interleavings of adds, delays, workers and failures."""

import threading

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from moe_operator.machinery.workqueue import WorkQueue
from tests.waiting import wait_for

KEYS = st.sampled_from(["a", "b", "c"])


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class QueueMachine(RuleBasedStateMachine):
    """Model: which keys are held, and which adds are still owed a pass."""

    def __init__(self):
        super().__init__()
        self.clock = Clock()
        self.queue = WorkQueue(base_delay=1.0, max_delay=8.0, clock=self.clock)
        self.held: set[str] = set()
        self.owed: dict[str, float] = {}  # key -> time by which it must be handed out again

    @rule(key=KEYS)
    def add(self, key):
        self.queue.add(key)
        self.owed[key] = min(self.owed.get(key, float("inf")), self.clock.now)

    @rule(key=KEYS, delay=st.floats(0, 10))
    def add_after(self, key, delay):
        self.queue.add_after(key, delay)
        self.owed[key] = min(self.owed.get(key, float("inf")), self.clock.now + delay)

    @rule()
    def take(self):
        key = self.queue.get(timeout=0)
        if key is None:
            return
        assert key not in self.held, f"{key} handed to two workers at once"
        self.held.add(key)
        if self.owed.get(key, float("inf")) <= self.clock.now:
            del self.owed[key]

    @precondition(lambda self: self.held)
    @rule(data=st.data(), fail=st.booleans())
    def finish(self, data, fail):
        key = data.draw(st.sampled_from(sorted(self.held)))
        if fail:
            delay = self.queue.failed(key)
            assert 1.0 <= delay <= 8.0
            self.owed[key] = min(self.owed.get(key, float("inf")), self.clock.now + delay)
        else:
            self.queue.forget(key)
        self.queue.done(key)
        self.held.discard(key)

    @rule(seconds=st.floats(0, 5))
    def wait(self, seconds):
        self.clock.now += seconds

    @invariant()
    def nothing_owed_is_lost(self):
        """Once every worker is done and the clock has passed every due time, each owed key comes out."""
        if self.held or not self.owed:
            return
        horizon = max(self.owed.values())
        if horizon > self.clock.now:
            return
        seen = set()
        while (key := self.queue.get(timeout=0)) is not None:
            assert key not in seen, f"{key} queued twice"
            seen.add(key)
            self.queue.done(key)
        assert set(self.owed) <= seen, f"lost {set(self.owed) - seen}"
        self.owed.clear()


QueueMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=25, deadline=None)
TestQueue = QueueMachine.TestCase


def test_an_earlier_schedule_wins_and_a_later_one_is_ignored():
    clock = Clock()
    queue = WorkQueue(clock=clock)
    queue.add_after("k", 10)
    queue.add_after("k", 3)
    queue.add_after("k", 20)
    clock.now = 3
    assert queue.get(timeout=0) == "k"
    queue.done("k")
    clock.now = 30
    assert queue.get(timeout=0) is None, "the superseded schedules left nothing behind"


def test_backoff_doubles_up_to_the_cap_and_forget_resets_it():
    queue = WorkQueue(base_delay=1, max_delay=5, clock=Clock())
    assert [queue.failed("k") for _ in range(5)] == [1, 2, 4, 5, 5]
    queue.forget("k")
    assert queue.failed("k") == 1


def test_blocked_workers_wake_on_add_and_on_shutdown():
    queue = WorkQueue()
    got = []
    workers = [threading.Thread(target=lambda: got.append(queue.get(timeout=10))) for _ in range(2)]
    for worker in workers:
        worker.start()
    queue.add("x")
    wait_for(lambda: got, timeout=10, interval=0.01, what="a blocked worker to take the key")
    queue.shutdown()
    for worker in workers:
        worker.join(timeout=10)
    assert sorted(got, key=str) == [None, "x"]
