"""The exposition of runtime metrics: expert counter granularity and latency buckets."""

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from moe_runtime.metrics import ExpertMetrics, RuntimeMetrics

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
