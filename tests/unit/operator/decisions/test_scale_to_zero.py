"""Scale to zero and back (spec.routing.scaleToZero), and requests held at the router in the queue-depth
autoscaler."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moe_operator.decisions.autoscale import (
    AutoscalePolicy,
    AutoscaleState,
    Observation,
    RouterDemand,
    ScaleRule,
    ZeroDecision,
    decide,
    scale_to_zero,
)
from moe_operator.decisions.promdata import NO_DATA_REASONS, NoData, PodSamples

IDLE = 300.0
BLIND = NoData("PrometheusUnavailable", "connection refused")


def test_idle_long_enough_goes_to_zero_and_a_held_request_wakes_it():
    quiet = RouterDemand(held=0, in_flight=0, idle_s=IDLE)
    assert scale_to_zero(2, quiet, IDLE, wake_to=1).replicas == 0
    assert scale_to_zero(2, RouterDemand(0, 0, IDLE - 1), IDLE, 1) == ZeroDecision(None, "")
    assert scale_to_zero(0, quiet, IDLE, 1).replicas == 0
    woken = scale_to_zero(0, RouterDemand(held=3, in_flight=3, idle_s=0.2), IDLE, wake_to=1)
    assert woken.replicas == 1 and "3 request(s) held" in woken.reason
    assert (
        scale_to_zero(0, RouterDemand(1, 1, 0), IDLE, wake_to=4).replicas == 4
    )  # spec.replicas, no autoscaling


def test_blind_it_changes_nothing():
    assert scale_to_zero(3, BLIND, IDLE, 1).replicas is None
    at_zero = scale_to_zero(0, BLIND, IDLE, 1)
    assert at_zero.replicas == 0 and "PrometheusUnavailable" in at_zero.reason
    with pytest.raises(ValueError):
        scale_to_zero(0, RouterDemand(1, 1, 0), IDLE, wake_to=0)


demands = st.builds(
    RouterDemand,
    held=st.integers(0, 50),
    in_flight=st.integers(0, 50),
    idle_s=st.floats(0, 10 * IDLE, allow_nan=False),
)
no_data = st.builds(NoData, st.sampled_from(NO_DATA_REASONS), st.text(max_size=10))


@given(
    current=st.integers(0, 20), demand=demands | no_data, idle=st.floats(1, 3600), wake_to=st.integers(1, 10)
)
def test_never_zero_while_a_request_is_held_or_running_and_never_before_the_idle_time(
    current, demand, idle, wake_to
):
    decision = scale_to_zero(current, demand, idle, wake_to)
    if decision.replicas == 0 and current > 0:
        assert isinstance(demand, RouterDemand)
        assert demand.held == 0 and demand.in_flight == 0 and demand.idle_s >= idle
    if isinstance(demand, RouterDemand) and demand.held > 0:
        assert decision.replicas != 0
        if current == 0:
            assert decision.replicas == wake_to
    if isinstance(demand, NoData):
        assert decision.replicas in (None, current), "blind, nothing changes"


def test_held_requests_count_as_queue_for_the_autoscaler():
    policy = AutoscalePolicy(min_replicas=1, max_replicas=10, target_queue_depth=4, up=ScaleRule(0, 10, 15))
    pods = frozenset({"p0"})
    without = decide(Observation(1, pods, 0, PodSamples({"p0": 2.0})), policy, AutoscaleState(), 1000.0)
    held = decide(Observation(1, pods, 0, PodSamples({"p0": 2.0}), held=10), policy, AutoscaleState(), 1000.0)
    assert without.replicas == 1 and held.replicas == 3  # (2 + 10) / 4


@given(held=st.integers(0, 100), queue=st.floats(0, 100, allow_nan=False))
def test_more_held_requests_never_ask_for_fewer_pods(held, queue):
    policy = AutoscalePolicy(min_replicas=1, max_replicas=50, target_queue_depth=4, up=ScaleRule(0, 50, 15))
    pods = frozenset({"p0", "p1"})
    samples = PodSamples({"p0": queue, "p1": queue})
    base = decide(Observation(2, pods, 0, samples, held=held), policy, AutoscaleState(), 1000.0)
    more = decide(Observation(2, pods, 0, samples, held=held + 5), policy, AutoscaleState(), 1000.0)
    assert more.recommendation >= base.recommendation
