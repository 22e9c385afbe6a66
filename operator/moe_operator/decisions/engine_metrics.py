"""What each serving engine calls the series the operator reads: one table, used by every query (promql.py).

Prometheus adds `namespace`, `model_deployment`, `revision` and `pod` to every series of a pod (the chart's
PodMonitor relabelling, DESIGN.md), so the queries select by those whatever the engine. vLLM has renamed
metrics before (`gpu_cache_usage_perc` became `kv_cache_usage_perc`): tests scrape a real server of each engine
and fail when a name here is missing.
"""

from __future__ import annotations

from dataclasses import dataclass

MOE_RUNTIME, VLLM, SGLANG = "moe-runtime", "vllm", "sglang"


@dataclass(frozen=True)
class EngineMetrics:
    queue_depth: str  # gauge: requests waiting to start
    running: str  # gauge: requests being generated
    kv_cache_usage: str  # gauge: fraction of the KV cache in use, 0..1
    latency: str  # histogram (base name): end-to-end latency of a request
    ttft: str  # histogram: time to first token
    tpot: str  # histogram: time per output token, one observation per request
    outcomes: str  # counter of answered requests with an HTTP status label
    outcome_label: str  # that label: "status" (200, 503, ...) or grouped ("2xx", "5xx")
    outcome_selector: str = ""  # extra matchers on the outcome counter (which handlers are generation)
    in_flight_age: str | None = None  # gauge: age of the oldest unfinished request, if the engine has one
    # counters of prompt tokens looked up in the prefix cache, and of those found there, if the engine has them
    prefix_cache_queries: str | None = None
    prefix_cache_hits: str | None = None

    def histograms(self) -> dict[str, str]:
        return {"latency": self.latency, "ttft": self.ttft, "tpot": self.tpot}

    def names(self) -> list[str]:
        """Every series name the operator may query, as the engine exposes it."""
        names = [
            self.queue_depth,
            self.running,
            self.kv_cache_usage,
            *(f"{h}_bucket" for h in self.histograms().values()),
            self.outcomes,
        ]
        optional = (self.in_flight_age, self.prefix_cache_queries, self.prefix_cache_hits)
        return names + [name for name in optional if name]


ENGINES: dict[str, EngineMetrics] = {
    MOE_RUNTIME: EngineMetrics(
        queue_depth="moe_runtime_queue_depth",
        running="moe_runtime_requests_running",
        kv_cache_usage="moe_runtime_kv_cache_usage_ratio",
        latency="moe_runtime_request_latency_seconds",
        ttft="moe_runtime_time_to_first_token_seconds",
        tpot="moe_runtime_time_per_output_token_seconds",
        outcomes="moe_runtime_requests_total",
        outcome_label="status",
        in_flight_age="moe_runtime_oldest_request_age_seconds",
        prefix_cache_queries="moe_runtime_prefix_cache_queries_total",
        prefix_cache_hits="moe_runtime_prefix_cache_hits_total",
    ),
    # vLLM 0.32 (measured on a real server): HTTP statuses come grouped from prometheus-fastapi-instrumentator
    VLLM: EngineMetrics(
        queue_depth="vllm:num_requests_waiting",
        running="vllm:num_requests_running",
        kv_cache_usage="vllm:kv_cache_usage_perc",
        latency="vllm:e2e_request_latency_seconds",
        ttft="vllm:time_to_first_token_seconds",
        tpot="vllm:request_time_per_output_token_seconds",
        outcomes="http_requests_total",
        outcome_label="status",
        outcome_selector='handler=~"/v1/completions|/v1/chat/completions"',
        prefix_cache_queries="vllm:prefix_cache_queries_total",
        prefix_cache_hits="vllm:prefix_cache_hits_total",
    ),
    # SGLang 0.5.23 (--enable-metrics), read from its source (sglang/srt/observability/metrics_collector.py): no
    # SGLang server runs here, so no test scrapes one. Exact HTTP statuses per endpoint; scheduler gauges from TP
    # rank 0 only (one series per data-parallel rank)
    SGLANG: EngineMetrics(
        queue_depth="sglang:num_queue_reqs",
        running="sglang:num_running_reqs",
        kv_cache_usage="sglang:token_usage",
        latency="sglang:e2e_request_latency_seconds",
        ttft="sglang:time_to_first_token_seconds",
        tpot="sglang:request_time_per_output_token_seconds",
        outcomes="sglang:http_responses_total",
        outcome_label="status_code",
        outcome_selector='endpoint=~"/v1/completions|/v1/chat/completions|/generate"',
    ),
}


def engine_metrics(engine: str) -> EngineMetrics:
    return ENGINES[engine]
