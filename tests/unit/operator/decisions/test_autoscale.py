"""The queue-depth autoscaling decision: HPA's algorithm, pods still starting, missing data, and its state."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from moe_operator.decisions.autoscale import (
    AutoscalePolicy,
    AutoscaleState,
    Observation,
    Recommendation,
    ScaleEvent,
    ScaleRule,
    decide,
)
from moe_operator.decisions.promdata import NO_DATA_REASONS, NoData, PodSamples

NOW = 100_000.0
POLICY = AutoscalePolicy(min_replicas=1, max_replicas=20, target_queue_depth=4)
FAST_DOWN = replace(POLICY, down=ScaleRule(stabilization_window_s=0, max_pods=100, period_s=60))
NO_LIMITS = replace(FAST_DOWN, up=ScaleRule(0, 100, 15))


def pods(n: int, prefix: str = "p") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def observe(current: int, queues, starting: int = 0, ready: int | None = None) -> Observation:
    """queues: one queue per Ready pod (None: no sample), or a NoData; ready: Ready pods without samples."""
    if isinstance(queues, NoData):
        return Observation(current, frozenset(pods(current if ready is None else ready)), starting, queues)
    names = pods(len(queues) if ready is None else ready)
    values = {name: q for name, q in zip(names, queues, strict=False) if q is not None}
    return Observation(current, frozenset(names), starting, PodSamples(values))


def state(recommendations=(), events=()) -> AutoscaleState:
    return AutoscaleState(
        tuple(Recommendation(NOW + ago, r) for ago, r in recommendations),
        tuple(ScaleEvent(NOW + ago, a, b) for ago, a, b in events),
    )


@dataclass(frozen=True)
class Case:
    id: str
    obs: Observation
    expected: int
    reason: str  # a part of the reason that must be there
    policy: AutoscalePolicy = POLICY
    state: AutoscaleState = AutoscaleState()
    floor: int = 0
    no_data: str | None = None


CASES = [
    # tolerance
    Case(
        "on target keeps", observe(3, [4, 4, 4]), 3, "queue 4.0/pod within 10% of target 4 (3 ready): keep 3"
    ),
    Case("tolerance edge up keeps", observe(3, [4.4, 4.4, 4.4]), 3, "within 10%"),
    Case("tolerance edge down keeps", observe(3, [3.6, 3.6, 3.6]), 3, "within 10%"),
    Case("just over tolerance scales up", observe(3, [4.5, 4.5, 4.5]), 4, "over target 4 (3 ready): 3 -> 4"),
    Case(
        "zero tolerance scales on any deviation",
        observe(3, [4.1, 4.1, 4.1]),
        4,
        "3 -> 4",
        policy=replace(POLICY, tolerance=0),
    ),
    # scale-up and its step limit
    Case(
        "HPA's ceil(current * metric / target), limited to +4 per 15s",
        observe(3, [13, 13, 13]),
        7,
        "queue 13.0/pod over target 4 (3 ready): 3 -> 10, limited to +4 per 15s: 7",
    ),
    Case(
        "without a step limit to the whole need", observe(3, [13, 13, 13]), 10, ": 3 -> 10", policy=NO_LIMITS
    ),
    Case(
        "step limit counts the pods added earlier in the period",
        observe(7, [13] * 7),
        7,
        "limited to +4 per 15s: keep 7",
        state=state(events=[(-5, 3, 7)]),
    ),
    Case(
        "a scale-in whose Deployment write failed widens no later scale-up",
        observe(3, [13, 13, 13]),
        7,
        "limited to +4 per 15s: 7",
        state=state(events=[(-5, 3, 2)]),
    ),
    Case(
        "a scale-up whose Deployment write failed uses up no step",
        observe(3, [13, 13, 13]),
        7,
        "limited to +4 per 15s: 7",
        state=state(events=[(-5, 3, 7)]),
    ),
    Case(
        "the steps taken before a failed write still count",
        observe(5, [13] * 5),
        7,
        "limited to +4 per 15s: 7",
        state=state(events=[(-8, 3, 5), (-5, 5, 9)]),
    ),
    Case(
        "step limit frees up once the period has passed",
        observe(7, [13] * 7),
        11,
        "7 -> 23, limited to +4 per 15s: 11",
        state=state(events=[(-20, 3, 7)]),
    ),
    # scale-down, its window and its step limit
    Case(
        "scale-down window holds the highest recent recommendation",
        observe(10, [1] * 10),
        10,
        "10 -> 3, held at 10 by the 300s scale-down window: keep 10",
        state=state(recommendations=[(-100, 10)]),
    ),
    Case(
        "a recommendation older than the window no longer holds",
        observe(10, [1] * 10),
        9,
        "10 -> 3, limited to -1 per 60s: 9",
        state=state(recommendations=[(-301, 10)]),
    ),
    Case(
        "scale-down step counts the pods removed earlier in the period",
        observe(9, [1] * 9),
        9,
        "limited to -1 per 60s: keep 9",
        state=state(events=[(-30, 10, 9)]),
    ),
    Case(
        "scale-down window partly holds",
        observe(10, [1] * 10),
        6,
        "10 -> 3, held at 6 by the 300s scale-down window: 6",
        policy=replace(POLICY, down=ScaleRule(300, 100, 60)),
        state=state(recommendations=[(-200, 6), (-100, 5)]),
    ),
    Case("down window 0 follows at once", observe(10, [1] * 10), 3, "10 -> 3", policy=FAST_DOWN),
    Case(
        "scale-up window takes its lowest recommendation",
        observe(3, [13, 13, 13]),
        5,
        "3 -> 10, held at 5 by the 60s scale-up window: 5",
        policy=replace(NO_LIMITS, up=ScaleRule(60, 100, 15)),
        state=state(recommendations=[(-30, 5)]),
    ),
    # bounds and the canary floor
    Case("capped at maxReplicas", observe(3, [100] * 3), 20, "capped at maxReplicas 20", policy=NO_LIMITS),
    Case(
        "raised to minReplicas",
        observe(1, [4]),
        3,
        "raised to minReplicas 3",
        policy=replace(POLICY, min_replicas=3),
    ),
    Case(
        "never below the canary floor",
        observe(6, [0] * 6),
        6,
        "raised to the floor of 6 while a canary is analysed",
        policy=FAST_DOWN,
        floor=6,
    ),
    Case("a floor above maxReplicas stops at max", observe(20, [4] * 20), 20, "keep 20", floor=30),
    # pods still starting
    Case(
        "starting pods cover the need: no scale-up",
        observe(6, [6.5] * 4, starting=3),
        6,
        "4 ready + 3 starting already cover 7: keep 6",
    ),
    Case(
        "starting pods do not cover the need: scale up the rest",
        observe(7, [13] * 3, starting=4),
        10,
        "queue 13.0/pod over target 4 (3 ready, 4 starting): 7 -> 10",
        policy=NO_LIMITS,
    ),
    Case(
        "over target with fewer Ready pods than replicas never scales in",
        observe(5, [6, 6], starting=3),
        5,
        "keep 5",
        policy=FAST_DOWN,
    ),
    # no Ready pod
    Case(
        "zero Ready pods hold", observe(2, [], starting=2), 2, "no Ready pod to measure (2 starting): keep 2"
    ),
    Case("zero Ready pods and below min", observe(0, []), 1, "raised to minReplicas 1"),
    # missing data of each reason
    *[
        Case(
            f"{reason} holds",
            observe(5, NoData(reason, "details")),
            5,
            f"no queue data ({reason}: details): keep 5",
            policy=FAST_DOWN,
            state=state(recommendations=[(-10, 1)]),
            no_data=reason,
        )
        for reason in NO_DATA_REASONS
    ],
    Case(
        "missing data still raises to minReplicas",
        observe(1, NoData("PrometheusUnavailable", "refused")),
        3,
        "raised to minReplicas 3",
        policy=replace(POLICY, min_replicas=3),
        no_data="PrometheusUnavailable",
    ),
    Case(
        "no sample from any Ready pod is missing data",
        Observation(3, frozenset(pods(3)), 0, PodSamples({"other": 50})),
        3,
        "none of the 3 Ready pods has a queue sample",
        no_data="NoSeries",
    ),
    # pods without a sample (HPA's missing metrics)
    Case(
        "scale-up counts pods without a sample as 0",
        observe(4, [20, 20, None, None]),
        10,
        "2 without a sample counted as 0: 4 -> 10",
        policy=NO_LIMITS,
    ),
    Case(
        "scale-down counts pods without a sample as on target",
        observe(4, [0, 0, None, None]),
        2,
        "2 without a sample counted on target: 4 -> 2",
        policy=NO_LIMITS,
    ),
    Case(
        "filling in missing pods lands in the band: keep",
        observe(3, [13, None, None]),
        3,
        "which leaves no clear need: keep 3",
    ),
    Case(
        "samples of pods that are not Ready are ignored",
        Observation(2, frozenset(["a", "b"]), 0, PodSamples({"a": 8, "b": 8, "canary-0": 100})),
        4,
        "queue 8.0/pod over target 4 (2 ready): 2 -> 4",
    ),
    Case(
        "a clock that went back: future recommendations count as now",
        observe(10, [1] * 10),
        10,
        "held at 10",
        state=state(recommendations=[(+500, 10)]),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decision_table(case: Case):
    decision = decide(case.obs, case.policy, case.state, NOW, floor=case.floor)
    assert decision.replicas == case.expected, decision.reason
    assert case.reason in decision.reason
    expected_direction = (
        "up" if case.expected > case.obs.current else "down" if case.expected < case.obs.current else "none"
    )
    assert decision.direction == expected_direction
    assert (decision.no_data.reason if decision.no_data else None) == case.no_data
    assert "\n" not in decision.reason


def test_table_is_large_enough():
    assert len(CASES) >= 25


def test_metric_is_the_mean_queue_of_ready_pods_with_a_sample():
    decision = decide(observe(4, [2, 6, None, None]), POLICY, AutoscaleState(), NOW)
    assert decision.metric == 4.0
    assert decide(observe(4, NoData("NoSeries", "x")), POLICY, AutoscaleState(), NOW).metric is None


def test_scaling_records_an_event_and_the_recommendation():
    decision = decide(observe(3, [13, 13, 13]), POLICY, AutoscaleState(), NOW)
    assert decision.state.events == (ScaleEvent(NOW, 3, 7),)
    assert decision.state.recommendations == (Recommendation(NOW, 10),)
    assert decision.recommendation == 10


def test_missing_data_records_a_hold_at_the_current_count():
    decision = decide(observe(3, NoData("NoSeries", "x")), POLICY, state(recommendations=[(-10, 5)]), NOW)
    assert decision.replicas == 3
    assert decision.state.recommendations == (Recommendation(NOW - 10, 5), Recommendation(NOW, 3))
    assert decision.state.events == ()


def test_after_an_outage_longer_than_the_scale_down_window_one_low_read_does_not_scale_in():
    policy = replace(NO_LIMITS, down=ScaleRule(60, 100, 15))
    loaded = decide(observe(4, [4, 4, 4, 4]), policy, AutoscaleState(), NOW)  # on target
    assert loaded.replicas == 4
    kept = loaded.state
    for t in range(15, 120, 15):  # Prometheus is down for two windows
        blind = decide(observe(4, NoData("PrometheusUnavailable", "down")), policy, kept, NOW + t)
        assert blind.replicas == 4
        kept = blind.state
    first_read = decide(observe(4, [0, 0, 0, 0]), policy, kept, NOW + 120)
    assert first_read.replicas == 4 and "held at 4 by the 60s scale-down window" in first_read.reason
    later = first_read.state
    for t in range(135, 180, 15):
        later_decision = decide(observe(4, [0, 0, 0, 0]), policy, later, NOW + t)
        later = later_decision.state
    assert later_decision.replicas == 1, "a window of real low reads after the outage does scale in"


def test_invalid_policies_are_refused():
    with pytest.raises(ValueError, match="min_replicas"):
        AutoscalePolicy(min_replicas=5, max_replicas=2, target_queue_depth=1)
    with pytest.raises(ValueError, match="target_queue_depth"):
        AutoscalePolicy(min_replicas=1, max_replicas=2, target_queue_depth=0)
    with pytest.raises(ValueError, match="scale rule"):
        ScaleRule(stabilization_window_s=-1, max_pods=1, period_s=1)


# --- restart: the state survives a round trip through status ----------------------------------------------


def through_status(kept: AutoscaleState) -> AutoscaleState:
    """What an operator restarted after this decision reads back from the ModelDeployment's status."""
    return AutoscaleState.from_status(json.loads(json.dumps(kept.to_status())))


