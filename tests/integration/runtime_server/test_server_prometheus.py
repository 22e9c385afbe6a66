"""A real Prometheus scrapes a real runtime: the series and labels the operator's queries will read."""

import json

import pytest

from tests.integration.prometheus import PrometheusServer
from tests.waiting import wait_for

pytestmark = pytest.mark.integration
LABELS = {"namespace": "models", "model_deployment": "qwen", "revision": "abc123"}
SELECTOR = ",".join(f'{key}="{value}"' for key, value in LABELS.items())
REQUESTS = 3


def scalar(prometheus, query: str) -> float:
    result = prometheus.custom_query(query)
    return float(result[0]["value"][1]) if result else 0.0


def test_prometheus_scrapes_runtime_metrics_with_the_deployment_labels(server, client, checkpoint, tmp_path):
    assert "--expert-metrics" in server.command and "layer_expert" in server.command
    top_k = json.loads((checkpoint / "config.json").read_text())["num_experts_per_tok"]
    ok_requests = f'sum(moe_runtime_requests_total{{{SELECTOR},status="200"}})'
    # layer 0 is sparse in the test checkpoint: every token fed through the model picks top_k experts there;
    # the `server` fixture counts per layer (--expert-metrics layer_expert), which this query needs
    routed = f'sum(moe_runtime_expert_tokens_total{{{SELECTOR},layer="0"}})'
    with PrometheusServer(tmp_path, {server.url.removeprefix("http://"): LABELS}) as running:
        prometheus = running.client()
        wait_for(lambda: scalar(prometheus, 'up{job="moe-runtime"}') == 1, timeout=30, what="a first scrape")
        requests_before, routed_before = scalar(prometheus, ok_requests), scalar(prometheus, routed)

        model = client.models.list().data[0].id
        answers = [
            client.completions.create(model=model, prompt=f"scrape me {i}", max_tokens=4, temperature=0)
            for i in range(REQUESTS)
        ]
        # the model reads each prompt token and each generated token but the last
        fed = sum(a.usage.prompt_tokens + a.usage.completion_tokens - 1 for a in answers)

        wait_for(lambda: scalar(prometheus, ok_requests) >= requests_before + REQUESTS, timeout=30,
                 what="the requests in Prometheus")  # fmt: skip
        wait_for(lambda: scalar(prometheus, routed) == routed_before + fed * top_k, timeout=30,
                 what=f"{fed * top_k} more routed tokens in layer 0")  # fmt: skip
        p99 = scalar(
            prometheus,
            f"histogram_quantile(0.99, sum by (le) (moe_runtime_request_latency_seconds_bucket{{{SELECTOR}}}))",
        )
        assert p99 > 0
        depth = prometheus.custom_query(f"moe_runtime_queue_depth{{{SELECTOR}}}")
        assert depth and {key: depth[0]["metric"][key] for key in LABELS} == LABELS
