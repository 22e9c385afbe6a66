"""The judgement of one window: every rule, what it needs as evidence, and the properties an SRE relies on —
an identical canary is promoted, a slower one never is, a hung request always counts, and machine noise that
slows both tracks alike changes nothing."""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_operator.decisions.analysis import AnalysisPolicy, AnalysisState, record, verdict
from moe_operator.decisions.judge import Objectives, judge, settle
from moe_operator.decisions.promdata import Measurement, NoData, TrackWindow
from moe_operator.decisions.stats import Distribution
from tests.unit.operator.world import track

AT = 1_000_000.0
RELATIVE = Objectives(max_relative_increase=0.2, min_requests=10)


def tracks(latency, ttft, tpot, outcomes=None, oldest=0.0) -> TrackWindow:
    return TrackWindow(
        latency=Distribution.of_samples(latency),
        ttft=Distribution.of_samples(ttft),
        tpot=Distribution.of_samples(tpot),
        outcomes=outcomes if outcomes is not None else {"200": float(len(latency))},
        oldest_in_flight_s=oldest,
        pods=1,
    )


def same_window(candidate: TrackWindow, baseline: TrackWindow | None) -> Measurement:
    return Measurement(AT, candidate, candidate, baseline, baseline)


STABLE = track(0.5, requests=100)


@pytest.mark.parametrize(
    "objectives, candidate, kind, rule, words",
    [
        (Objectives(p99_latency_s=1.0), track(0.5, 100), "Passed", "", "within the objectives"),
        (
            Objectives(p99_latency_s=1.0),
            track(2.0, 100),
            "Failed",
            "Latency",
            "p99 latency 2s over the 1s limit",
        ),
        # 2 of 100 above the p99 limit is within what a p99 allows; 5 of 100 is not
        (
            Objectives(p99_latency_s=1.0),
            tracks([0.5] * 98 + [2.0] * 2, [0.05] * 100, [0.01] * 100),
            "Passed",
            "",
            "within",
        ),
        (
            Objectives(p99_latency_s=1.0),
            tracks([0.5] * 95 + [2.0] * 5, [0.05] * 100, [0.01] * 100),
            "Failed",
            "Latency",
            "5 of 100 requests above it",
        ),
        (Objectives(ttft_p99_s=0.01), track(0.5, 100), "Failed", "TTFT", "time to first token"),
        (
            Objectives(tpot_p99_s=0.001),
            track(0.5, 100),
            "Failed",
            "TimePerOutputToken",
            "time per output token",
        ),
        (
            Objectives(max_error_ratio=0.05),
            track(0.5, 100, errors=20),
            "Failed",
            "Errors",
            "20 of 100 requests failed",
        ),
        (
            Objectives(max_error_ratio=0.05),
            track(0.5, 100, errors=6),
            "Passed",
            "",
            "within",
        ),  # not significant
        (Objectives(max_error_ratio=0.0), track(0.5, 100, errors=1), "Failed", "Errors", "1 of 100"),
        # 429 (a full queue) and 499 (the client left) are not the revision's fault
        (
            Objectives(max_error_ratio=0.0),
            tracks([0.5] * 20, [0.05] * 20, [0.01] * 20, {"200": 20, "429": 40, "499": 3}),
            "Passed",
            "",
            "within",
        ),
        (
            Objectives(p99_latency_s=1.0),
            track(0.5, requests=3),
            "Inconclusive",
            "Evidence",
            "3 requests ended",
        ),
        (Objectives(p99_latency_s=1.0), track(0.5, requests=10), "Passed", "", "within"),
        (RELATIVE, track(1.0, 100), "Failed", "Relative", "more than 1.2x"),
        (RELATIVE, track(0.55, 100), "Passed", "", "within"),
    ],
)
def test_each_rule(objectives, candidate, kind, rule, words):
    outcome = judge(same_window(candidate, STABLE), objectives, AT)
    assert (outcome.kind, outcome.rule) == (kind, rule), outcome.message
    assert words in outcome.message
    assert outcome.figures["canary"]["requests"] == round(candidate.requests)
    assert outcome.figures["stable"]["requests"] == 100


def test_a_hung_request_fails_the_window_however_many_finished_beside_it():
    hung = replace(track(0.5, 500), oldest_in_flight_s=400.0)
    outcome = judge(same_window(hung, STABLE), Objectives(p99_latency_s=10.0), AT)
    assert (outcome.kind, outcome.rule) == ("Failed", "Hung")
    assert "running 400s, over the p99 latency limit (10s)" in outcome.message
    # without an absolute limit: longer than 1.2x the slowest request the stable track ever answered
    outcome = judge(same_window(hung, STABLE), RELATIVE, AT)
    assert (outcome.kind, outcome.rule) == ("Failed", "Hung") and "stable track's slowest" in outcome.message