@pytest.mark.parametrize("policy", [POLICY, NO_LIMITS, replace(POLICY, up=ScaleRule(60, 2, 30))])
def test_a_restarted_operator_decides_as_the_uninterrupted_one(policy):
    totals = [39, 39, 39, 6, 3, 3, 0, 0, 15, 27, 3] + [0] * 50  # the whole queue, spread over the pods
    current, uninterrupted, restarted, seen = 3, AutoscaleState(), AutoscaleState(), []
    for i, total in enumerate(totals):
        obs = observe(current, [total / max(current, 1)] * current)
        a = decide(obs, policy, uninterrupted, NOW + 15 * i)
        b = decide(obs, policy, through_status(restarted), NOW + 15 * i)
        assert (b.replicas, b.reason, b.state) == (a.replicas, a.reason, a.state)
        current, uninterrupted, restarted = a.replicas, a.state, b.state
        seen.append(current)
    assert max(seen) > 3 and current < max(seen), f"the sequence should scale out and back in: {seen}"


def test_a_restart_keeps_the_scale_down_window():
    scaled_up = decide(observe(3, [13, 13, 13]), NO_LIMITS, AutoscaleState(), NOW)
    policy = replace(NO_LIMITS, down=ScaleRule(300, 100, 60))
    later = decide(observe(10, [0] * 10), policy, through_status(scaled_up.state), NOW + 120)
    assert later.replicas == 10 and "held at 10 by the 300s scale-down window" in later.reason
    blind = decide(observe(10, [0] * 10), policy, AutoscaleState(), NOW + 120)
    assert blind.replicas == 1


