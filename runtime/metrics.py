"""Prometheus metrics of one runtime process, in their own registry (names fixed by DESIGN.md).

`moe_runtime_requests_total{status}` counts generation requests by the HTTP status of their outcome: "200",
"400" (bad input), "413" (body too large), "429" (queue full), "503" (loading, draining or engine failed),
"504" (timed out), "500" (engine failure) and "499" (the client went away first).

`moe_runtime_request_latency_seconds` (end to end: accepted to last event) and
`moe_runtime_time_per_output_token_seconds` count every accepted request however it ends: finished,
stopped, timed out, cancelled by its client or failed. Leaving the slow endings out would hide exactly the
requests a p99 is about. The latency buckets reach past the request timeout.

`moe_runtime_oldest_request_age_seconds` (gauge): seconds since the oldest request that was accepted and has
not finished arrived; 0 when idle. A revision so slow that few requests finish cannot hide behind a latency
histogram fed only by the few that do: this gauge grows with the stuck ones. Canary analysis should read it
beside the latency quantiles, e.g. `max(moe_runtime_oldest_request_age_seconds{revision="..."})` against the
latency objective.

`moe_runtime_expert_tokens_total{layer,expert}`: tokens routed to each expert, at the granularity
`--expert-metrics` sets: `off` (no samples), `expert` (one series per expert, summed over the layers, with
layer="all"; the default: bounded by the expert count) or `layer_expert` (one series per layer and expert:
thousands on a real model). The same query works in every mode, e.g. `sum by (expert) (rate(...[5m]))`.
"""

from __future__ import annotations

import threading
from enum import StrEnum

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily

# CPU runs of tiny models answer in milliseconds, real models on busy pods in tens of seconds, and a request
# may run until its timeout (300 s by default) or longer when there is none. Dense between 0.1 s and 60 s,
# where latency SLOs sit (as vLLM's): a p99 is interpolated inside one bucket, so a coarse bucket blurs a
# breach of a threshold inside it.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 7.5,
    10, 15, 20, 30, 45, 60, 120, 300, 600, 1200, 1800, 3600,
)  # fmt: skip
TOKEN_INTERVAL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def latency_buckets(request_timeout_s: float | None) -> tuple[float, ...]:
    """The fixed buckets, plus one at twice the timeout when the timeout reaches the top one (a request that
    times out ends a little after its deadline: it must land in a finite bucket above it)."""
    if request_timeout_s and request_timeout_s >= LATENCY_BUCKETS[-1]:
        return (*LATENCY_BUCKETS, 2 * request_timeout_s)
    return LATENCY_BUCKETS


class ExpertMetrics(StrEnum):
    OFF = "off"
    EXPERT = "expert"
    LAYER_EXPERT = "layer_expert"


class ExpertTokenCounts:
    """Cumulative tokens routed to each (layer, expert). The engine thread adds, scrapes read a snapshot:
    thousands of labelled children updated every step would cost more than the step itself."""

    LABELS = ("layer", "expert")

    def __init__(self, mode: ExpertMetrics = ExpertMetrics.EXPERT) -> None:
        self.mode = mode
        self._lock = threading.Lock()
        self._totals: torch.Tensor | None = None

    def add(self, counts: torch.Tensor) -> None:
        if self.mode is ExpertMetrics.OFF:
            return
        counts = counts.to("cpu", torch.int64)
        if self.mode is ExpertMetrics.EXPERT:
            counts = counts.sum(dim=0, keepdim=True)
        with self._lock:
            self._totals = counts.clone() if self._totals is None else self._totals + counts

    def collect(self):
        family = CounterMetricFamily(
            "moe_runtime_expert_tokens", "Tokens routed to each expert", labels=list(self.LABELS)
        )
        with self._lock:
            totals = None if self._totals is None else self._totals.tolist()
        for layer, row in enumerate(totals or []):
            layer_label = "all" if self.mode is ExpertMetrics.EXPERT else str(layer)
            for expert, count in enumerate(row):
                family.add_metric([layer_label, str(expert)], count)
        yield family


class RuntimeMetrics:
    def __init__(
        self, request_timeout_s: float | None = None, expert_metrics: ExpertMetrics = ExpertMetrics.EXPERT
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        self.queue_depth = Gauge("moe_runtime_queue_depth", "Requests waiting to start", registry=r)
        self.requests_running = Gauge(
            "moe_runtime_requests_running", "Requests holding a sequence", registry=r
        )
        self.oldest_request_age = Gauge(
            "moe_runtime_oldest_request_age_seconds",
            "Age of the oldest request accepted and not finished; 0 when idle",
            registry=r,
        )
        buckets = latency_buckets(request_timeout_s)
        self.request_latency = Histogram(
            "moe_runtime_request_latency_seconds",
            "Acceptance to end of every accepted generation request, however it ended",
            buckets=buckets,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "moe_runtime_time_to_first_token_seconds",
            "Arrival to first generated token",
            buckets=buckets,
            registry=r,
        )
        self.time_per_output_token = Histogram(
            "moe_runtime_time_per_output_token_seconds",
            "Mean interval between generated tokens after the first, per request (two tokens or more)",
            buckets=TOKEN_INTERVAL_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "moe_runtime_requests",
            "Generation requests by HTTP status of their outcome",
            ["status"],
            registry=r,
        )
        self.prompt_tokens = Counter("moe_runtime_prompt_tokens", "Prompt tokens prefilled", registry=r)
        self.generation_tokens = Counter("moe_runtime_generation_tokens", "Tokens generated", registry=r)
        self.batch_size = Histogram(
            "moe_runtime_batch_size", "Sequences per engine step", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.kv_cache_usage = Gauge(
            "moe_runtime_kv_cache_usage_ratio", "Fraction of KV cache in use", registry=r
        )
        self.expert_tokens = ExpertTokenCounts(expert_metrics)
        r.register(self.expert_tokens)

    def observe_request(self, end: float, arrival: float, first_token_at: float | None, tokens: int) -> None:
        self.request_latency.observe(end - arrival)
        if first_token_at is not None and tokens > 1:
            self.time_per_output_token.observe((end - first_token_at) / (tokens - 1))

    def render(self) -> bytes:
        return generate_latest(self.registry)