def test_a_window_that_could_not_be_measured_is_errored():
    outcome = judge(NoData("NoSeries", "no pods scraped"), RELATIVE, AT)
    assert (outcome.kind, outcome.message) == ("Errored", "NoSeries: no pods scraped")


def test_figures_show_both_tracks_for_a_person_to_check():
    outcome = judge(same_window(track(2.0, 50), STABLE), Objectives(p99_latency_s=1.0), AT)
    assert outcome.figures["canary"] == {
        "requests": 50, "p99LatencySeconds": 2.0, "ttftP99Seconds": 0.2, "tpotP99Seconds": 0.02,
        "errorRatio": 0.0, "oldestInFlightSeconds": 0.0,
    }  # fmt: skip
    assert outcome.figures["stable"]["p99LatencySeconds"] == 0.5
    assert outcome.to_status()["canary"] == outcome.figures["canary"]


def test_settlement_waits_for_enough_requests_on_both_tracks():
    few = same_window(track(0.5, 5), STABLE)
    assert not settle(few, RELATIVE).settled and "5 vs 100 requests" in settle(few, RELATIVE).message
    assert settle(same_window(track(0.5, 50), STABLE), RELATIVE).settled
    assert settle(same_window(track(0.5, 50), None), RELATIVE).message == "no stable track to compare with"
    assert settle(same_window(track(0.5, 5), STABLE), Objectives(p99_latency_s=1.0)).settled, (
        "nothing relative"
    )


def with_prompts(t: TrackWindow, computed_share: float, tokens: float = 10_000.0) -> TrackWindow:
    """`t`, having computed `computed_share` of its prompt tokens and found the rest in its prefix cache."""
    return replace(t, prompt_tokens=tokens, prompt_tokens_cached=tokens * (1 - computed_share))


def prefill_track(rnd: random.Random, n: int, computed_share: float, slower: float = 1.0) -> TrackWindow:
    """A track whose time to first token is a fixed part and a part in proportion to the prompt it computed."""
    return with_prompts(draw_track(rnd, n, 0.1, ttft=slower * (0.2 + 0.8 * computed_share)), computed_share)


def test_a_canary_with_a_cold_prefix_cache_is_not_slow_and_a_slow_one_is_still_caught():
    """The stable pods found 80% of their prompt tokens cached; the canary, new, 10%: it computes 4.5x as much of
    its prompts, at the same speed per token."""
    rnd = random.Random(7)
    stable = prefill_track(rnd, 80, computed_share=0.2)
    cold = prefill_track(rnd, 80, computed_share=0.9)
    blind = judge(same_window(replace(cold, prompt_tokens=None), stable), RELATIVE, AT)
    assert (blind.kind, blind.rule) == ("Failed", "Relative"), "without the caches' counts: a false rollback"
    judged = judge(same_window(cold, stable), RELATIVE, AT)
    assert judged.kind == "Passed", judged.message
    assert not judged.settlement.settled and "time to first token" in judged.settlement.message
    assert judged.figures["canary"]["prefixCacheHitRatio"] == 0.1
    assert judged.figures["stable"]["prefixCacheHitRatio"] == 0.8

    slow = prefill_track(rnd, 80, computed_share=0.9, slower=3.0)  # 3x slower per token computed, beyond 1.2
    caught = judge(same_window(slow, stable), RELATIVE, AT)
    assert (caught.kind, caught.rule) == ("Failed", "Relative")
    assert "time to first token" in caught.message and "tolerance scaled by 4.5" in caught.message


def test_a_canary_that_found_more_of_its_prompts_cached_must_settle_within_a_lowered_tolerance():
    rnd = random.Random(11)
    stable = prefill_track(rnd, 80, computed_share=0.9)
    warm = prefill_track(rnd, 80, computed_share=0.3, slower=2.0)  # twice as slow, flattered by its cache
    assert settle(same_window(replace(warm, prompt_tokens=None), stable), RELATIVE).settled, "blind: promoted"
    held = settle(same_window(warm, stable), RELATIVE)
    assert (
        not held.settled and "until it is within 0.4x" in held.message and "tolerance scaled" in held.message
    )


# --- properties -------------------------------------------------------------------------------------------------


BUCKETS = tuple(0.001 * 1.25**i for i in range(60)) + (math.inf,)  # geometric, as fine as the runtime's


def bucketed(samples) -> Distribution:
    counts = [0] * len(BUCKETS)
    for x in samples:
        counts[bisect.bisect_left(BUCKETS, x)] += 1
    return Distribution.of_buckets(list(zip(BUCKETS, counts, strict=True)))