@pytest.mark.parametrize(
    "garbled",
    [
        None,
        "text",
        [],
        {},
        {"recommendations": "x", "events": 3},
        {"recommendations": [{"at": "now", "replicas": 3}, {"at": 1.0}, None, {"at": 1.0, "replicas": -2}]},
        {
            "events": [
                {"at": 1.0, "from": 1},
                {"at": float("nan"), "from": 1, "to": 2},
                {"at": True, "from": 1, "to": 2},
            ]
        },
    ],
)
def test_from_status_tolerates_missing_and_garbled_input(garbled):
    assert AutoscaleState.from_status(garbled) == AutoscaleState()


def test_from_status_keeps_the_valid_entries_in_time_order():
    raw = {
        "recommendations": [{"at": 20, "replicas": 4}, {"at": "x"}, {"at": 10, "replicas": 3}],
        "events": [{"at": 5, "from": 1, "to": 2}, {"bad": 1}],
    }
    assert AutoscaleState.from_status(raw) == AutoscaleState(
        (Recommendation(10.0, 3), Recommendation(20.0, 4)), (ScaleEvent(5.0, 1, 2),)
    )


# --- properties ---------------------------------------------------------------------------------------------


@st.composite
def policies(draw) -> AutoscalePolicy:
    low = draw(st.integers(0, 10))
    return AutoscalePolicy(
        min_replicas=low,
        max_replicas=draw(st.integers(max(low, 1), 30)),
        target_queue_depth=draw(st.sampled_from([0.5, 1, 2, 4, 7.5, 16])),
        tolerance=draw(st.sampled_from([0, 0.05, 0.1, 0.3])),
        up=ScaleRule(
            draw(st.sampled_from([0, 30, 120])), draw(st.integers(1, 8)), draw(st.sampled_from([0, 15, 60]))
        ),
        down=ScaleRule(
            draw(st.sampled_from([0, 60, 300])), draw(st.integers(1, 8)), draw(st.sampled_from([0, 15, 60]))
        ),
    )


