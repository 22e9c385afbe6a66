"""Analysis of a revision: count its windows' outcomes (judge.py) and say when to promote, roll back or hold.
Pure. The same analysis runs for a canary beside the stable track and for a newly promoted revision while it
bakes (against the figures its predecessor had).

Outcomes are counted apart, as Argo Rollouts does: Passed, Failed, Inconclusive (too little evidence) and
Errored (Prometheus unreachable or the query failed: never a pass, never a failure).

Windows tile time: window k (k = 1, 2, ...) covers (t_k - interval, t_k] with
t_k = started_at + initial_delay + k * interval. It is measured once `metric_delay` has passed after t_k, so that
samples scraped late are in. Which windows are counted lives in `AnalysisState`, kept in the ModelDeployment's
status: an operator restarted in the middle measures the windows it missed and never counts one twice.

Verdicts, first match wins:
  failed > failure_limit                       -> Rollback (on_failure Hold: Hold)   SLOBreached
  passed >= measurements, evidence settled and
    the analysis has lasted its minimum        -> Promote                            AnalysisPassed
  passed >= measurements, evidence unsettled
    after max_windows windows                  -> on_inconclusive                    AnalysisInconclusive
  inconclusive > inconclusive_limit            -> on_inconclusive (Hold or Rollback) AnalysisInconclusive
  consecutive_errors > error_limit             -> Hold (errors never roll back)      AnalysisErrored
  otherwise                                    -> Continue                           AnalysisRunning
The minimum: the windows it takes to pass, `min_latencies` times the baseline's p99 latency (a model whose
requests take 30 s is not promoted after 12 s) and `min_duration_s` (the canary pods' liveness window: a pod that
stops answering is restarted, and the analysis sees it, before the revision could be promoted). Hold is not
final: windows keep being measured, so a held analysis can still pass or fail, and a recovered Prometheus
resumes it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from moe_operator.decisions.judge import Objectives, Outcome, OutcomeKind, Settlement, judge
from moe_operator.decisions.promdata import Measurement, NoData
from moe_operator.decisions.statusfields import count, finite_number
from moe_operator.timestamps import to_time

Action = Literal["Continue", "Promote", "Rollback", "Hold"]
OUTCOME_KINDS: tuple[OutcomeKind, ...] = ("Passed", "Failed", "Inconclusive", "Errored")

RECENT_OUTCOMES = 10  # kept in status for `kubectl describe`
KEPT_FAILURES = 5  # the measurements that condemned a revision, kept apart from the recent ones
CATCH_UP_WINDOWS = 10  # windows measured in one pass at most; the rest come in the next passes


@dataclass(frozen=True)
class AnalysisPolicy:
    """How long and how many: `spec.slo`'s counting fields, in seconds."""

    interval_s: float = 60
    initial_delay_s: float = 0
    metric_delay_s: float = 0
    measurements: int = 5
    failure_limit: int = 1
    inconclusive_limit: int = 3
    error_limit: int = 4
    on_inconclusive: Literal["Hold", "Rollback"] = "Hold"
    on_failure: Literal["Rollback", "Hold"] = "Rollback"
    min_latencies: float = 3  # the analysis lasts at least this many of the baseline's p99 latencies
    min_duration_s: float = 0  # and at least this long
    settle_windows: int = 3  # passed windows allowed per `measurements` for the relative evidence to settle

    def __post_init__(self) -> None:
        if not self.interval_s > 0 or min(self.initial_delay_s, self.metric_delay_s, self.min_duration_s) < 0:
            raise ValueError(f"need interval_s > 0, delays and min_duration_s >= 0 in {self}")
        if self.measurements < 1 or min(self.failure_limit, self.inconclusive_limit, self.error_limit) < 0:
            raise ValueError(f"need measurements >= 1 and limits >= 0 in {self}")

    @property
    def max_windows(self) -> int:
        return self.measurements * self.settle_windows


@dataclass(frozen=True)
class Window:
    index: int
    start: float
    end: float


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str
    message: str
    measurements: tuple[Mapping[str, Any], ...] = ()  # the outcomes that condemned a revision


CONTINUE = Verdict("Continue", "AnalysisRunning", "")