def draw_track(
    rnd: random.Random, n: int, sigma: float, per_token: float = 1.0, ttft: float = 1.0, exact: bool = True
) -> TrackWindow:
    """n requests: prompt and output lengths vary, so end-to-end latency spreads widely; time per token and to
    the first token by `sigma` (batching, a busy machine). `exact`: raw values, else histogram buckets."""
    out, first, per = [], [], []
    for _ in range(n):
        tokens = rnd.randint(8, 128)
        tpot = per_token * 0.02 * rnd.lognormvariate(0, sigma)
        time_to_first = ttft * 0.1 * rnd.lognormvariate(0, sigma)
        out.append(time_to_first + tokens * tpot)
        first.append(time_to_first)
        per.append(tpot)
    if exact:
        return tracks(out, first, per)
    return TrackWindow(bucketed(out), bucketed(first), bucketed(per), {"200": float(n)}, 0.0, 1)


def run_analysis(rnd, sigma, per_window, per_token=1.0, policy=None) -> str:
    """An analysis of windows of `per_window` requests per track, with the totals growing as they do, each
    window judged when it ends."""
    policy = policy or AnalysisPolicy(interval_s=10, measurements=3, settle_windows=4, min_latencies=0)
    state = AnalysisState(started_at=0)
    canary_total = stable_total = None
    windows_to_minimum = math.ceil(policy.min_duration_s / policy.interval_s)
    for index in range(1, max(policy.max_windows, windows_to_minimum) + 2):
        canary = draw_track(rnd, per_window, sigma, per_token=per_token, exact=False)
        stable = draw_track(rnd, per_window, sigma, exact=False)
        canary_total = canary if canary_total is None else _plus(canary_total, canary)
        stable_total = stable if stable_total is None else _plus(stable_total, stable)
        end = index * policy.interval_s
        measured = Measurement(end, canary, canary_total, stable, stable_total)
        state = record(state, judge(measured, RELATIVE, end), index)
        decided = verdict(state, policy, now=end)
        if decided.action != "Continue":
            return decided.reason
    return "Unfinished"


def _plus(a: TrackWindow, b: TrackWindow) -> TrackWindow:
    return replace(a, latency=a.latency + b.latency, ttft=a.ttft + b.ttft, tpot=a.tpot + b.tpot)


# the liveness window stretches a short-windowed analysis (the e2e tests': 4 s windows) from 3 windows to 12, every
# one of them judged: more windows, more chances of a false failure
STRETCHED = AnalysisPolicy(interval_s=4, measurements=3, settle_windows=3, min_latencies=0, min_duration_s=45)


@settings(max_examples=6, deadline=None)
@given(
    st.sampled_from([0.05, 0.2, 0.4]),
    st.integers(15, 40),
    st.integers(0, 2**32 - 1),
    st.sampled_from([None, STRETCHED]),
)
def test_a_canary_identical_in_distribution_to_stable_is_promoted_at_least_95_percent_of_the_time(
    sigma, per_window, seed, policy
):
    """Over whole analyses whose evidence settles (the sample sizes the rule accepts): 95% or more promote, also
    when the liveness window makes them judge four times the windows. 100 analyses per example: the false
    rollback rate is well under 1% here, and with 20 a single one failed."""
    rnd = random.Random(seed)
    results = [run_analysis(rnd, sigma, per_window, policy=policy) for _ in range(100)]
    decided = [r for r in results if r in ("AnalysisPassed", "SLOBreached")]
    assert decided, results
    assert decided.count("AnalysisPassed") / len(decided) >= 0.95, results


@settings(max_examples=6, deadline=None)
@given(st.sampled_from([0.05, 0.2, 0.4]), st.integers(15, 40), st.integers(0, 2**32 - 1))
def test_a_canary_twice_as_slow_per_token_is_rolled_back_and_never_promoted(sigma, per_window, seed):
    rnd = random.Random(seed)
    results = [run_analysis(rnd, sigma, per_window, per_token=2.0) for _ in range(20)]
    assert "AnalysisPassed" not in results, results


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(1e-3, 10.0), min_size=10, max_size=80),
    st.lists(st.floats(1e-3, 10.0), min_size=10, max_size=80),
    st.randoms(use_true_random=False),
)
def test_a_canary_whose_every_token_takes_twice_as_long_never_settles(per_token, first_tokens, rnd):
    """The canary's requests are the stable track's, each token taking twice as long (in any order)."""
    stable = tracks(
        [f + 32 * t for f, t in zip(first_tokens, per_token, strict=False)],
        first_tokens[: len(per_token)],
        per_token,
    )
    doubled = [2 * t for t in per_token]
    rnd.shuffle(doubled)
    canary = tracks(
        [f + 32 * t for f, t in zip(first_tokens, doubled, strict=False)],
        first_tokens[: len(doubled)],
        doubled,
    )
    outcome = judge(same_window(canary, stable), RELATIVE, AT)
    assert not outcome.settlement.settled
    assert "time per output token" in outcome.settlement.message