queue_values = st.floats(min_value=0, max_value=200, allow_nan=False)


@st.composite
def observations(draw, no_data: bool | None = None) -> Observation:
    current = draw(st.integers(0, 30))
    ready = draw(st.integers(0, 30))
    names = pods(ready)
    if no_data is None:
        no_data = draw(st.booleans())
    if no_data:
        samples = NoData(draw(st.sampled_from(NO_DATA_REASONS)), "x")
    else:
        sampled = draw(st.lists(st.sampled_from(names), unique=True)) if names else []
        extra = draw(st.dictionaries(st.sampled_from(["canary-0", "gone-1"]), queue_values))
        samples = PodSamples({**{n: draw(queue_values) for n in sampled}, **extra})
    return Observation(current, frozenset(names), draw(st.integers(0, 10)), samples)


@st.composite
def states(draw) -> AutoscaleState:
    recs = draw(st.lists(st.tuples(st.floats(-400, 10), st.integers(0, 40)), max_size=8))
    events = draw(
        st.lists(st.tuples(st.floats(-100, 10), st.integers(0, 30), st.integers(0, 30)), max_size=5)
    )
    return AutoscaleState(
        tuple(sorted((Recommendation(NOW + t, r) for t, r in recs), key=lambda r: r.at)),
        tuple(sorted((ScaleEvent(NOW + t, a, b) for t, a, b in events), key=lambda e: e.at)),
    )


