"""Canary analysis: judge each measurement window of a new revision against its SLO, count the outcomes,
and say when to promote, roll back or hold. Pure.

Outcomes are counted apart, as Argo Rollouts does: Passed, Failed, Inconclusive (too few requests to
judge) and Errored (Prometheus unreachable or the query failed: never a pass, never a failure).

Windows tile time: window k (k = 1, 2, ...) covers (t_k - interval, t_k] with
t_k = started_at + initial_delay + k * interval, measured by queries over [interval] evaluated at t_k.
Which windows are counted lives in `AnalysisState`, which the caller keeps in the ModelDeployment's status,
so an operator restarted in the middle measures the windows it missed (a bounded number per pass) and
never counts one twice.

Verdicts, first match wins:
  failed > failure_limit            -> Rollback (on_failure Hold: Hold)          SLOBreached
  passed >= measurements            -> Promote                                   AnalysisPassed
  inconclusive > inconclusive_limit -> on_inconclusive (Hold or Rollback)        AnalysisInconclusive
  consecutive_errors > error_limit  -> Hold (errors never roll back)             AnalysisErrored
  otherwise                         -> Continue                                  AnalysisRunning
Hold is not final: the windows keep being measured, so a canary held for inconclusive windows or errors
can still pass or fail, and a recovered Prometheus resumes the analysis.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from moe_operator.decisions.promdata import Measurement, NoData
from moe_operator.decisions.statusfields import count, finite_number

OutcomeKind = Literal["Passed", "Failed", "Inconclusive", "Errored"]
Action = Literal["Continue", "Promote", "Rollback", "Hold"]
OUTCOME_KINDS: tuple[OutcomeKind, ...] = ("Passed", "Failed", "Inconclusive", "Errored")

RECENT_OUTCOMES = 10  # kept in status for `kubectl describe`
KEPT_FAILURES = 5  # the measurements that condemned a revision, kept apart from the recent ones
CATCH_UP_WINDOWS = 10  # windows measured in one pass at most; the rest come in the next passes


@dataclass(frozen=True)
class SLO:
    p99_latency_s: float
    max_error_ratio: float | None = None
    interval_s: float = 60
    initial_delay_s: float = 0
    measurements: int = 5
    failure_limit: int = 1
    inconclusive_limit: int = 3
    error_limit: int = 4
    on_inconclusive: Literal["Hold", "Rollback"] = "Hold"
    min_requests: int = 10
    on_failure: Literal["Rollback", "Hold"] = "Rollback"

    def __post_init__(self) -> None:
        if not self.p99_latency_s > 0 or not self.interval_s > 0 or self.initial_delay_s < 0:
            raise ValueError(f"need p99_latency_s > 0, interval_s > 0 and initial_delay_s >= 0 in {self}")
        if self.measurements < 1 or min(self.failure_limit, self.inconclusive_limit, self.error_limit) < 0:
            raise ValueError(f"need measurements >= 1 and limits >= 0 in {self}")


@dataclass(frozen=True)
class Outcome:
    """The judgement of one window. `message` names each value against its threshold."""

    at: float
    kind: OutcomeKind
    message: str
    p99_latency_s: float | None = None
    error_ratio: float | None = None
    requests: float | None = None

    def to_status(self) -> dict[str, Any]:
        raw = {"at": self.at, "kind": self.kind, "message": self.message}
        for key, value in (("p99LatencySeconds", self.p99_latency_s), ("errorRatio", self.error_ratio)):
            if value is not None:
                raw[key] = value
        if self.requests is not None:
            raw["requests"] = self.requests
        return raw

    @classmethod
    def from_status(cls, raw: Any) -> Outcome | None:
        if not isinstance(raw, Mapping) or raw.get("kind") not in OUTCOME_KINDS:
            return None
        at = finite_number(raw.get("at"))
        if at is None:
            return None
        return cls(
            at=at,
            kind=raw["kind"],
            message=str(raw.get("message", "")),
            p99_latency_s=finite_number(raw.get("p99LatencySeconds")),
            error_ratio=finite_number(raw.get("errorRatio")),
            requests=finite_number(raw.get("requests")),
        )


@dataclass(frozen=True)
class Window:
    index: int
    start: float
    end: float


@dataclass(frozen=True)
class AnalysisState:
    """measured_until: every window up to this index is counted; measured_ahead: windows after it that are
    counted too (only when windows were recorded out of order)."""

    started_at: float
    measured_until: int = 0
    measured_ahead: frozenset[int] = frozenset()
    passed: int = 0
    failed: int = 0
    inconclusive: int = 0
    errored: int = 0
    consecutive_errors: int = 0
    recent: tuple[Outcome, ...] = ()
    failures: tuple[Outcome, ...] = ()

    def to_status(self) -> dict[str, Any]:
        return {
            "startedAt": self.started_at,
            "measuredUntil": self.measured_until,
            "measuredAhead": sorted(self.measured_ahead),
            "passed": self.passed,
            "failed": self.failed,
            "inconclusive": self.inconclusive,
            "errored": self.errored,
            "consecutiveErrors": self.consecutive_errors,
            "recent": [o.to_status() for o in self.recent],
            "failures": [o.to_status() for o in self.failures],
        }

    @classmethod
    def from_status(cls, raw: Any, *, started_at: float) -> AnalysisState:
        """The state `to_status()` wrote; what is missing or garbled starts from zero, and a missing start
        time is `started_at` (say, when the canary was created)."""
        if not isinstance(raw, Mapping):
            return cls(started_at=started_at)
        start = finite_number(raw.get("startedAt"))
        until = count(raw.get("measuredUntil"))
        ahead = raw.get("measuredAhead")
        ahead = (
            frozenset(i for i in ahead if count(i) is not None) if isinstance(ahead, list) else frozenset()
        )
        outcomes = {key: _outcomes(raw.get(key)) for key in ("recent", "failures")}
        return cls(
            started_at=started_at if start is None else start,
            measured_until=until or 0,
            measured_ahead=frozenset(i for i in ahead if i > (until or 0)),
            **{key: count(raw.get(key)) or 0 for key in ("passed", "failed", "inconclusive", "errored")},
            consecutive_errors=count(raw.get("consecutiveErrors")) or 0,
            recent=outcomes["recent"][-RECENT_OUTCOMES:],
            failures=outcomes["failures"][-KEPT_FAILURES:],
        )


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str
    message: str


def judge(measurement: Measurement | NoData, slo: SLO, at: float) -> Outcome:
    """The outcome of one window (ending at `at`)."""
    if isinstance(measurement, NoData):
        return Outcome(at, "Errored", f"{measurement.reason}: {measurement.message}")
    m, limit = measurement, slo.p99_latency_s
    values = dict(p99_latency_s=m.p99_latency_s, error_ratio=m.error_ratio, requests=m.requests)
    stuck = m.oldest_in_flight_s is not None and m.oldest_in_flight_s > limit
    stuck_message = (
        f"a request has been running {m.oldest_in_flight_s:.3g}s, over the p99 limit {limit:g}s"
        if stuck
        else ""
    )
    if m.requests < slo.min_requests:
        if stuck:
            return Outcome(at, "Failed", f"{stuck_message} ({m.requests:.0f} requests finished)", **values)
        return Outcome(
            at,
            "Inconclusive",
            f"{m.requests:.0f} requests, fewer than the {slo.min_requests} needed",
            **values,
        )
    breaches, checks = [], []
    if slo.max_error_ratio is not None and m.error_ratio is None:
        checks.append("error ratio unknown")
    elif slo.max_error_ratio is not None and m.error_ratio is not None:
        text = f"error ratio {m.error_ratio:.3g} (limit {slo.max_error_ratio:g})"
        (breaches if m.error_ratio > slo.max_error_ratio else checks).append(text)
    if m.p99_latency_s is not None:
        text = f"p99 latency {m.p99_latency_s:.3g}s (limit {limit:g}s)"
        (breaches if m.p99_latency_s > limit else checks).append(text)
    elif stuck:
        breaches.append(stuck_message)
    if breaches:
        return Outcome(at, "Failed", "; ".join(breaches) + f" over {m.requests:.0f} requests", **values)
    if m.p99_latency_s is None:
        return Outcome(
            at, "Inconclusive", f"none of {m.requests:.0f} requests finished a generation", **values
        )
    return Outcome(at, "Passed", "; ".join(checks) + f" over {m.requests:.0f} requests", **values)


def window_end(state: AnalysisState, slo: SLO, index: int) -> float:
    return state.started_at + slo.initial_delay_s + index * slo.interval_s


def due_windows(state: AnalysisState, slo: SLO, now: float, limit: int = CATCH_UP_WINDOWS) -> list[Window]:
    """The windows that have ended by `now` and are not counted yet, oldest first, at most `limit`."""
    due, index = [], state.measured_until + 1
    while len(due) < limit and (end := window_end(state, slo, index)) <= now:
        if index not in state.measured_ahead:
            due.append(Window(index, end - slo.interval_s, end))
        index += 1
    return due


def next_window_end(state: AnalysisState, slo: SLO) -> float:
    """When the first window not counted yet ends (to requeue the ModelDeployment then)."""
    index = state.measured_until + 1
    while index in state.measured_ahead:
        index += 1
    return window_end(state, slo, index)


def record(state: AnalysisState, outcome: Outcome, window_index: int) -> AnalysisState:
    """Counts `outcome` for window `window_index` (>= 1), unless that window is counted already."""
    if window_index <= state.measured_until or window_index in state.measured_ahead:
        return state
    until, ahead = state.measured_until, state.measured_ahead | {window_index}
    while until + 1 in ahead:
        until += 1
        ahead = ahead - {until}
    kind = outcome.kind
    return replace(
        state,
        measured_until=until,
        measured_ahead=ahead,
        passed=state.passed + (kind == "Passed"),
        failed=state.failed + (kind == "Failed"),
        inconclusive=state.inconclusive + (kind == "Inconclusive"),
        errored=state.errored + (kind == "Errored"),
        consecutive_errors=state.consecutive_errors + 1 if kind == "Errored" else 0,
        recent=_newest((*state.recent, outcome), RECENT_OUTCOMES),
        failures=_newest((*state.failures, outcome), KEPT_FAILURES) if kind == "Failed" else state.failures,
    )


def verdict(state: AnalysisState, slo: SLO) -> Verdict:
    counts = (
        f"{state.passed}/{slo.measurements} passed, {state.failed} failed, "
        f"{state.inconclusive} inconclusive, {state.errored} errored"
    )
    if state.failed > slo.failure_limit:
        last = state.failures[-1].message if state.failures else "no detail kept"
        message = f"{state.failed} failed measurements, more than the {slo.failure_limit} allowed ({last}); {counts}"
        return Verdict("Hold" if slo.on_failure == "Hold" else "Rollback", "SLOBreached", message)
    if state.passed >= slo.measurements:
        return Verdict("Promote", "AnalysisPassed", counts)
    if state.inconclusive > slo.inconclusive_limit:
        message = f"{state.inconclusive} inconclusive measurements, more than the {slo.inconclusive_limit} allowed; {counts}"
        return Verdict(slo.on_inconclusive, "AnalysisInconclusive", message)
    if state.consecutive_errors > slo.error_limit:
        last = state.recent[-1].message if state.recent else "no detail kept"
        message = (
            f"{state.consecutive_errors} measurements in a row could not be taken, more than the "
            f"{slo.error_limit} allowed ({last}); holding until Prometheus answers; {counts}"
        )
        return Verdict("Hold", "AnalysisErrored", message)
    return Verdict("Continue", "AnalysisRunning", counts)


def analyse(
    state: AnalysisState,
    slo: SLO,
    now: float,
    measure: Callable[[Window], Measurement | NoData],
    limit: int = CATCH_UP_WINDOWS,
) -> tuple[AnalysisState, Verdict]:
    """One pass: measures the due windows in order, stopping at the first Promote or Rollback, so that no
    window after the one that decided is counted. `measure` does the I/O (Prometheus.canary_window)."""
    if verdict(state, slo).action in ("Promote", "Rollback"):
        return state, verdict(state, slo)
    for window in due_windows(state, slo, now, limit):
        state = record(state, judge(measure(window), slo, window.end), window.index)
        if verdict(state, slo).action in ("Promote", "Rollback"):
            break
    return state, verdict(state, slo)


def _newest(outcomes: tuple[Outcome, ...], keep: int) -> tuple[Outcome, ...]:
    return tuple(sorted(outcomes, key=lambda o: o.at))[-keep:]


def _outcomes(raw: Any) -> tuple[Outcome, ...]:
    if not isinstance(raw, list):
        return ()
    parsed = (Outcome.from_status(item) for item in raw)
    return tuple(sorted((o for o in parsed if o is not None), key=lambda o: o.at))
