"""Canary analysis: judging windows, counting outcomes apart, verdicts, windows that tile time, restarts."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_operator.decisions.analysis import (
    CATCH_UP_WINDOWS,
    RECENT_OUTCOMES,
    SLO,
    AnalysisState,
    Outcome,
    Window,
    analyse,
    due_windows,
    judge,
    next_window_end,
    record,
    verdict,
)
from moe_operator.decisions.promdata import NO_DATA_REASONS, Measurement, NoData

START = 1_000_000.0
SLO_ = SLO(p99_latency_s=2.0, max_error_ratio=0.05, interval_s=60, min_requests=10)

GOOD = Measurement(0, requests=100, p99_latency_s=0.5, error_ratio=0.0, oldest_in_flight_s=0.3)
SLOW = replace(GOOD, p99_latency_s=7.5)
ERRORS = replace(GOOD, error_ratio=0.2)
QUIET = replace(GOOD, requests=3, p99_latency_s=0.4, oldest_in_flight_s=0.1)
DOWN = NoData("PrometheusUnavailable", "connection refused")

# --- judging one window -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "measurement, kind, message",
    [
        (GOOD, "Passed", "error ratio 0 (limit 0.05); p99 latency 0.5s (limit 2s) over 100 requests"),
        (SLOW, "Failed", "p99 latency 7.5s (limit 2s) over 100 requests"),
        (ERRORS, "Failed", "error ratio 0.2 (limit 0.05) over 100 requests"),
        (
            replace(SLOW, error_ratio=0.2),
            "Failed",
            "error ratio 0.2 (limit 0.05); p99 latency 7.5s (limit 2s)",
        ),
        (QUIET, "Inconclusive", "3 requests, fewer than the 10 needed"),
        # a canary so slow that few requests finish does not hide behind "inconclusive"
        (
            replace(QUIET, oldest_in_flight_s=9.0),
            "Failed",
            "a request has been running 9s, over the p99 limit 2s",
        ),
        (replace(QUIET, oldest_in_flight_s=None), "Inconclusive", "fewer than the 10 needed"),
        (replace(GOOD, requests=10), "Passed", "over 10 requests"),  # min_requests itself is enough
        (
            replace(GOOD, p99_latency_s=2.0),
            "Passed",
            "p99 latency 2s (limit 2s)",
        ),  # the threshold itself passes
        (replace(GOOD, p99_latency_s=None), "Inconclusive", "none of 100 requests finished a generation"),
        (
            replace(GOOD, p99_latency_s=None, oldest_in_flight_s=30),
            "Failed",
            "a request has been running 30s",
        ),
        (replace(GOOD, error_ratio=None), "Passed", "error ratio unknown"),
        *[(NoData(reason, "why"), "Errored", f"{reason}: why") for reason in NO_DATA_REASONS],
    ],
)
def test_judge(measurement, kind, message):
    outcome = judge(measurement, SLO_, at=START + 60)
    assert (outcome.kind, outcome.at) == (kind, START + 60)
    assert message in outcome.message


def test_judge_without_an_error_threshold_ignores_errors():
    outcome = judge(ERRORS, replace(SLO_, max_error_ratio=None), at=START)
    assert outcome.kind == "Passed" and "error ratio" not in outcome.message


def test_outcome_keeps_the_values_for_status():
    outcome = judge(SLOW, SLO_, at=START)
    assert (outcome.p99_latency_s, outcome.error_ratio, outcome.requests) == (7.5, 0.0, 100)


def test_invalid_slos_are_refused():
    with pytest.raises(ValueError):
        SLO(p99_latency_s=0)
    with pytest.raises(ValueError):
        SLO(p99_latency_s=1, measurements=0)
    with pytest.raises(ValueError):
        SLO(p99_latency_s=1, failure_limit=-1)


# --- sequences of windows -----------------------------------------------------------------------------------


def replay(sequence, slo=SLO_, state=None):
    """Records one window per measurement in order, stopping at a Promote or Rollback as analyse() does;
    returns the final state and the verdicts after each window."""
    state = state or AnalysisState(started_at=START)
    verdicts = []
    for measurement in sequence:
        index = state.measured_until + 1
        state = record(state, judge(measurement, slo, at=START + index * slo.interval_s), index)
        verdicts.append(verdict(state, slo))
        if verdicts[-1].action in ("Promote", "Rollback"):
            break
    return state, verdicts


P, F, I, E = GOOD, SLOW, QUIET, DOWN  # noqa: E741

SEQUENCES = [
    # (id, slo, measurements, final action, reason, windows counted)
    ("all pass promotes", SLO_, [P] * 5, "Promote", "AnalysisPassed", 5),
    ("four passes continue", SLO_, [P] * 4, "Continue", "AnalysisRunning", 4),
    ("one failure is tolerated", SLO_, [P, F, P, P, P, P], "Promote", "AnalysisPassed", 6),
    ("two failures roll back", SLO_, [P, F, P, F, P, P], "Rollback", "SLOBreached", 4),
    (
        "failure limit 0: the first failure rolls back",
        replace(SLO_, failure_limit=0),
        [P, F],
        "Rollback",
        "SLOBreached",
        2,
    ),
    (
        "on_failure Hold holds",
        replace(SLO_, on_failure="Hold"),
        [F, F, P, P, P, P, P],
        "Hold",
        "SLOBreached",
        7,
    ),
    ("inconclusive up to the limit continue", SLO_, [I, I, I, P], "Continue", "AnalysisRunning", 4),
    ("one more inconclusive holds", SLO_, [I, I, I, I], "Hold", "AnalysisInconclusive", 4),
    (
        "inconclusive hold is not final: passes promote",
        SLO_,
        [I] * 4 + [P] * 5,
        "Promote",
        "AnalysisPassed",
        9,
    ),
    (
        "inconclusive hold is not final: failures roll back",
        SLO_,
        [I] * 4 + [F, F],
        "Rollback",
        "SLOBreached",
        6,
    ),
    (
        "on_inconclusive Rollback",
        replace(SLO_, on_inconclusive="Rollback"),
        [I] * 4,
        "Rollback",
        "AnalysisInconclusive",
        4,
    ),
    ("inconclusive limit 0", replace(SLO_, inconclusive_limit=0), [I], "Hold", "AnalysisInconclusive", 1),
    ("errors up to the limit continue", SLO_, [E] * 4, "Continue", "AnalysisRunning", 4),
    ("errors past the limit hold, never roll back", SLO_, [E] * 12, "Hold", "AnalysisErrored", 12),
    (
        "error limit 0 holds at the first error",
        replace(SLO_, error_limit=0),
        [E],
        "Hold",
        "AnalysisErrored",
        1,
    ),
    ("a recovered Prometheus resumes", SLO_, [E] * 6 + [P] * 5, "Promote", "AnalysisPassed", 11),
    (
        "errors between passes are not consecutive",
        SLO_,
        [E, E, E, E, P, E, E, E, E, P],
        "Continue",
        "AnalysisRunning",
        10,
    ),
    ("errors are never passes", SLO_, [E, P, E, P, E, P, E, P], "Continue", "AnalysisRunning", 8),
    (
        "mixed: fail, inconclusive, error, pass",
        SLO_,
        [P, F, I, E, P, I, P, P, P],
        "Promote",
        "AnalysisPassed",
        9,
    ),
    ("measurements 1", replace(SLO_, measurements=1), [I, E, P], "Promote", "AnalysisPassed", 3),
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
    state, verdicts = replay([F, P, ERRORS])
    assert "error ratio 0.2 (limit 0.05)" in verdicts[-1].message
    assert [o.kind for o in state.failures] == ["Failed", "Failed"]


def test_recent_outcomes_are_bounded_but_failures_are_kept_apart():
    state, _ = replay(
        [F] + [P] * 3 + [I] * 3 + [E] * 4, replace(SLO_, measurements=100, inconclusive_limit=99)
    )
    assert len(state.recent) == RECENT_OUTCOMES
    assert state.failures[0].kind == "Failed" and all(o.kind != "Failed" for o in state.recent)


# --- windows that tile time ---------------------------------------------------------------------------------


def test_windows_tile_time_after_the_initial_delay():
    slo = replace(SLO_, initial_delay_s=30)
    state = AnalysisState(started_at=START)
    assert due_windows(state, slo, START + 89) == []
    assert next_window_end(state, slo) == START + 90
    windows = due_windows(state, slo, START + 211)
    assert windows == [
        Window(1, START + 30, START + 90),
        Window(2, START + 90, START + 150),
        Window(3, START + 150, START + 210),
    ]
    later = record(state, Outcome(START + 90, "Passed", ""), 1)
    assert [w.index for w in due_windows(later, slo, START + 211)] == [2, 3]
    assert next_window_end(later, slo) == START + 150


def test_catch_up_is_bounded_and_resumes_where_it_stopped():
    state = AnalysisState(started_at=START)
    now = START + 60 * 25 + 1
    first = due_windows(state, SLO_, now)
    assert [w.index for w in first] == list(range(1, CATCH_UP_WINDOWS + 1))
    for w in first:
        state = record(state, Outcome(w.end, "Errored", ""), w.index)
    assert [w.index for w in due_windows(state, SLO_, now)] == list(range(11, 21))


def measure_from(table):
    calls = []

    def measure(window: Window):
        calls.append(window.index)
        return table[window.index - 1]

    return measure, calls


def test_analyse_measures_due_windows_and_stops_at_the_deciding_one():
    measure, calls = measure_from([P, F, F, P, P, P])
    state, result = analyse(AnalysisState(started_at=START), SLO_, START + 60 * 6, measure)
    assert result.action == "Rollback" and calls == [1, 2, 3]
    assert state.measured_until == 3
    # a concluded analysis measures nothing more
    again, _ = analyse(state, SLO_, START + 60 * 20, measure)
    assert again == state and calls == [1, 2, 3]


def test_analyse_passes_the_window_to_measure_and_judges_at_its_end():
    seen = []

    def measure(window):
        seen.append(window)
        return replace(GOOD, at=window.end)

    state, result = analyse(AnalysisState(started_at=START), SLO_, START + 130, measure)
    assert seen == [Window(1, START, START + 60), Window(2, START + 60, START + 120)]
    assert [o.at for o in state.recent] == [START + 60, START + 120]
    assert result.action == "Continue"


# --- restarts -----------------------------------------------------------------------------------------------


def through_status(state: AnalysisState) -> AnalysisState:
    return AnalysisState.from_status(json.loads(json.dumps(state.to_status())), started_at=-1.0)


def test_a_restart_in_the_middle_counts_no_window_twice_and_loses_none():
    table = [P, I, E, P, P, F, P, P]
    measure, calls = measure_from(table)
    state = AnalysisState(started_at=START)
    state, _ = analyse(state, SLO_, START + 60 * 3 + 5, measure)  # windows 1-3
    # the operator restarts; status kept the state; it was down while windows 4-6 ended
    restored = through_status(state)
    assert restored == state
    restored, _ = analyse(restored, SLO_, START + 60 * 3 + 5, measure)  # the same pass again: nothing new
    assert calls == [1, 2, 3]
    restored, result = analyse(restored, SLO_, START + 60 * 8 + 5, measure)
    assert calls == list(range(1, 9))
    uninterrupted, expected = analyse(
        AnalysisState(started_at=START), SLO_, START + 60 * 8 + 5, measure_from(table)[0]
    )
    assert restored == uninterrupted and result == expected == verdict(uninterrupted, SLO_)


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
    assert state.recent == (Outcome(START + 60, "Passed", "ok"),)


# --- properties ---------------------------------------------------------------------------------------------

outcome_kinds = st.sampled_from(["Passed", "Failed", "Inconclusive", "Errored"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 30), outcome_kinds), max_size=80), st.booleans())
def test_a_window_is_never_counted_twice_whatever_the_order(calls, restart_each_time):
    state = AnalysisState(started_at=START)
    first_kind: dict[int, str] = {}
    for index, kind in calls:
        state = record(state, Outcome(START + index * 60, kind, ""), index)
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
    assert not {w.index for w in due_windows(state, SLO_, START + 31 * 60, limit=100)} & recorded


@st.composite
def slos(draw) -> SLO:
    return SLO(
        p99_latency_s=1,
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
        state = record(state, judge(NoData(reason, "x"), slo, at=START + index * 60), index)
        assert verdict(state, slo).action in ("Continue", "Hold")
