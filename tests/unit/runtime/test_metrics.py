"""The exposition of runtime metrics: expert counter granularity and latency buckets."""

import bisect
import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from moe_operator.decisions.stats import Distribution, ratio
from moe_runtime.metrics import LATENCY_BUCKETS, ExpertMetrics, RuntimeMetrics

COUNTS = torch.tensor([[1, 2, 3], [10, 20, 30]])  # [layers, experts]


def expert_samples(mode: ExpertMetrics) -> dict[tuple[str, str], float]:
    metrics = RuntimeMetrics(expert_metrics=mode)
    metrics.expert_tokens.add(COUNTS)
    metrics.expert_tokens.add(COUNTS)
    families = text_string_to_metric_families(metrics.render().decode())
    family = next(f for f in families if f.name == "moe_runtime_expert_tokens")
    return {
        (s.labels["layer"], s.labels["expert"]): s.value for s in family.samples if s.name.endswith("_total")
    }


def test_expert_counters_at_each_granularity_keep_the_name_and_labels():
    assert expert_samples(ExpertMetrics.OFF) == {}
    assert expert_samples(ExpertMetrics.EXPERT) == {("all", "0"): 22, ("all", "1"): 44, ("all", "2"): 66}
    per_layer = expert_samples(ExpertMetrics.LAYER_EXPERT)
    assert len(per_layer) == 6 and per_layer[("0", "2")] == 6 and per_layer[("1", "0")] == 20


@pytest.mark.parametrize("timeout", [1.0, 300.0, 600.0, 3600.0, 7200.0])
def test_a_request_that_times_out_lands_in_a_finite_bucket(timeout):
    metrics = RuntimeMetrics(request_timeout_s=timeout)
    slowest = timeout * 1.01  # ended a step after its deadline
    metrics.observe_request(end=slowest, arrival=0.0, first_token_at=None, tokens=0)
    finite = [
        s for f in text_string_to_metric_families(metrics.render().decode())
        if f.name == "moe_runtime_request_latency_seconds"
        for s in f.samples if s.name.endswith("_bucket") and s.labels["le"] != "+Inf"
    ]  # fmt: skip
    assert max(s.value for s in finite) == 1


def as_exported(samples: list[float]) -> Distribution:
    """The samples as the operator reads them back: counts in LATENCY_BUCKETS."""
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    for x in samples:
        counts[bisect.bisect_left(LATENCY_BUCKETS, x)] += 1
    return Distribution.of_buckets(list(zip([*LATENCY_BUCKETS, math.inf], counts, strict=True)))


def lognormal(median: float, sigma: float, n: int) -> list[float]:
    normal = statistics.NormalDist()
    return [median * math.exp(sigma * normal.inv_cdf((i + 0.5) / n)) for i in range(n)]


@settings(max_examples=200, deadline=None)
@given(median=st.floats(0.005, 40.0), sigma=st.floats(0.01, 0.5))
def test_the_buckets_are_fine_enough_for_the_canary_analysis_at_every_latency(median, sigma):
    """The demo's SLO (maxRelativeIncrease 0.5) on 30 canary and 90 stable requests: a canary 1.2x slower is
    never judged significantly more than 1.5x, one 3x slower always is. With buckets 2.5x apart below 0.1 s, a
    1.2x canary came out at up to 2.05x: a good revision rolled back."""
    stable = as_exported(lognormal(median, sigma, 90))
    slightly_slower = ratio(as_exported(lognormal(1.2 * median, sigma, 30)), stable)
    much_slower = ratio(as_exported(lognormal(3 * median, sigma, 30)), stable)
    assert slightly_slower.low <= 1.5, slightly_slower.describe()
    assert much_slower.low > 1.5, much_slower.describe()