def lowest(policy: AutoscalePolicy, floor: int) -> int:
    return min(max(policy.min_replicas, floor), policy.max_replicas)


@settings(max_examples=400, deadline=None)
@given(observations(), policies(), states(), st.integers(0, 40))
def test_the_result_is_always_within_the_bounds(obs, policy, prior, floor):
    decision = decide(obs, policy, prior, NOW, floor=floor)
    assert lowest(policy, floor) <= decision.replicas <= policy.max_replicas


@settings(max_examples=300, deadline=None)
@given(observations(no_data=True), policies(), states(), st.integers(0, 40))
def test_missing_data_never_lowers_the_replicas(obs, policy, prior, floor):
    decision = decide(obs, policy, prior, NOW, floor=floor)
    # only the bounds move it: up to min/floor, or down to a maxReplicas the user lowered
    assert decision.replicas == min(max(obs.current, lowest(policy, floor)), policy.max_replicas)
    assert decision.no_data == obs.samples


@st.composite
def covered(draw) -> tuple[Observation, AutoscalePolicy]:
    """A policy and an observation whose Ready plus starting pods reach what the queue needs."""
    policy = draw(policies())
    names = pods(draw(st.integers(1, 30)))
    sampled = draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
    samples = {name: draw(queue_values) for name in sampled}
    need = math.ceil(sum(samples.values()) / policy.target_queue_depth - 1e-9)
    starting = max(0, need - len(names)) + draw(st.integers(0, 3))
    samples |= draw(st.dictionaries(st.sampled_from(["canary-0", "gone-1"]), queue_values))
    return Observation(draw(st.integers(0, 30)), frozenset(names), starting, PodSamples(samples)), policy


