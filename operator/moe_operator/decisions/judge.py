"""The judgement of one analysis window: does the candidate revision break its objectives? Pure.

The candidate (the canary, or the newly promoted stable revision while it bakes) is judged on its own and
against its baseline (the stable track measured in the same window, under the same load). A window is Failed
when any rule breaks, each on the evidence it needs:

  Errors     5xx the revision caused, among the requests it answered (429 and 499 are not its fault; a draining
             pod's refusals are not counted at all), significantly above `maxErrorRatio` (one-sided binomial
             test at 5%; with a limit of 0, any 5xx).
  Hung       a request accepted and still unfinished for longer than the latency limit (`p99LatencySeconds`;
             without it, 1 + maxRelativeIncrease times the slowest request of the baseline): censored
             observations count always, however many requests finished beside them.
  Latency, TTFT, TimePerOutputToken
             the share of requests above `p99LatencySeconds`, `ttftP99Seconds` or
             `timePerOutputTokenP99Seconds` significantly above 1% (one-sided binomial test at 1%): with 20
             requests, 3 above the limit fail a window; with 200, 6.
  Relative   over the analysis so far, end-to-end latency, time to first token or time per output token
             significantly more than 1 + `maxRelativeIncrease` times the baseline's: the lower bound of the 98%
             confidence interval of the ratio (stats.ratio) above it. A slowdown of the whole machine moves both
             tracks and leaves the ratio where it was.

A window with no broken rule is Passed when at least `minRequests` requests ended in it, else Inconclusive: it
carries no verdict either way. The relative rules also decide when there is enough evidence to promote
(`Settlement`): the upper bound of the ratio of time to first token and of time per output token within the
tolerance, each with `minRequests` requests on both tracks over the analysis. End-to-end latency mixes prompt
and output lengths, so it only ever fails a canary, never holds one back.

Time to first token depends on how much of each prompt a pod computes rather than finds in its prefix cache. A
new canary starts with a cold cache beside stable pods whose caches are warm, and a prefix-aware router keeps a
conversation on the pods that hold its prefix: the canary then computes more of its prompts than the stable
track does, and would look slower at the same speed. Where the engine counts its prefix-cache lookups, the
tolerance for time to first token is scaled by the ratio of the shares of prompt tokens each track computed
(`prompt_work`), never generously: raised, for failing, when the canary computed more (end-to-end latency, which
holds the time to first token, likewise: time per output token is judged as it is); lowered, for settling,
when it computed less. A cache hit saves at most its share of the time to first token (queueing, fixed costs and
attention over the cached prefix remain), so a canary as fast as the stable track stays within the scaled
tolerance; a slower one fails once it is slower than that, or once the caches agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from moe_operator.decisions.promdata import Measurement, NoData, TrackWindow
from moe_operator.decisions.stats import Ratio, exceedance_p_value, ratio

OutcomeKind = Literal["Passed", "Failed", "Inconclusive", "Errored"]
ERRORS_ALPHA = 0.05
QUANTILE_ALPHA = 0.01
QUANTILE = 0.99
CONFIDENCE = 0.98
# the least share of prompt tokens computed that prompt_work() divides by: a track that found (nearly) every
# token in its cache still computes each prompt's last token, and the ratio must stay finite
COMPUTED_SHARE_FLOOR = 0.05
NOT_THE_REVISIONS_FAULT = ("429", "499")
# the per-request metrics that must show the candidate within tolerance before it is promoted
SETTLING = ("ttft", "tpot")
# the metrics that hold the prefill of prompts, which a prefix cache spares
PREFILL_BOUND = ("ttft", "latency")
METRIC_NAMES = {
    "latency": "end-to-end latency",
    "ttft": "time to first token",
    "tpot": "time per output token",
}


@dataclass(frozen=True)
class Objectives:
    """What `spec.slo` asks of a revision, as the judge takes it. Every threshold is optional."""

    p99_latency_s: float | None = None
    ttft_p99_s: float | None = None
    tpot_p99_s: float | None = None
    max_relative_increase: float | None = None
    max_error_ratio: float | None = None
    min_requests: int = 10

    @property
    def allowed_ratio(self) -> float | None:
        return None if self.max_relative_increase is None else 1 + self.max_relative_increase


@dataclass(frozen=True)
class Settlement:
    """Whether the relative evidence allows promotion, and what it says (for the status)."""

    settled: bool
    message: str


@dataclass(frozen=True)
class Outcome:
    """The judgement of one window. `rule` names what decided it; `figures` are both tracks' numbers."""

    at: float
    kind: OutcomeKind
    rule: str
    message: str
    figures: dict[str, Any]
    settlement: Settlement = Settlement(True, "")

    def to_status(self) -> dict[str, Any]:
        return {"at": self.at, "kind": self.kind, "rule": self.rule, "message": self.message, **self.figures}