@settings(max_examples=200, deadline=None)
@given(
    st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.integers(10, 60), st.integers(0, 2**32 - 1),
    st.sampled_from([0.5, 1.0, 2.0, 4.0]), st.sampled_from([0.05, 0.2, 0.5]),
)  # fmt: skip
def test_knowing_the_prefix_caches_never_makes_a_verdict_kinder_to_promotion(
    canary_share, stable_share, n, seed, slower, sigma
):
    """Scaled by the prompt work, the tolerance fails less only where the canary computed more, and settles
    less where it computed less: whatever the shares, what settles knowing them settles blind too; and where the
    canary computed no more than the stable track, knowing them fails exactly what blind fails."""
    rnd = random.Random(seed)
    canary = draw_track(rnd, n, sigma, ttft=slower, per_token=slower**0.5)
    stable = draw_track(rnd, n, sigma)
    blind = judge(same_window(canary, stable), RELATIVE, AT)
    known = judge(
        same_window(with_prompts(canary, canary_share), with_prompts(stable, stable_share)), RELATIVE, AT
    )
    if known.settlement.settled:
        assert blind.settlement.settled
    if canary_share <= stable_share:
        assert (known.kind, known.rule) == (blind.kind, blind.rule), "no more lenient on failing"


@settings(max_examples=100, deadline=None)
@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.integers(20, 80), st.integers(0, 2**32 - 1))
def test_a_canary_as_fast_as_stable_is_never_failed_for_computing_more_of_its_prompts(
    more, stable_share, n, seed
):
    rnd = random.Random(seed)
    canary_share = stable_share + more * (1 - stable_share)
    outcome = judge(
        same_window(prefill_track(rnd, n, canary_share), prefill_track(rnd, n, stable_share)), RELATIVE, AT
    )
    assert outcome.kind == "Passed", outcome.message


objectives = st.builds(
    Objectives,
    p99_latency_s=st.one_of(st.none(), st.floats(0.1, 100)),
    max_relative_increase=st.one_of(st.none(), st.floats(0.05, 1.0)),
    max_error_ratio=st.one_of(st.none(), st.floats(0, 0.5)),
    min_requests=st.integers(1, 50),
)


@settings(max_examples=300, deadline=None)
@given(objectives, st.integers(0, 200), st.floats(1.0, 1e4), st.floats(1e-3, 10.0))
def test_a_request_running_past_the_latency_limit_always_fails_the_window(obj, finished, beyond, latency):
    baseline = track(latency, requests=50)
    if obj.p99_latency_s is not None:
        limit = obj.p99_latency_s
    elif obj.allowed_ratio is not None:
        limit = obj.allowed_ratio * baseline.latency.highest()
    else:
        return  # no latency objective at all: nothing to be hung against
    candidate = (
        replace(track(latency, requests=finished), oldest_in_flight_s=limit + beyond)
        if finished
        else TrackWindow(oldest_in_flight_s=limit + beyond, pods=1)
    )
    outcome = judge(same_window(candidate, baseline), obj, AT)
    assert (
        outcome.kind == "Failed"
        and "Hung" in outcome.message
        or outcome.rule == "Hung"
        or "running" in outcome.message
    )


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from([0.05, 0.2, 0.5]),
    st.integers(10, 80),
    st.integers(10, 80),
    st.integers(0, 2**32 - 1),
    st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0]),
    st.integers(-4, 4),
)
def test_a_slowdown_of_both_tracks_alike_changes_no_verdict(sigma, n, m, seed, slower, k):
    """Machine noise (a busy node) scales both tracks; judged only against each other, nothing changes."""
    rnd = random.Random(seed)
    canary = draw_track(rnd, n, sigma, per_token=slower)
    stable = draw_track(rnd, m, sigma)
    factor = 2.0**k

    def slowed(t: TrackWindow) -> TrackWindow:
        return replace(
            t, latency=t.latency.scaled(factor), ttft=t.ttft.scaled(factor), tpot=t.tpot.scaled(factor)
        )

    plain = judge(same_window(canary, stable), RELATIVE, AT)
    noisy = judge(same_window(slowed(canary), slowed(stable)), RELATIVE, AT)
    assert (plain.kind, plain.rule, plain.settlement.settled) == (
        noisy.kind,
        noisy.rule,
        noisy.settlement.settled,
    )