@dataclass(frozen=True)
class AnalysisState:
    """measured_until: every window up to this index is counted; measured_ahead: windows after it that are
    counted too (only when windows were recorded out of order). baseline_p99_s and settlement come from the
    newest window counted."""

    started_at: float
    measured_until: int = 0
    measured_ahead: frozenset[int] = frozenset()
    passed: int = 0
    failed: int = 0
    inconclusive: int = 0
    errored: int = 0
    consecutive_errors: int = 0
    recent: tuple[Mapping[str, Any], ...] = ()
    failures: tuple[Mapping[str, Any], ...] = ()
    baseline_p99_s: float | None = None
    settlement: Settlement = Settlement(True, "")

    @property
    def measured(self) -> int:
        return self.passed + self.failed + self.inconclusive + self.errored

    def to_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "startedAt": self.started_at,
            "measuredUntil": self.measured_until,
            "measuredAhead": sorted(self.measured_ahead),
            "passed": self.passed,
            "failed": self.failed,
            "inconclusive": self.inconclusive,
            "errored": self.errored,
            "consecutiveErrors": self.consecutive_errors,
            "recent": [dict(o) for o in self.recent],
            "failures": [dict(o) for o in self.failures],
            "settled": self.settlement.settled,
            "evidence": self.settlement.message,
        }
        if self.baseline_p99_s is not None:
            status["baselineP99Seconds"] = self.baseline_p99_s
        return status

    @classmethod
    def from_status(cls, raw: Any, *, started_at: float) -> AnalysisState:
        """The state `to_status()` wrote; what is missing or garbled starts from zero, and a missing start
        time is `started_at` (say, when the canary turned Ready)."""
        if not isinstance(raw, Mapping):
            return cls(started_at=started_at)
        start = finite_number(raw.get("startedAt"))
        until = count(raw.get("measuredUntil")) or 0
        ahead = raw.get("measuredAhead")
        ahead = (
            frozenset(i for i in ahead if count(i) is not None) if isinstance(ahead, list) else frozenset()
        )
        return cls(
            started_at=started_at if start is None else start,
            measured_until=until,
            measured_ahead=frozenset(i for i in ahead if i > until),
            **{key: count(raw.get(key)) or 0 for key in ("passed", "failed", "inconclusive", "errored")},
            consecutive_errors=count(raw.get("consecutiveErrors")) or 0,
            recent=_outcomes(raw.get("recent"))[-RECENT_OUTCOMES:],
            failures=_outcomes(raw.get("failures"))[-KEPT_FAILURES:],
            baseline_p99_s=finite_number(raw.get("baselineP99Seconds")),
            settlement=Settlement(raw.get("settled") is not False, str(raw.get("evidence") or "")),
        )


def window_end(state: AnalysisState, policy: AnalysisPolicy, index: int) -> float:
    return state.started_at + policy.initial_delay_s + index * policy.interval_s


def due_windows(
    state: AnalysisState, policy: AnalysisPolicy, now: float, limit: int = CATCH_UP_WINDOWS
) -> list[Window]:
    """The windows that can be measured by `now` (ended at least metric_delay ago) and are not counted yet,
    oldest first, at most `limit`."""
    due, index = [], state.measured_until + 1
    while len(due) < limit and (end := window_end(state, policy, index)) + policy.metric_delay_s <= now:
        if index not in state.measured_ahead:
            due.append(Window(index, end - policy.interval_s, end))
        index += 1
    return due


def next_measurable(state: AnalysisState, policy: AnalysisPolicy) -> float:
    """When the first window not counted yet can be measured (to look again then)."""
    index = state.measured_until + 1
    while index in state.measured_ahead:
        index += 1
    return window_end(state, policy, index) + policy.metric_delay_s


def record(
    state: AnalysisState, outcome: Outcome, window_index: int, baseline_p99_s: float | None = None
) -> AnalysisState:
    """Counts `outcome` for window `window_index` (>= 1), unless that window is counted already."""
    if window_index <= state.measured_until or window_index in state.measured_ahead:
        return state
    until, ahead = state.measured_until, state.measured_ahead | {window_index}
    while until + 1 in ahead:
        until += 1
        ahead = ahead - {until}
    kind, raw = outcome.kind, outcome.to_status()
    return replace(
        state,
        measured_until=until,
        measured_ahead=ahead,
        passed=state.passed + (kind == "Passed"),
        failed=state.failed + (kind == "Failed"),
        inconclusive=state.inconclusive + (kind == "Inconclusive"),
        errored=state.errored + (kind == "Errored"),
        consecutive_errors=state.consecutive_errors + 1 if kind == "Errored" else 0,
        recent=_newest((*state.recent, raw), RECENT_OUTCOMES),
        failures=_newest((*state.failures, raw), KEPT_FAILURES) if kind == "Failed" else state.failures,
        baseline_p99_s=baseline_p99_s if baseline_p99_s is not None else state.baseline_p99_s,
        settlement=outcome.settlement if kind != "Errored" else state.settlement,
    )


def minimum_end(state: AnalysisState, policy: AnalysisPolicy) -> tuple[float, str]:
    """The analysis lasts at least until then, for the reason given (see the module's docstring)."""
    ends = [
        (window_end(state, policy, policy.measurements), f"{policy.measurements} windows"),
        (
            state.started_at + policy.min_duration_s,
            f"the pods' liveness window of {policy.min_duration_s:g}s",
        ),
    ]
    if state.baseline_p99_s is not None:
        ends.append(
            (
                state.started_at + policy.min_latencies * state.baseline_p99_s,
                f"{policy.min_latencies:g} stable p99 latencies",
            )
        )
    return max(ends, key=lambda end: end[0])


