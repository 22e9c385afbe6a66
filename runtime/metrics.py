"""Prometheus metrics of one runtime process, in their own registry (names fixed by DESIGN.md).

`moe_runtime_requests_total{status}` counts generation requests by the HTTP status of their outcome: "200",
"400" (bad input), "429" (queue full), "503" (loading or draining), "504" (timed out), "500" (engine failure)
and "499" (the client went away first).
"""

from __future__ import annotations

import threading

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily

# CPU runs of tiny models answer in milliseconds, real models on busy pods in tens of seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
TOKEN_INTERVAL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ExpertTokenCounts:
    """Cumulative tokens routed to each (layer, expert). The engine thread adds, scrapes read a snapshot:
    thousands of labelled children updated every step would cost more than the step itself."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: torch.Tensor | None = None

    def add(self, counts: torch.Tensor) -> None:
        counts = counts.to("cpu", torch.int64)
        with self._lock:
            self._totals = counts.clone() if self._totals is None else self._totals + counts

    def collect(self):
        family = CounterMetricFamily(
            "moe_runtime_expert_tokens", "Tokens routed to each expert", labels=["layer", "expert"]
        )
        with self._lock:
            totals = None if self._totals is None else self._totals.tolist()
        for layer, row in enumerate(totals or []):
            for expert, count in enumerate(row):
                family.add_metric([str(layer), str(expert)], count)
        yield family


class RuntimeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        self.queue_depth = Gauge("moe_runtime_queue_depth", "Requests waiting to start", registry=r)
        self.requests_running = Gauge(
            "moe_runtime_requests_running", "Requests holding a sequence", registry=r
        )
        self.request_latency = Histogram(
            "moe_runtime_request_latency_seconds",
            "Arrival to last token of finished generations",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "moe_runtime_time_to_first_token_seconds",
            "Arrival to first generated token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_per_output_token = Histogram(
            "moe_runtime_time_per_output_token_seconds",
            "Mean interval between generated tokens after the first, per request",
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
        self.expert_tokens = ExpertTokenCounts()
        r.register(self.expert_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
