"""A container's life under the local kubelet: probes, restarts with back-off, the stop procedure
(hack/localkubelet/lifecycle.py, probes.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from localkubelet.lifecycle import Container, Signal, State, exit_code, plan_stop, restart_delay, stop_signal
from localkubelet.probes import Count, Probe, container_probes, record

RUNTIME = {
    "name": "runtime",
    "ports": [{"name": "http", "containerPort": 8000}],
    "startupProbe": {
        "httpGet": {"path": "/ready", "port": "http"},
        "periodSeconds": 10,
        "failureThreshold": 3,
    },
    "livenessProbe": {
        "httpGet": {"path": "/health", "port": "http"},
        "periodSeconds": 10,
        "failureThreshold": 3,
    },
    "readinessProbe": {
        "httpGet": {"path": "/ready", "port": "http"},
        "periodSeconds": 5,
        "failureThreshold": 2,
    },
}


def runtime_container(**kw) -> Container:
    return Container(probes=container_probes(RUNTIME, local_port=41000), **kw)


def test_probes_reach_the_local_port_with_kubernetes_defaults():
    probes = container_probes(RUNTIME, local_port=41000)
    ready = probes["readinessProbe"]
    assert (ready.action, ready.port, ready.path, ready.period, ready.failure_threshold) == (
        "http",
        41000,
        "/ready",
        5,
        2,
    )
    assert (ready.timeout, ready.success_threshold, ready.initial_delay) == (1, 1, 0)
    other_port = {**RUNTIME, "readinessProbe": {"httpGet": {"path": "/", "port": 9090}}}
    assert container_probes(other_port, 41000)["readinessProbe"].action == "unsupported"
    exec_probe = {"name": "c", "livenessProbe": {"exec": {"command": ["true"]}}}
    assert "exec probes are not supported" in container_probes(exec_probe, 41000)["livenessProbe"].problem


def test_ready_only_after_startup_and_readiness_pass():
    c = runtime_container()
    c.started_process(now=0)
    assert c.due_probes(0) == ["startupProbe"] and not c.ready
    assert c.probed("startupProbe", False, now=0) is None  # loading weights
    assert c.due_probes(5) == [] and c.due_probes(10) == ["startupProbe"]
    c.probed("startupProbe", True, now=10)
    assert c.started and not c.ready
    assert sorted(c.due_probes(10)) == ["livenessProbe", "readinessProbe"]  # readiness right away
    c.probed("readinessProbe", True, now=10.1)
    assert c.ready


def test_readiness_failures_clear_ready_and_a_success_restores_it():
    c = runtime_container()
    c.started_process(0)
    c.probed("startupProbe", True, 0)
    c.probed("readinessProbe", True, 0)
    c.probed("readinessProbe", False, 5)
    assert c.ready, "one failure is under the threshold of 2"
    c.probed("readinessProbe", False, 10)
    assert not c.ready
    c.probed("readinessProbe", True, 15)
    assert c.ready


def test_liveness_failures_ask_for_a_restart_once():
    c = runtime_container()
    c.started_process(0)
    c.probed("startupProbe", True, 0)
    assert c.probed("livenessProbe", False, 10) is None
    assert c.probed("livenessProbe", False, 20) is None
    assert c.probed("livenessProbe", False, 30) == "Liveness probe failed"
    assert c.due_probes(100) == [], "no more probes for a container being restarted"


def test_startup_failures_ask_for_a_restart():
    c = runtime_container()
    c.started_process(0)
    reasons = [c.probed("startupProbe", False, t) for t in (0, 10, 20)]
    assert reasons == [None, None, "Startup probe failed"]


def test_no_probes_means_ready_when_running():
    c = Container()
    c.started_process(0)
    assert c.ready and c.due_probes(100) == []
    c.exited(1, 1)
    assert not c.ready


def test_exits_restart_with_kubelet_back_off_and_count_restarts():
    c = Container()
    assert c.due_to_start(0)
    c.started_process(0)
    c.exited(1, now=1)
    assert (c.state, c.waiting_reason, c.restart_at) == (State.WAITING, "ContainerCreating", 1), (
        "first restart at once"
    )
    assert c.last_exit.exit_code == 1 and c.last_exit.reason == "Error"
    c.started_process(1)
    assert c.restart_count == 1
    c.exited(-9, now=2)
    assert (c.waiting_reason, c.restart_at, c.last_exit.exit_code) == ("CrashLoopBackOff", 12, 137)
    assert not c.due_to_start(11) and c.due_to_start(12)
    c.started_process(12)
    c.exited(1, now=13)
    assert c.restart_at == 13 + 20 and c.restart_count == 2


def test_a_long_run_resets_the_back_off():
    c = Container()
    for _ in range(3):
        c.started_process(c.restart_at)
        c.exited(1, now=c.restart_at + 1)
    assert c.restart_at - c.last_exit.finished_at == 20
    c.started_process(c.restart_at)
    c.exited(1, now=c.restart_at + 601)
    assert c.restart_at == c.last_exit.finished_at, "ran 10 minutes: restarted at once"


@pytest.mark.parametrize(
    ("policy", "code", "restarts"), [("Never", 1, False), ("OnFailure", 0, False), ("OnFailure", 2, True)]
)
def test_restart_policy(policy, code, restarts):
    c = Container(restart_policy=policy)
    c.started_process(0)
    c.exited(code, 1)
    assert (c.state is State.WAITING) == restarts


@given(st.integers(min_value=1, max_value=200), st.floats(0.1, 60), st.floats(1, 600))
def test_back_off_is_never_above_its_cap_and_never_shrinks(exits, initial, cap):
    delay = restart_delay(exits, initial, cap)
    assert 0 <= delay <= cap
    assert restart_delay(exits + 1, initial, cap) >= delay
    assert restart_delay(1, initial, cap) == 0


def test_exit_codes_of_signals():
    assert (exit_code(-15), exit_code(-9), exit_code(0), exit_code(3)) == (143, 137, 0, 3)


def test_stop_waits_for_pre_stop_then_terms_then_kills_at_the_grace_deadline():
    stop = plan_stop(now=100, grace=40, prestop_sleep=10, then_restart=False, reason="deleted")
    assert stop_signal(stop, 105) is None
    assert stop_signal(stop, 110) is Signal.TERM
    assert stop_signal(stop, 111) is None, "SIGTERM once"
    assert stop_signal(stop, 139) is None
    assert stop_signal(stop, 140) is Signal.KILL
    assert stop_signal(stop, 141) is None


def test_pre_stop_longer_than_the_grace_period_leaves_two_seconds():
    stop = plan_stop(now=0, grace=5, prestop_sleep=10, then_restart=False, reason="deleted")
    assert (stop.sigterm_at, stop.deadline) == (5, 7)


@given(st.floats(0, 100), st.floats(0, 100), st.floats(0, 1000))
def test_sigterm_always_comes_at_least_two_seconds_before_sigkill(grace, prestop, start):
    stop = plan_stop(start, grace, prestop, False, "x")
    assert start <= stop.sigterm_at <= stop.deadline - 2 + 1e-9
    assert stop.deadline >= start + grace - 1e-9


def test_threshold_counting():
    probe = Probe("readinessProbe", "http", success_threshold=2, failure_threshold=3)
    count = Count()
    for ok, expected in [
        (True, None),
        (True, True),
        (False, True),
        (False, True),
        (False, False),
        (True, False),
        (True, True),
    ]:
        count = record(count, ok, probe)
        assert count.result is expected
