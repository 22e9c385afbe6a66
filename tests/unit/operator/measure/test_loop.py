"""The measurement loop: each ModelDeployment's reads as they fall due, off the reconcile pass; a read that
hangs holds up only its own ModelDeployment's next read of that kind."""

from __future__ import annotations

import threading

from moe_operator.decisions.autoscale import RouterDemand
from moe_operator.decisions.measurements import ROUTERS_AT_ZERO_S
from moe_operator.decisions.promdata import PodSamples
from moe_operator.decisions.spec import parse_spec
from moe_operator.measure.loop import Measurer
from moe_operator.measure.store import Measurements
from tests.unit.operator.samples import spec
from tests.waiting import wait_for

AUTOSCALED = {"enabled": True, "intervalSeconds": 2, "metricWindowSeconds": 4}


def model(name: str) -> dict:
    return {"metadata": {"namespace": "ns", "name": name}, "spec": spec(autoscaling=AUTOSCALED), "status": {}}


class HangingPrometheus:
    """Answers every queue read at once, except those of `hung`, which block until released."""

    def __init__(self, hung: str) -> None:
        self.hung = hung
        self.release = threading.Event()
        self.reads: list[str] = []

    def queue_depth(self, namespace, name, window_s, template=None, now=None, metrics=None):
        self.reads.append(name)
        if name == self.hung:
            self.release.wait(timeout=30)
        return PodSamples({f"{name}-0": 1.0})


def test_a_hung_read_holds_up_no_other_model_deployment():
    prometheus = HangingPrometheus(hung="slow")
    store, woken = Measurements(), []
    clock = [1000.0]
    measurer = Measurer(
        prometheus,
        lambda: [model("slow"), model("fast")],
        store,
        woken.append,
        clock=lambda: clock[0],
        tick_s=0.01,
    )
    measurer.start()
    try:
        wait_for(lambda: store.queue(("ns", "fast")) is not None, timeout=10, what="the fast one read")
        for _ in range(3):  # time passes: the fast one is read every interval, the slow one is still stuck
            clock[0] += 2
            before = prometheus.reads.count("fast")
            wait_for(
                lambda before=before: prometheus.reads.count("fast") > before,
                timeout=10,
                what="the next read of fast",
            )
        assert prometheus.reads.count("slow") == 1, "one read in flight per ModelDeployment and kind"
        assert ("ns", "fast") in woken and ("ns", "slow") not in woken
        prometheus.release.set()
        wait_for(lambda: store.queue(("ns", "slow")) is not None, timeout=10, what="the slow read done")
        assert ("ns", "slow") in woken
    finally:
        prometheus.release.set()
        measurer.stop()


def test_a_model_deployment_that_is_gone_is_forgotten():
    prometheus = HangingPrometheus(hung="none")
    store = Measurements()
    models = [model("a")]
    measurer = Measurer(prometheus, lambda: list(models), store, lambda key: None, tick_s=0.01)
    measurer.start()
    try:
        wait_for(lambda: store.queue(("ns", "a")) is not None, timeout=10, what="a read")
        models.clear()
        wait_for(lambda: store.queue(("ns", "a")) is None, timeout=10, what="a forgotten")
    finally:
        measurer.stop()


def test_a_spec_is_parsed_again_only_when_the_cache_holds_another_object(monkeypatch):
    parsed = []

    def counting_parse(raw):
        parsed.append(raw)
        return parse_spec(raw)

    monkeypatch.setattr("moe_operator.measure.loop.parse_spec", counting_parse)
    models = [model("a"), {**model("b"), "spec": {"model": {}}}]  # b: invalid, skipped
    measurer = Measurer(
        HangingPrometheus(hung="none"), lambda: list(models), Measurements(), lambda key: None
    )
    try:
        for _ in range(3):
            measurer.tick()
        assert len(parsed) == 2, "once per spec object, valid or not"
        changed = model("a")
        changed["spec"]["autoscaling"] = {**AUTOSCALED, "enabled": False}
        models[0] = changed
        measurer.tick()
        assert parsed[-1] is changed["spec"] and len(parsed) == 3
    finally:
        measurer.stop()


class RoutersPrometheus:
    """Answers what the routers report: `held` requests."""

    def __init__(self) -> None:
        self.held = 0

    def router_demand(self, namespace, name, now=None):
        return RouterDemand(held=self.held, in_flight=self.held, idle_s=0.0)


def test_at_zero_a_held_request_is_read_and_wakes_the_pass_within_the_short_interval():
    prometheus = RoutersPrometheus()
    store, woken = Measurements(), []
    clock = [1000.0]
    at_zero = {
        "metadata": {"namespace": "ns", "name": "z"},
        "spec": spec(routing={"scaleToZero": {"idleSeconds": 60}}),
        "status": {"desiredReplicas": 0},
    }
    measurer = Measurer(
        prometheus, lambda: [at_zero], store, woken.append, clock=lambda: clock[0], tick_s=0.01
    )
    measurer.start()
    try:
        wait_for(lambda: store.routers(("ns", "z")) is not None, timeout=10, what="the first read")
        prometheus.held = 1
        clock[0] += ROUTERS_AT_ZERO_S
        wait_for(
            lambda: store.routers(("ns", "z")).demand.held == 1, timeout=10, what="the held request read"
        )
        assert ("ns", "z") in woken
    finally:
        measurer.stop()