def judge(measured: Measurement | NoData, objectives: Objectives, at: float) -> Outcome:
    if isinstance(measured, NoData):
        return Outcome(at, "Errored", measured.reason, f"{measured.reason}: {measured.message}", {})
    candidate, baseline = measured.candidate, measured.baseline
    ratios = _ratios(measured, objectives)
    breaches = [
        *_errors(candidate, objectives),
        *_hung(candidate, measured.baseline_total, objectives),
        *_absolute(candidate, objectives),
        *_relative(ratios, objectives, prompt_work(measured)),
    ]
    figures = {"canary": _figures(candidate)}
    if baseline is not None:
        figures["stable"] = _figures(baseline)
    settlement = settle(measured, objectives, ratios)
    if breaches:
        rules = sorted({rule for rule, _ in breaches}, key=[r for r, _ in breaches].index)
        message = "; ".join(text for _, text in breaches) + f" ({_counts(candidate, baseline)})"
        return Outcome(at, "Failed", rules[0], message, {"rules": rules, **figures}, settlement)
    if candidate.requests < objectives.min_requests:
        message = f"{candidate.requests:.0f} requests ended, fewer than the {objectives.min_requests} needed"
        return Outcome(at, "Inconclusive", "Evidence", message, figures, settlement)
    return Outcome(
        at, "Passed", "", f"within the objectives ({_counts(candidate, baseline)})", figures, settlement
    )


def settle(
    measured: Measurement, objectives: Objectives, ratios: dict[str, Ratio | None] | None = None
) -> Settlement:
    """Enough relative evidence to promote: see the module's docstring. `ratios`: _ratios(), if computed."""
    allowed = objectives.allowed_ratio
    if allowed is None:
        return Settlement(True, "")
    if measured.baseline_total is None:
        return Settlement(False, "no stable track to compare with")
    ratios = ratios if ratios is not None else _ratios(measured, objectives)
    work = prompt_work(measured)
    waiting, seen = [], []
    for metric in SETTLING:
        cand, base = getattr(measured.candidate_total, metric), getattr(measured.baseline_total, metric)
        found = ratios.get(metric)
        limit = _tolerance(allowed, metric, work, failing=False)
        if found is None or min(cand.count, base.count) < objectives.min_requests:
            waiting.append(f"{METRIC_NAMES[metric]}: {cand.count:.0f} vs {base.count:.0f} requests")
        elif found.high > limit:
            waiting.append(
                f"{METRIC_NAMES[metric]} {found.describe()}, until it is within {limit:.3g}x"
                + _work_note(work, limit != allowed)
            )
        else:
            seen.append(f"{METRIC_NAMES[metric]} {found.describe()}")
    if waiting:
        return Settlement(False, "waiting for evidence: " + "; ".join(waiting))
    return Settlement(True, "; ".join(seen))


def _errors(track: TrackWindow, objectives: Objectives):
    limit = objectives.max_error_ratio
    if limit is None:
        return
    if track.error_ratio_override is not None:
        if track.error_ratio_override > limit:
            yield (
                "Errors",
                f"error ratio {track.error_ratio_override:.3g} (limit {limit:g}, from spec.slo.queries)",
            )
        return
    answered = sum(v for status, v in track.outcomes.items() if status not in NOT_THE_REVISIONS_FAULT)
    errors = sum(v for status, v in track.outcomes.items() if status.startswith("5"))
    if errors <= 0 or answered <= 0:
        return
    significant = errors > 0 if limit == 0 else exceedance_p_value(errors, answered, 1 - limit) < ERRORS_ALPHA
    if significant:
        yield "Errors", f"{errors:.0f} of {answered:.0f} requests failed with 5xx (limit {limit:g})"


def _hung(track: TrackWindow, baseline_total: TrackWindow | None, objectives: Objectives):
    age = track.oldest_in_flight_s
    if age is None:
        return
    limit, why = objectives.p99_latency_s, "the p99 latency limit"
    if limit is None and objectives.allowed_ratio is not None and baseline_total is not None:
        slowest = baseline_total.latency.highest()
        if slowest is not None:
            limit, why = (
                objectives.allowed_ratio * slowest,
                f"{objectives.allowed_ratio:g}x the stable track's slowest",
            )
    if limit is not None and age > limit:
        yield "Hung", f"a request has been running {age:.3g}s, over {why} ({limit:.3g}s)"