@settings(max_examples=300, deadline=None)
@given(covered(), states(), st.integers(0, 40))
def test_no_scale_up_while_ready_and_starting_pods_cover_the_need(covered_case, prior, floor):
    obs, policy = covered_case
    decision = decide(obs, policy, prior, NOW, floor=floor)
    assert decision.replicas <= max(obs.current, lowest(policy, floor)), decision.reason


@settings(max_examples=200, deadline=None)
@given(
    policies(),
    st.floats(0, 300),
    st.integers(0, 30),
    st.integers(0, 40),
    st.lists(st.tuples(st.floats(1, 400), st.floats(0, 1)), min_size=2, max_size=40),
)
def test_a_steady_queue_changes_direction_at_most_once(policy, total_queue, current, floor, steps):
    """A constant total queue, spread over whichever pods are Ready (a random share of them still starting)."""
    now, directions, prior = NOW, [], AutoscaleState()
    for gap, ready_share in steps:
        now += gap
        ready = round(current * ready_share)
        names = pods(ready)
        samples = PodSamples({name: total_queue / ready for name in names})
        decision = decide(
            Observation(current, frozenset(names), current - ready, samples), policy, prior, now, floor
        )
        if decision.direction != "none":
            directions.append(decision.direction)
        current, prior = decision.replicas, decision.state
    changes = sum(1 for a, b in zip(directions, directions[1:], strict=False) if a != b)
    assert changes <= 1, directions


@settings(max_examples=200, deadline=None)
@given(
    policies(),
    st.lists(st.tuples(st.floats(1, 120), st.floats(0, 100), st.integers(0, 30)), min_size=1, max_size=40),
)
# found by a full run: the count left the chain of scale events (3 -> 7, then 0) and came back to it (7); the
# kept state had dropped the event, the whole history still counted it for the step limit
@example(
    AutoscalePolicy(0, 7, 0.5, 0, ScaleRule(0, 4, 15), ScaleRule(0, 1, 0)),
    [(1.0, 2.0, 3), (1.0, 0.0, 0), (1.0, 1.0, 7)],
)
def test_the_kept_state_decides_as_the_whole_history_would(policy, steps):
    """Pruning and compacting the state changes no decision: a run that hands decide() every recommendation
    and event ever made decides exactly as the one that keeps only what decide() returned."""
    now, kept, history_recs, history_events = NOW, AutoscaleState(), [], []
    for gap, queue, current in steps:
        now += gap
        obs = observe(current, [queue] * current)
        compact = decide(obs, policy, kept, now)
        whole = decide(obs, policy, AutoscaleState(tuple(history_recs), tuple(history_events)), now)
        assert (compact.replicas, compact.reason) == (whole.replicas, whole.reason)
        history_recs.extend(r for r in whole.state.recommendations if r.at == now)
        history_events.extend(e for e in whole.state.events if e.at == now)
        kept = compact.state
        assert len(kept.recommendations) <= 2 * (policy.max_replicas + 1)


def test_the_floor_is_remembered_so_the_scale_down_window_holds_it_after_the_canary():
    from moe_operator.decisions.autoscale import (
        AutoscalePolicy,
        AutoscaleState,
        Observation,
        ScaleRule,
        decide,
    )
    from moe_operator.decisions.promdata import PodSamples

    policy = AutoscalePolicy(1, 10, 4.0, up=ScaleRule(0, 4, 15), down=ScaleRule(60, 4, 15))
    pods = frozenset({"a", "b", "c"})
    idle = Observation(3, pods, 0, PodSamples(dict.fromkeys(pods, 0.0)))
    state = AutoscaleState()
    for t in range(0, 120, 15):  # the canary draws the traffic away: the stable queues read 0
        decision = decide(idle, policy, state, 1000.0 + t, floor=3)
        state = decision.state
        assert decision.replicas == 3
    after = decide(idle, policy, state, 1000.0 + 120, floor=0)  # the canary is gone
    assert after.replicas == 3, "the recent recommendations still hold what the floor held"