def verdict(state: AnalysisState, policy: AnalysisPolicy, now: float) -> Verdict:
    counts = (
        f"{state.passed}/{policy.measurements} passed, {state.failed} failed, "
        f"{state.inconclusive} inconclusive, {state.errored} errored"
    )
    if state.failed > policy.failure_limit:
        last = state.failures[-1].get("message", "") if state.failures else "no detail kept"
        message = (
            f"{state.failed} failed windows, more than the {policy.failure_limit} allowed ({last}); {counts}"
        )
        action = "Hold" if policy.on_failure == "Hold" else "Rollback"
        return Verdict(action, "SLOBreached", message, tuple(state.failures))
    if state.passed >= policy.measurements:
        evidence = state.settlement.message
        if not state.settlement.settled:
            if state.measured >= policy.max_windows:
                message = f"the comparison with the stable track did not settle in {state.measured} windows ({evidence}); {counts}"
                return Verdict(policy.on_inconclusive, "AnalysisInconclusive", message)
            return Verdict("Continue", "AnalysisRunning", f"{counts}; {evidence}")
        until, why = minimum_end(state, policy)
        if now < until:
            # a time, not a countdown: the status stays the same from pass to pass, and is written once
            return Verdict(
                "Continue", "AnalysisRunning", f"{counts}; analysing until {to_time(until)} ({why})"
            )
        return Verdict("Promote", "AnalysisPassed", f"{counts}" + (f"; {evidence}" if evidence else ""))
    if state.inconclusive > policy.inconclusive_limit:
        message = f"{state.inconclusive} inconclusive windows, more than the {policy.inconclusive_limit} allowed; {counts}"
        return Verdict(policy.on_inconclusive, "AnalysisInconclusive", message)
    if state.consecutive_errors > policy.error_limit:
        last = state.recent[-1].get("message", "") if state.recent else "no detail kept"
        message = (
            f"{state.consecutive_errors} windows in a row could not be measured, more than the "
            f"{policy.error_limit} allowed ({last}); holding until Prometheus answers; {counts}"
        )
        return Verdict("Hold", "AnalysisErrored", message)
    return Verdict("Continue", "AnalysisRunning", counts)


def bake_verdict(state: AnalysisState, policy: AnalysisPolicy, now: float = 0) -> Verdict:
    """A bake ends when its windows are counted: rolled back if too many failed, else complete (Promote).
    Windows without traffic or without Prometheus count too: a bake has nothing to wait for, its revision is
    serving already."""
    counts = f"{state.passed} passed, {state.failed} failed, {state.inconclusive} inconclusive, {state.errored} errored"
    if state.failed > policy.failure_limit:
        last = state.failures[-1].get("message", "") if state.failures else "no detail kept"
        message = (
            f"{state.failed} failed windows, more than the {policy.failure_limit} allowed ({last}); {counts}"
        )
        return Verdict(
            "Hold" if policy.on_failure == "Hold" else "Rollback",
            "SLOBreached",
            message,
            tuple(state.failures),
        )
    if state.measured >= policy.measurements:
        return Verdict("Promote", "BakePassed", f"{state.measured} windows baked: {counts}")
    return Verdict("Continue", "Baking", f"{state.measured}/{policy.measurements} windows baked: {counts}")


def analyse(
    state: AnalysisState,
    policy: AnalysisPolicy,
    objectives: Objectives,
    now: float,
    measured: Mapping[int, Measurement | NoData],
    limit: int = CATCH_UP_WINDOWS,
    conclude: Callable[[AnalysisState, AnalysisPolicy, float], Verdict] = verdict,
) -> tuple[AnalysisState, Verdict]:
    """Counts the due windows that `measured` (window index -> measurement, taken off the reconcile pass) has,
    in order, stopping at the first one missing and at the first Promote or Rollback, so that no window after
    the one that decided is counted. `conclude`: `verdict` for a canary, `bake_verdict` for a bake."""
    decided = conclude(state, policy, now)
    if decided.action in ("Promote", "Rollback"):
        return state, decided
    for window in due_windows(state, policy, now, limit):
        measurement = measured.get(window.index)
        if measurement is None:
            break
        outcome = judge(measurement, objectives, window.end)
        state = record(state, outcome, window.index, _baseline_p99(measurement))
        decided = conclude(state, policy, now)
        if decided.action in ("Promote", "Rollback"):
            break
    return state, conclude(state, policy, now)


def _baseline_p99(measurement: Measurement | NoData) -> float | None:
    if isinstance(measurement, NoData) or measurement.baseline_total is None:
        return None
    return measurement.baseline_total.latency.quantile(0.99)


def _newest(outcomes: tuple[Mapping[str, Any], ...], keep: int) -> tuple[Mapping[str, Any], ...]:
    return tuple(sorted(outcomes, key=lambda o: o.get("at", 0)))[-keep:]


def _outcomes(raw: Any) -> tuple[Mapping[str, Any], ...]:
    if not isinstance(raw, list):
        return ()
    kept = (
        o
        for o in raw
        if isinstance(o, Mapping)
        and o.get("kind") in OUTCOME_KINDS
        and finite_number(o.get("at")) is not None
    )
    return tuple(sorted(kept, key=lambda o: o["at"]))