def _absolute(track: TrackWindow, objectives: Objectives):
    if track.p99_override is not None and objectives.p99_latency_s is not None:
        if track.p99_override > objectives.p99_latency_s:
            yield (
                "Latency",
                (
                    f"p99 latency {track.p99_override:.3g}s (limit {objectives.p99_latency_s:g}s, from spec.slo.queries)"
                ),
            )
        checks = (
            ("TTFT", track.ttft, objectives.ttft_p99_s),
            ("TimePerOutputToken", track.tpot, objectives.tpot_p99_s),
        )
    else:
        checks = (
            ("Latency", track.latency, objectives.p99_latency_s),
            ("TTFT", track.ttft, objectives.ttft_p99_s),
            ("TimePerOutputToken", track.tpot, objectives.tpot_p99_s),
        )
    for rule, dist, limit in checks:
        if limit is None or dist.count <= 0:
            continue
        above = dist.count_above(limit)
        if exceedance_p_value(above, dist.count, QUANTILE) < QUANTILE_ALPHA:
            p99 = dist.quantile(QUANTILE)
            yield (
                rule,
                (
                    f"p99 {_name(rule)} {p99:.3g}s over the {limit:g}s limit: {math.floor(above):.0f} of "
                    f"{dist.count:.0f} requests above it"
                ),
            )


def _ratios(measured: Measurement, objectives: Objectives) -> dict[str, Ratio | None]:
    """Candidate / baseline over the analysis so far, per metric, when a relative objective is set."""
    if objectives.allowed_ratio is None or measured.baseline_total is None:
        return {}
    candidate, baseline = measured.candidate_total, measured.baseline_total
    return {m: ratio(getattr(candidate, m), getattr(baseline, m), CONFIDENCE) for m in METRIC_NAMES}


def prompt_work(measured: Measurement) -> float | None:
    """The share of its prompt tokens the candidate computed (prefix-cache misses) over the baseline's, over the
    analysis so far; None when either is unknown."""
    if measured.baseline_total is None:
        return None
    candidate, baseline = measured.candidate_total.computed_share, measured.baseline_total.computed_share
    if candidate is None or baseline is None:
        return None
    return max(candidate, COMPUTED_SHARE_FLOOR) / max(baseline, COMPUTED_SHARE_FLOOR)


def _relative(ratios: dict[str, Ratio | None], objectives: Objectives, work: float | None):
    allowed = objectives.allowed_ratio
    if allowed is None:
        return
    for metric, found in ratios.items():
        limit = _tolerance(allowed, metric, work, failing=True)
        if found is not None and found.low > limit:
            yield (
                "Relative",
                (
                    f"{METRIC_NAMES[metric]} {found.describe()} the stable track's over the analysis, more than "
                    f"{limit:.3g}x" + _work_note(work, limit != allowed)
                ),
            )


def _tolerance(allowed: float, metric: str, work: float | None, failing: bool) -> float:
    """The allowed ratio for `metric`, scaled by the prompt work where prefill is in it, never generously:
    raised only to fail (the canary computed more), lowered only to settle (it computed less)."""
    if work is None or metric not in (PREFILL_BOUND if failing else ("ttft",)):
        return allowed
    return allowed * (max(1.0, work) if failing else min(1.0, work))


def _work_note(work: float | None, scaled: bool) -> str:
    if work is None or not scaled:
        return ""
    return (
        f" (the tolerance scaled by {work:.3g}: the canary computed that many times the stable track's share of "
        "its prompt tokens, the rest found in prefix caches)"
    )


def _name(rule: str) -> str:
    return {
        "Latency": "latency",
        "TTFT": "time to first token",
        "TimePerOutputToken": "time per output token",
    }[rule]


def _figures(track: TrackWindow) -> dict[str, Any]:
    """A track's window in a few numbers, for the status and `kubectl describe`."""
    figures: dict[str, Any] = {"requests": round(track.requests)}
    for key, dist in (
        ("p99LatencySeconds", track.latency),
        ("ttftP99Seconds", track.ttft),
        ("tpotP99Seconds", track.tpot),
    ):
        value = dist.quantile(QUANTILE)
        if value is not None:
            figures[key] = round(value, 4)
    answered = sum(v for s, v in track.outcomes.items() if s not in NOT_THE_REVISIONS_FAULT)
    if answered > 0:
        figures["errorRatio"] = round(
            sum(v for s, v in track.outcomes.items() if s.startswith("5")) / answered, 4
        )
    if track.computed_share is not None:
        figures["prefixCacheHitRatio"] = round(1 - track.computed_share, 4)
    if track.oldest_in_flight_s is not None:
        figures["oldestInFlightSeconds"] = round(track.oldest_in_flight_s, 3)
    return figures


def _counts(candidate: TrackWindow, baseline: TrackWindow | None) -> str:
    text = f"{candidate.requests:.0f} canary requests"
    return text if baseline is None else f"{text}, {baseline.requests:.0f} stable"
