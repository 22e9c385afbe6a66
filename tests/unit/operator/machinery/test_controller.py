"""The workers: one stuck object holds up no other; failures back off; requeues happen."""

import threading

from moe_operator.decisions.status import Problem
from moe_operator.io.children import WriteRefused
from moe_operator.io.metrics import OperatorMetrics
from moe_operator.machinery.controller import Controller
from moe_operator.machinery.errors import StaleRead
from moe_operator.machinery.workqueue import WorkQueue
from moe_operator.reconcile.reconciler import Result
from tests.waiting import wait_for


class Reconciler:
    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.passes = []
        self.lock = threading.Lock()

    def reconcile(self, namespace, name):
        with self.lock:
            self.passes.append(name)
        return self.behaviour(name)


def run(behaviour, keys, workers=2, queue=None):
    queue = queue if queue is not None else WorkQueue(base_delay=0.05, max_delay=0.2)
    reconciler = Reconciler(behaviour)
    controller = Controller(reconciler, queue, workers, OperatorMetrics())
    controller.start()
    for key in keys:
        queue.add(("ns", key))
    return controller, reconciler, queue


def test_a_hung_object_does_not_stall_the_others():
    release = threading.Event()

    def behaviour(name):
        if name == "hung":
            release.wait(30)  # an API call stuck until its timeout
        return Result()

    names = ["hung", *(f"md-{i}" for i in range(20))]
    controller, reconciler, _ = run(behaviour, names)
    try:
        wait_for(
            lambda: set(names[1:]) <= set(reconciler.passes), timeout=20, interval=0.01, what="the others"
        )
        assert "hung" in reconciler.passes
    finally:
        release.set()
        controller.stop()


def test_failures_back_off_stale_reads_retry_and_requeues_come_back():
    counts = {}

    def behaviour(name):
        counts[name] = counts.get(name, 0) + 1
        if name == "broken":
            raise RuntimeError("API server unavailable")
        if name == "refused":
            raise WriteRefused(Problem("ApplyFailed", "403 forbidden by quota"))
        if name == "stale" and counts[name] == 1:
            raise StaleRead("changed since read")
        if name == "periodic":
            return Result(requeue_after=0.05)
        return Result()

    controller, reconciler, _ = run(behaviour, ["broken", "refused", "stale", "periodic", "fine"])
    try:
        wait_for(lambda: counts.get("periodic", 0) >= 4, timeout=20, interval=0.01, what="periodic requeues")
        wait_for(
            lambda: counts.get("broken", 0) >= 3 and counts.get("refused", 0) >= 3, timeout=20, interval=0.01
        )
        wait_for(lambda: counts.get("stale") == 2, timeout=20, interval=0.01, what="the stale read's retry")
        assert counts["fine"] == 1
    finally:
        controller.stop()


def test_a_key_is_never_reconciled_by_two_workers_at_once():
    inside, overlaps = set(), []
    lock = threading.Lock()

    def behaviour(name):
        with lock:
            if name in inside:
                overlaps.append(name)
            inside.add(name)
        threading.Event().wait(0.002)
        with lock:
            inside.discard(name)
        return Result()

    queue = WorkQueue()
    controller, reconciler, _ = run(behaviour, [], workers=4, queue=queue)
    try:
        for i in range(300):
            queue.add(("ns", f"k{i % 3}"))
        wait_for(lambda: len(queue) == 0 and not inside, timeout=20, interval=0.01)
    finally:
        controller.stop()
    assert overlaps == []
