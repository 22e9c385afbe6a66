"""Canary analysis: counting windows' outcomes apart, verdicts, windows that tile time, restarts, bakes."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_operator.decisions.analysis import (
    CATCH_UP_WINDOWS,
    RECENT_OUTCOMES,
    AnalysisPolicy,
    AnalysisState,
    Window,
    analyse,
    bake_verdict,
    due_windows,
    minimum_end,
    next_measurable,
    record,
    verdict,
)
from moe_operator.decisions.judge import Objectives, Outcome, Settlement, judge
from moe_operator.decisions.promdata import NO_DATA_REASONS, Measurement, NoData
from moe_operator.timestamps import to_time
from tests.unit.operator.world import track

START = 1_000_000.0
POLICY = AnalysisPolicy(interval_s=60, min_latencies=0)
OBJECTIVES = Objectives(p99_latency_s=2.0, max_error_ratio=0.05, min_requests=10)


def window(candidate, baseline=None):
    return Measurement(0, candidate, candidate, baseline, baseline)


GOOD = window(track(0.5, requests=100), track(0.5, requests=100))
SLOW = window(track(7.5, requests=100), track(0.5, requests=100))
QUIET = window(track(0.4, requests=3), track(0.5, requests=100))
DOWN = NoData("PrometheusUnavailable", "connection refused")


def outcome(kind: str, at: float = START) -> Outcome:
    return Outcome(at, kind, "", kind.lower(), {})


def test_invalid_policies_are_refused():
    with pytest.raises(ValueError):
        AnalysisPolicy(interval_s=0)
    with pytest.raises(ValueError):
        AnalysisPolicy(measurements=0)
    with pytest.raises(ValueError):
        AnalysisPolicy(failure_limit=-1)
    with pytest.raises(ValueError):
        AnalysisPolicy(min_duration_s=-1)


# --- sequences of windows -----------------------------------------------------------------------------------


def replay(sequence, slo=POLICY, state=None):
    """Records one window per measurement in order, stopping at a Promote or Rollback as analyse() does;
    returns the final state and the verdicts after each window."""
    state = state or AnalysisState(started_at=START)
    verdicts = []
    for measurement in sequence:
        index = state.measured_until + 1
        state = record(state, judge(measurement, OBJECTIVES, at=START + index * slo.interval_s), index)
        verdicts.append(verdict(state, slo, now=START + 10**6))
        if verdicts[-1].action in ("Promote", "Rollback"):
            break
    return state, verdicts


P, F, I, E = GOOD, SLOW, QUIET, DOWN  # noqa: E741

SEQUENCES = [
    # (id, slo, measurements, final action, reason, windows counted)
    ("all pass promotes", POLICY, [P] * 5, "Promote", "AnalysisPassed", 5),
    ("four passes continue", POLICY, [P] * 4, "Continue", "AnalysisRunning", 4),
    ("one failure is tolerated", POLICY, [P, F, P, P, P, P], "Promote", "AnalysisPassed", 6),
    ("two failures roll back", POLICY, [P, F, P, F, P, P], "Rollback", "SLOBreached", 4),
    (
        "failure limit 0: the first failure rolls back",
        replace(POLICY, failure_limit=0),
        [P, F],
        "Rollback",
        "SLOBreached",
        2,
    ),
    (
        "on_failure Hold holds",
        replace(POLICY, on_failure="Hold"),
        [F, F, P, P, P, P, P],
        "Hold",
        "SLOBreached",
        7,
    ),
    ("inconclusive up to the limit continue", POLICY, [I, I, I, P], "Continue", "AnalysisRunning", 4),
    ("one more inconclusive holds", POLICY, [I, I, I, I], "Hold", "AnalysisInconclusive", 4),
    (
        "inconclusive hold is not final: passes promote",
        POLICY,
        [I] * 4 + [P] * 5,
        "Promote",
        "AnalysisPassed",
        9,
    ),
    (
        "inconclusive hold is not final: failures roll back",
        POLICY,
        [I] * 4 + [F, F],
        "Rollback",
        "SLOBreached",
        6,
    ),
    (
        "on_inconclusive Rollback",
        replace(POLICY, on_inconclusive="Rollback"),
        [I] * 4,
        "Rollback",
        "AnalysisInconclusive",
        4,
    ),
    ("inconclusive limit 0", replace(POLICY, inconclusive_limit=0), [I], "Hold", "AnalysisInconclusive", 1),
    ("errors up to the limit continue", POLICY, [E] * 4, "Continue", "AnalysisRunning", 4),
    ("errors past the limit hold, never roll back", POLICY, [E] * 12, "Hold", "AnalysisErrored", 12),
    (
        "error limit 0 holds at the first error",
        replace(POLICY, error_limit=0),
        [E],
        "Hold",
        "AnalysisErrored",
        1,
    ),
    ("a recovered Prometheus resumes", POLICY, [E] * 6 + [P] * 5, "Promote", "AnalysisPassed", 11),
    (
        "errors between passes are not consecutive",
        POLICY,
        [E, E, E, E, P, E, E, E, E, P],
        "Continue",
        "AnalysisRunning",
        10,
    ),
    ("errors are never passes", POLICY, [E, P, E, P, E, P, E, P], "Continue", "AnalysisRunning", 8),
    (
        "mixed: fail, inconclusive, error, pass",
        POLICY,
        [P, F, I, E, P, I, P, P, P],
        "Promote",
        "AnalysisPassed",
        9,
    ),
    ("measurements 1", replace(POLICY, measurements=1), [I, E, P], "Promote", "AnalysisPassed", 3),
]


@pytest.mark.parametrize(
    "slo, sequence, action, reason, counted", [s[1:] for s in SEQUENCES], ids=[s[0] for s in SEQUENCES]
)
def test_sequences(slo, sequence, action, reason, counted):
    state, verdicts = replay(sequence, slo)
    assert (verdicts[-1].action, verdicts[-1].reason) == (action, reason), verdicts[-1].message
    assert state.measured_until == counted
    assert state.passed + state.failed + state.inconclusive + state.errored == counted


def test_counts_are_kept_apart():
    state, _ = replay([P, F, I, E, E, I, P])
    assert (state.passed, state.failed, state.inconclusive, state.errored) == (2, 1, 2, 2)
    assert state.consecutive_errors == 0


def test_rollback_message_names_the_condemning_measurement():
    errors = window(track(0.5, requests=100, errors=20), track(0.5, requests=100))
    state, verdicts = replay([F, P, errors])
    assert "20 of 100 requests failed with 5xx (limit 0.05)" in verdicts[-1].message
    assert [o["kind"] for o in state.failures] == ["Failed", "Failed"]
    assert [o["rule"] for o in state.failures] == ["Latency", "Errors"]


def test_recent_outcomes_are_bounded_but_failures_are_kept_apart():
    state, _ = replay(
        [F] + [P] * 3 + [I] * 3 + [E] * 4, replace(POLICY, measurements=100, inconclusive_limit=99)
    )
    assert len(state.recent) == RECENT_OUTCOMES
    assert state.failures[0]["kind"] == "Failed" and all(o["kind"] != "Failed" for o in state.recent)


# --- windows that tile time ---------------------------------------------------------------------------------


def test_windows_tile_time_after_the_initial_delay_and_are_read_after_the_metric_delay():
    slo = replace(POLICY, initial_delay_s=30)
    state = AnalysisState(started_at=START)
    assert due_windows(state, slo, START + 89) == []
    assert next_measurable(state, slo) == START + 90
    delayed = replace(slo, metric_delay_s=4)
    assert due_windows(state, delayed, START + 93) == [] and len(due_windows(state, delayed, START + 94)) == 1
    assert next_measurable(state, delayed) == START + 94
    windows = due_windows(state, slo, START + 211)
    assert windows == [
        Window(1, START + 30, START + 90),
        Window(2, START + 90, START + 150),
        Window(3, START + 150, START + 210),
    ]
    later = record(state, outcome("Passed", START + 90), 1)
    assert [w.index for w in due_windows(later, slo, START + 211)] == [2, 3]
    assert next_measurable(later, slo) == START + 150


def test_catch_up_is_bounded_and_resumes_where_it_stopped():
    state = AnalysisState(started_at=START)
    now = START + 60 * 25 + 1
    first = due_windows(state, POLICY, now)
    assert [w.index for w in first] == list(range(1, CATCH_UP_WINDOWS + 1))
    for w in first:
        state = record(state, outcome("Errored", w.end), w.index)
    assert [w.index for w in due_windows(state, POLICY, now)] == list(range(11, 21))


def measured(table):
    return {index: m for index, m in enumerate(table, start=1)}


def test_analyse_counts_the_measured_due_windows_and_stops_at_the_deciding_one():
    state, result = analyse(
        AnalysisState(started_at=START), POLICY, OBJECTIVES, START + 60 * 6, measured([P, F, F, P, P, P])
    )
    assert result.action == "Rollback" and state.measured_until == 3
    # a concluded analysis counts nothing more
    again, _ = analyse(state, POLICY, OBJECTIVES, START + 60 * 20, measured([P] * 20))
    assert again == state


def test_analyse_waits_for_a_window_not_measured_yet_and_counts_none_after_it():
    table = {1: P, 3: P}
    state, result = analyse(AnalysisState(started_at=START), POLICY, OBJECTIVES, START + 60 * 3, table)
    assert state.measured_until == 1 and result.action == "Continue"


def test_analyse_judges_each_window_at_its_end():
    state, result = analyse(
        AnalysisState(started_at=START), POLICY, OBJECTIVES, START + 130, measured([P, P, P])
    )
    assert [o["at"] for o in state.recent] == [START + 60, START + 120]
    assert result.action == "Continue"


def test_the_analysis_lasts_at_least_a_few_of_the_stable_tracks_p99_latencies():
    slow_model = AnalysisPolicy(interval_s=5, measurements=2, min_latencies=3)
    state = AnalysisState(started_at=START, passed=2, measured_until=2, baseline_p99_s=30.0)
    assert minimum_end(state, slow_model) == (START + 90, "3 stable p99 latencies")
    assert verdict(state, slow_model, START + 12).action == "Continue"
    assert f"analysing until {to_time(START + 90)}" in verdict(state, slow_model, START + 12).message
    assert verdict(state, slow_model, START + 90).action == "Promote"


def test_the_analysis_lasts_at_least_its_minimum_duration_and_says_why_it_waits():
    policy = AnalysisPolicy(interval_s=4, measurements=3, min_latencies=3, min_duration_s=45)
    state = AnalysisState(started_at=START, passed=3, measured_until=3, baseline_p99_s=2.0)
    assert minimum_end(state, policy) == (START + 45, "the pods' liveness window of 45s")
    waiting = verdict(state, policy, START + 12)
    assert (
        waiting.action == "Continue"
        and f"analysing until {to_time(START + 45)} (the pods' liveness window of 45s)" in waiting.message
    )
    assert verdict(state, policy, START + 30) == waiting, "the same status at every pass while it waits"
    assert verdict(state, policy, START + 45).action == "Promote"
    slow_model = replace(state, baseline_p99_s=20.0)
    assert minimum_end(slow_model, policy) == (START + 60, "3 stable p99 latencies")
    assert minimum_end(state, replace(policy, measurements=20)) == (START + 80, "20 windows")


def test_promotion_waits_for_the_relative_evidence_to_settle_and_gives_up_after_max_windows():
    policy = AnalysisPolicy(interval_s=5, measurements=2, settle_windows=3, min_latencies=0)
    waiting = Settlement(False, "waiting for evidence: time per output token 1.10x (98% CI 0.90-1.35x)")
    state = AnalysisState(started_at=START, passed=2, measured_until=2, settlement=waiting)
    decided = verdict(state, policy, START + 100)
    assert decided.action == "Continue" and "waiting for evidence" in decided.message
    stuck = replace(state, passed=6, measured_until=6)
    assert verdict(stuck, policy, START + 100).reason == "AnalysisInconclusive"
    settled = replace(state, settlement=Settlement(True, "time per output token 1.01x"))
    assert verdict(settled, policy, START + 100).action == "Promote"


def test_a_bake_ends_when_its_windows_are_counted_and_rolls_back_on_failures():
    bake = AnalysisPolicy(interval_s=10, measurements=3, failure_limit=0)
    state = AnalysisState(started_at=START)
    for index, kind in enumerate(["Passed", "Inconclusive"], start=1):
        state = record(state, outcome(kind, START + 10 * index), index)
    assert bake_verdict(state, bake).action == "Continue"
    done = record(state, outcome("Errored", START + 30), 3)
    assert bake_verdict(done, bake).action == "Promote"
    broken = record(state, outcome("Failed", START + 30), 3)
    assert (bake_verdict(broken, bake).action, bake_verdict(broken, bake).reason) == (
        "Rollback",
        "SLOBreached",
    )


# --- restarts -----------------------------------------------------------------------------------------------


def through_status(state: AnalysisState) -> AnalysisState:
    return AnalysisState.from_status(json.loads(json.dumps(state.to_status())), started_at=-1.0)


def test_a_restart_in_the_middle_counts_no_window_twice_and_loses_none():
    table = measured([P, I, E, P, P, F, P, P])
    state = AnalysisState(started_at=START)
    state, _ = analyse(state, POLICY, OBJECTIVES, START + 60 * 3 + 5, table)  # windows 1-3
    # the operator restarts; status kept the state; it was down while windows 4-6 ended
    restored = through_status(state)
    assert restored == state
    again, _ = analyse(restored, POLICY, OBJECTIVES, START + 60 * 3 + 5, table)  # the same pass again
    assert again == restored
    restored, result = analyse(restored, POLICY, OBJECTIVES, START + 60 * 8 + 5, table)
    uninterrupted, expected = analyse(
        AnalysisState(started_at=START), POLICY, OBJECTIVES, START + 60 * 8 + 5, table
    )
    assert restored == uninterrupted and result == expected == verdict(
        uninterrupted, POLICY, START + 60 * 8 + 5
    )


@pytest.mark.parametrize(
    "garbled",
    [None, "x", [], {}, {"measuredUntil": "3", "passed": -1, "recent": "no", "measuredAhead": [-1, "x"]}],
)
def test_from_status_tolerates_missing_and_garbled_input(garbled):
    assert AnalysisState.from_status(garbled, started_at=START) == AnalysisState(started_at=START)


def test_from_status_drops_garbled_outcomes_only():
    raw = AnalysisState(started_at=START).to_status() | {
        "measuredUntil": 2,
        "passed": 2,
        "recent": [{"at": START + 60, "kind": "Passed", "message": "ok"}, {"at": START, "kind": "Bogus"}, 7],
    }
    state = AnalysisState.from_status(raw, started_at=0)
    assert state.started_at == START and state.measured_until == 2 and state.passed == 2
    assert state.recent == ({"at": START + 60, "kind": "Passed", "message": "ok"},)


# --- properties ---------------------------------------------------------------------------------------------

outcome_kinds = st.sampled_from(["Passed", "Failed", "Inconclusive", "Errored"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 30), outcome_kinds), max_size=80), st.booleans())
def test_a_window_is_never_counted_twice_whatever_the_order(calls, restart_each_time):
    state = AnalysisState(started_at=START)
    first_kind: dict[int, str] = {}
    for index, kind in calls:
        state = record(state, outcome(kind, START + index * 60), index)
        first_kind.setdefault(index, kind)
        if restart_each_time:
            state = through_status(state)
    counted = state.passed + state.failed + state.inconclusive + state.errored
    assert counted == len(first_kind)
    assert state.passed == sum(k == "Passed" for k in first_kind.values())
    assert state.failed == sum(k == "Failed" for k in first_kind.values())
    # every recorded window is accounted for, below the mark or ahead of it, and none is due again
    recorded = set(range(1, state.measured_until + 1)) | state.measured_ahead
    assert recorded == set(first_kind)
    assert not {w.index for w in due_windows(state, POLICY, START + 31 * 60, limit=100)} & recorded


@st.composite
def slos(draw) -> AnalysisPolicy:
    return AnalysisPolicy(
        measurements=draw(st.integers(1, 10)),
        failure_limit=draw(st.integers(0, 5)),
        inconclusive_limit=draw(st.integers(0, 5)),
        error_limit=draw(st.integers(0, 5)),
        on_inconclusive=draw(st.sampled_from(["Hold", "Rollback"])),
        on_failure=draw(st.sampled_from(["Hold", "Rollback"])),
    )


@settings(max_examples=300, deadline=None)
@given(slos(), st.lists(st.sampled_from(NO_DATA_REASONS), max_size=60))
def test_errors_alone_never_roll_back_or_promote(slo, reasons):
    state = AnalysisState(started_at=START)
    for index, reason in enumerate(reasons, start=1):
        state = record(state, judge(NoData(reason, "x"), OBJECTIVES, at=START + index * 60), index)
        assert verdict(state, slo, START + 10**6).action in ("Continue", "Hold")
