"""Statistics over latency distributions: the scale ratio with its interval, quantiles and exceedances of
histograms, the binomial tail."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_operator.decisions.stats import Distribution, exceedance_p_value, ratio

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, math.inf)


def histogram(samples, bounds=BUCKETS) -> Distribution:
    counts = [0] * len(bounds)
    for x in samples:
        counts[next(i for i, b in enumerate(bounds) if x <= b)] += 1
    return Distribution.of_buckets(list(zip(bounds, counts, strict=True)))


positive = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)
samples = st.lists(positive, min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(samples)
def test_a_sample_against_itself_scaled_reads_exactly_that_scale(values):
    base = Distribution.of_samples(values)
    for factor in (1, 2, 4):
        found = ratio(base.scaled(factor), base)
        assert found.estimate == pytest.approx(factor, rel=1e-6)
        assert found.low <= found.estimate <= found.high


@settings(max_examples=200, deadline=None)
@given(samples, samples, st.integers(-6, 6))
def test_the_ratio_is_unchanged_when_both_samples_slow_down_alike(a, b, k):
    factor = 2.0**k  # a power of two scales floats exactly
    plain = ratio(Distribution.of_samples(a), Distribution.of_samples(b))
    slowed = ratio(Distribution.of_samples(a).scaled(factor), Distribution.of_samples(b).scaled(factor))
    assert (slowed.estimate, slowed.low, slowed.high) == pytest.approx(
        (plain.estimate, plain.low, plain.high), rel=1e-9
    )


@settings(max_examples=100, deadline=None)
@given(samples, samples)
def test_the_interval_narrows_as_confidence_falls(a, b):
    wide = ratio(Distribution.of_samples(a), Distribution.of_samples(b), confidence=0.99)
    narrow = ratio(Distribution.of_samples(a), Distribution.of_samples(b), confidence=0.8)
    assert wide.low <= narrow.low <= narrow.estimate <= narrow.high <= wide.high


def test_the_interval_covers_the_true_ratio_as_often_as_it_says():
    rnd, covered, trials = random.Random(7), 0, 400
    for _ in range(trials):
        base = [rnd.lognormvariate(0, 0.5) for _ in range(30)]
        candidate = [1.5 * rnd.lognormvariate(0, 0.5) for _ in range(30)]
        found = ratio(Distribution.of_samples(candidate), Distribution.of_samples(base), confidence=0.9)
        covered += found.low <= 1.5 <= found.high
    assert covered / trials >= 0.85  # 90% nominal; the untied variance makes it a little conservative


def test_histograms_give_about_the_ratio_the_raw_samples_give():
    rnd = random.Random(3)
    base = [rnd.lognormvariate(-2, 0.4) for _ in range(200)]
    slow = [2 * rnd.lognormvariate(-2, 0.4) for _ in range(200)]
    raw = ratio(Distribution.of_samples(slow), Distribution.of_samples(base))
    binned = ratio(histogram(slow), histogram(base))
    assert binned.estimate == pytest.approx(raw.estimate, rel=0.15)
    assert binned.low > 1.2, "a doubling stands out of a histogram's interpolation too"


def test_no_ratio_without_observations_on_both_sides():
    assert ratio(Distribution(), Distribution.of_samples([1.0])) is None
    assert ratio(Distribution.of_samples([1.0]), Distribution()) is None


def test_quantiles_and_exceedances_interpolate_inside_buckets_as_prometheus_does():
    dist = Distribution.of_buckets([(1.0, 10), (2.0, 10), (math.inf, 0)])
    assert dist.count == 20
    assert dist.quantile(0.5) == pytest.approx(1.0)
    assert dist.quantile(0.75) == pytest.approx(1.5)
    assert dist.count_above(1.5) == pytest.approx(5.0)
    assert dist.count_above(0.0) == pytest.approx(20.0) and dist.count_above(2.0) == 0
    overflow = Distribution.of_buckets([(1.0, 1), (math.inf, 3)])
    assert overflow.quantile(0.99) == 1.0, "the +Inf bucket counts at the highest finite bound"
    assert Distribution().quantile(0.5) is None


def test_counter_resets_count_as_nothing():
    assert Distribution.of_buckets([(1.0, -3), (2.0, float("nan")), (3.0, 2)]).count == 2


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 60), st.integers(1, 60), st.sampled_from([0.9, 0.95, 0.99]))
def test_the_binomial_tail_is_exact(above, total, q):
    above = min(above, total)
    p = 1 - q
    exact = sum(math.comb(total, i) * p**i * (1 - p) ** (total - i) for i in range(above, total + 1))
    assert exceedance_p_value(above, total, q) == pytest.approx(
        min(1.0, exact) if above > 0 else 1.0, rel=1e-9, abs=1e-12
    )
