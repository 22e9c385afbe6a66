"""Names ../shared/DESIGN.md fixes, for the tests that hold the runtime and the chart to them."""

# Counters are exposed with a _total suffix; a parsed exposition names their family without it.
RUNTIME_COUNTERS = {
    "moe_runtime_requests",
    "moe_runtime_prompt_tokens",
    "moe_runtime_generation_tokens",
    "moe_runtime_expert_tokens",
}
RUNTIME_GAUGES_AND_HISTOGRAMS = {
    "moe_runtime_queue_depth",
    "moe_runtime_requests_running",
    "moe_runtime_request_latency_seconds",
    "moe_runtime_time_to_first_token_seconds",
    "moe_runtime_time_per_output_token_seconds",
    "moe_runtime_batch_size",
    "moe_runtime_kv_cache_usage_ratio",
    # the Gateway API Inference Extension's model-server protocol (vLLM's names)
    "vllm:num_requests_waiting",
    "vllm:num_requests_running",
    "vllm:kv_cache_usage_perc",
}
# as prometheus_client's parser names the families
RUNTIME_METRIC_FAMILIES = RUNTIME_COUNTERS | RUNTIME_GAUGES_AND_HISTOGRAMS
# as PromQL names them (histograms add _bucket/_sum/_count on top)
RUNTIME_METRIC_NAMES = {f"{name}_total" for name in RUNTIME_COUNTERS} | RUNTIME_GAUGES_AND_HISTOGRAMS
