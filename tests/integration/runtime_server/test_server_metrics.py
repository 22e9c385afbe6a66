"""/metrics parses with prometheus_client's parser, carries the DESIGN.md names, and moves with traffic."""

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.design import RUNTIME_METRIC_FAMILIES
from tests.integration.runtime_server.harness import scrape, total
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def families(url: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)}


def test_metrics_have_the_design_names_and_move_as_requests_flow(server):
    assert families(server.url) >= RUNTIME_METRIC_FAMILIES
    before = scrape(server.url)
    for i in range(3):
        body = {"prompt": f"metrics {i}", "max_tokens": 5, "temperature": 0}
        assert httpx.post(f"{server.url}/v1/completions", json=body, timeout=60).status_code == 200
    assert httpx.post(f"{server.url}/v1/completions", json={"prompt": ""}).status_code == 400

    # expert counts are collected from the engine about once a second
    def counted_experts():
        now = scrape(server.url)
        experts = "moe_runtime_expert_tokens_total"
        return now if total(now, experts) > total(before, experts) else None

    after = wait_for(counted_experts, timeout=10, what="the expert counts")

    def moved(name: str, **labels) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert moved("moe_runtime_requests_total", status="200") == 3
    assert moved("moe_runtime_requests_total", status="400") == 1
    assert moved("moe_runtime_request_latency_seconds_count") == 3
    assert moved("moe_runtime_time_to_first_token_seconds_count") == 3
    assert moved("moe_runtime_time_per_output_token_seconds_count") == 3
    assert moved("moe_runtime_generation_tokens_total") > 0
    assert moved("moe_runtime_prompt_tokens_total") >= 3
    assert moved("moe_runtime_batch_size_count") >= 3 * 5
    assert moved("moe_runtime_expert_tokens_total") > 0
    assert {labels for (name, labels) in after if name == "moe_runtime_expert_tokens_total"} >= {
        (("expert", "0"), ("layer", "0"))
    }
    assert total(after, "moe_runtime_queue_depth") == 0
    assert total(after, "moe_runtime_kv_cache_usage_ratio") == 0
