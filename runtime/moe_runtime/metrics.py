"""Prometheus metrics of one runtime process, in their own registry (names fixed by DESIGN.md).

`moe_runtime_requests_total{status}` counts generation requests by the HTTP status of their outcome: "200",
"400" (bad input), "404" (no such model or LoRA adapter), "413" (body too large), "429" (queue full), "503" (engine failed
or stalled), "504" (timed out), "500" (engine failure) and "499" (the client went away first); every status the
operator's analysis reads is there from the start, at 0. Requests a server refuses because it is still loading
or already draining are not among them (they are no outcome of the revision: a rollout's canary analysis must not
count a pod's shutdown against it) but in `moe_runtime_requests_refused_total{reason}` (loading, draining).

`moe_runtime_request_latency_seconds` (end to end: accepted to last event) and
`moe_runtime_time_per_output_token_seconds` count every accepted request however it ends: finished,
stopped, timed out, cancelled by its client or failed. Leaving the slow endings out would hide exactly the
requests a p99 is about. The latency buckets reach past the request timeout.

`moe_runtime_oldest_request_age_seconds` (gauge): seconds since the oldest request that was accepted and has
not finished arrived; 0 when idle. A revision so slow that few requests finish cannot hide behind a latency
histogram fed only by the few that do: this gauge grows with the stuck ones. Canary analysis should read it
beside the latency quantiles, e.g. `max(moe_runtime_oldest_request_age_seconds{revision="..."})` against the
latency objective.

`moe_runtime_prefix_cache_queries_total` and `moe_runtime_prefix_cache_hits_total` (and the same under vLLM's
names, `vllm:prefix_cache_queries_total` and `vllm:prefix_cache_hits_total`): prompt tokens of admitted
requests looked up in the prefix cache, and of those the ones found there (their prefill skipped); counted in
tokens, whole blocks for the hits, as vLLM counts them. The hit rate is their ratio.
The Gateway API Inference Extension's model-server protocol names, the same values as their `moe_runtime_`
twins and what vLLM exports, so that a router or endpoint picker reads every engine alike:
`vllm:num_requests_waiting` (= `moe_runtime_queue_depth`), `vllm:num_requests_running`
(= `moe_runtime_requests_running`) and `vllm:kv_cache_usage_perc` (= `moe_runtime_kv_cache_usage_ratio`, a
fraction from 0 to 1 despite its name, as in vLLM).

`moe_runtime_expert_tokens_total{layer,expert}`: tokens routed to each expert, at the granularity
`--expert-metrics` sets: `off` (no samples), `expert` (one series per expert, summed over the layers, with
layer="all"; the default: bounded by the expert count) or `layer_expert` (one series per layer and expert:
thousands on a real model). The same query works in every mode, e.g. `sum by (expert) (rate(...[5m]))`.

LoRA adapters (only when the server serves adapters: `--lora-modules` or `--lora-list`), every `adapter` label
one of the adapters configured now (a removed adapter's series go with it):
- `moe_runtime_lora_adapter_loaded{adapter}` (gauge): 1 when the adapter loaded and serves (in memory, or
  evicted for room and reloaded on the next request), 0 while it loads for the first time or after its last load
  failed. The operator counts the Ready pods where it is 1.
- `moe_runtime_lora_adapter_load_error{adapter,reason}` (gauge): 1 while the adapter's last load failed, with
  the reason word of adapters/reasons.py (the full message is in the log).
- `moe_runtime_lora_load_failures_total{adapter,reason}`, `moe_runtime_lora_adapters_resident` (gauge, at
  most --max-loras), `moe_runtime_lora_evictions_total`, and per adapter `moe_runtime_lora_requests_total`
  (accepted), `moe_runtime_lora_prompt_tokens_total`, `moe_runtime_lora_generation_tokens_total`.
- `vllm:lora_requests_info{max_lora,running_lora_adapters,waiting_lora_adapters}`: vLLM's gauge, which the
  Gateway API Inference Extension's endpoint picker reads to route by adapter: the adapters with running and
  with waiting requests, comma-joined, and the time of the last engine step as the value. vLLM keeps a series
  for every combination it ever exported and the picker takes the one with the highest value; this exports only
  the current one, which the picker reads the same way.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from enum import StrEnum

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# CPU runs of tiny models answer in milliseconds, real models on busy pods in tens of seconds, and a request
# may run until its timeout (300 s by default) or longer when there is none. At most 1.5x apart from 5 ms to
# 60 s, where latency SLOs sit (a GPU's time to first token in tens of milliseconds among them): a p99 is
# interpolated inside one bucket, and the canary analysis spreads each observation over its bucket, so a
# coarse bucket blurs a breach of a threshold inside it, or turns a small shift across a bound into a large ratio.
LATENCY_BUCKETS = (
    0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 7.5, 10, 15, 20, 30, 45, 60, 120, 300, 600, 1200, 1800, 3600,
)  # fmt: skip
# Time per output token: fine steps (at most 1.5x apart) where decoding sits, so that a canary 1.2 times slower
# than the stable track shows between buckets, not inside one
TOKEN_INTERVAL_BUCKETS = (
    0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
    0.06, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 10, 30,
)  # fmt: skip
# The outcomes the operator's analysis reads, exported from the start at zero: increase() sees a pod's first
# errors only when the series existed before them
REQUEST_STATUSES = ("200", "400", "404", "413", "429", "499", "500", "503", "504")
REFUSAL_REASONS = ("loading", "draining")
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


@dataclass(frozen=True)
class _LoraSnapshot:
    adapters: dict[str, str | None] = field(
        default_factory=dict
    )  # None: loaded; "": loading; else the reason
    counts: dict[str, list[int]] = field(
        default_factory=dict
    )  # adapter -> [requests, prompt, generation tokens]
    failures: dict[tuple[str, str], int] = field(default_factory=dict)  # (adapter, reason) -> failed loads
    resident: int = 0
    running: tuple[str, ...] = ()
    waiting: tuple[str, ...] = ()
    stepped_at: float = 0.0
    evictions: int = 0


class LoraMetrics:
    """The LoRA series, exported only when the server serves adapters. The engine thread publishes a snapshot
    each step, requests are counted on the event loop, scrapes read a copy under a lock."""

    LABELS = {
        "vllm:lora_requests_info": ("max_lora", "running_lora_adapters", "waiting_lora_adapters"),
        "moe_runtime_lora_adapter_loaded": ("adapter",),
        "moe_runtime_lora_adapter_load_error": ("adapter", "reason"),
        "moe_runtime_lora_load_failures": ("adapter", "reason"),
        "moe_runtime_lora_adapters_resident": (),
        "moe_runtime_lora_evictions": (),
        "moe_runtime_lora_requests": ("adapter",),
        "moe_runtime_lora_prompt_tokens": ("adapter",),
        "moe_runtime_lora_generation_tokens": ("adapter",),
    }

    def __init__(self) -> None:
        self.enabled = False
        self.max_loras = 1
        self._lock = threading.Lock()
        self._now = _LoraSnapshot()

    def publish(
        self,
        adapters: dict[str, str | None],
        resident: int,
        running: tuple[str, ...],
        waiting: tuple[str, ...],
        now: float,
    ) -> None:
        """The adapters configured now (a removed one's series go with it), from the engine thread."""
        with self._lock:
            was = self._now
            counts = {name: c for name, c in was.counts.items() if name in adapters}
            failures = {key: n for key, n in was.failures.items() if key[0] in adapters}
            self._now = _LoraSnapshot(
                adapters, counts, failures, resident, running, waiting, now, was.evictions
            )

    def load_failed(self, adapter: str, reason: str) -> None:
        with self._lock:
            failures = self._now.failures
            failures[adapter, reason] = failures.get((adapter, reason), 0) + 1

    def evicted(self, count: int) -> None:
        with self._lock:
            self._now = replace(self._now, evictions=self._now.evictions + count)

    def count(
        self, adapter: str, requests: int = 0, prompt_tokens: int = 0, generation_tokens: int = 0
    ) -> None:
        with self._lock:
            counts = self._now.counts.setdefault(adapter, [0, 0, 0])
            counts[0] += requests
            counts[1] += prompt_tokens
            counts[2] += generation_tokens

    def describe(self):
        """The families without samples (what the registry and the metrics reference read)."""
        return self._families(None)

    def collect(self):
        if not self.enabled:
            return []
        with self._lock:
            now = self._now
            now = replace(
                now, counts={k: list(v) for k, v in now.counts.items()}, failures=dict(now.failures)
            )
        return self._families(now)

    def _families(self, now: _LoraSnapshot | None) -> list:
        labels = self.LABELS
        info = GaugeMetricFamily(
            "vllm:lora_requests_info",
            "Running stats on lora requests.",
            labels=labels["vllm:lora_requests_info"],
        )
        loaded = GaugeMetricFamily(
            "moe_runtime_lora_adapter_loaded",
            "1 when the adapter loaded and serves (in memory or reloaded on demand), else 0",
            labels=labels["moe_runtime_lora_adapter_loaded"],
        )
        errors = GaugeMetricFamily(
            "moe_runtime_lora_adapter_load_error",
            "1 while the adapter's last load failed, with the reason",
            labels=labels["moe_runtime_lora_adapter_load_error"],
        )
        failed = CounterMetricFamily(
            "moe_runtime_lora_load_failures",
            "Adapter loads that failed",
            labels=labels["moe_runtime_lora_load_failures"],
        )
        resident = GaugeMetricFamily("moe_runtime_lora_adapters_resident", "Adapters in memory", labels=[])
        evictions = CounterMetricFamily(
            "moe_runtime_lora_evictions", "Adapters evicted to make room for another", labels=[]
        )
        per_adapter = [
            CounterMetricFamily(name, text, labels=["adapter"])
            for name, text in (
                ("moe_runtime_lora_requests", "Generation requests accepted for the adapter"),
                ("moe_runtime_lora_prompt_tokens", "Prompt tokens prefilled with the adapter"),
                ("moe_runtime_lora_generation_tokens", "Tokens generated with the adapter"),
            )
        ]
        if now is not None:
            info.add_metric(
                [str(self.max_loras), ",".join(now.running), ",".join(now.waiting)], now.stepped_at
            )
            for name, state in sorted(now.adapters.items()):
                loaded.add_metric([name], 1.0 if state is None else 0.0)
                if state:
                    errors.add_metric([name, state], 1.0)
                for family, count in zip(per_adapter, now.counts.get(name, [0, 0, 0]), strict=True):
                    family.add_metric([name], count)
            for (name, reason), count in sorted(now.failures.items()):
                failed.add_metric([name, reason], count)
            resident.add_metric([], now.resident)
            evictions.add_metric([], now.evictions)
        return [info, loaded, errors, failed, resident, evictions, *per_adapter]


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
        self.requests_refused = Counter(
            "moe_runtime_requests_refused",
            "Requests refused with 503 before acceptance because the server was loading or draining",
            ["reason"],
            registry=r,
        )
        for status in REQUEST_STATUSES:
            self.requests.labels(status=status)
        for reason in REFUSAL_REASONS:
            self.requests_refused.labels(reason=reason)
        self.prompt_tokens = Counter("moe_runtime_prompt_tokens", "Prompt tokens prefilled", registry=r)
        self.generation_tokens = Counter("moe_runtime_generation_tokens", "Tokens generated", registry=r)
        self.batch_size = Histogram(
            "moe_runtime_batch_size", "Sequences per engine step", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.kv_cache_usage = Gauge(
            "moe_runtime_kv_cache_usage_ratio", "Fraction of KV cache in use", registry=r
        )
        queries_help, hits_help = (
            "Prompt tokens looked up in the prefix cache",
            "Prompt tokens found in the prefix cache",
        )
        self.prefix_cache_queries = Counter("moe_runtime_prefix_cache_queries", queries_help, registry=r)
        self.prefix_cache_hits = Counter("moe_runtime_prefix_cache_hits", hits_help, registry=r)
        # the same counts under vLLM's names, in tokens as vLLM counts them
        self.vllm_prefix_cache_queries = Counter("vllm:prefix_cache_queries", queries_help, registry=r)
        self.vllm_prefix_cache_hits = Counter("vllm:prefix_cache_hits", hits_help, registry=r)
        # the Gateway API Inference Extension's names (model-server protocol), set with their twins above
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests waiting to start", registry=r)
        self.running = Gauge("vllm:num_requests_running", "Requests holding a sequence", registry=r)
        self.kv_cache_usage_perc = Gauge(
            "vllm:kv_cache_usage_perc", "Fraction of KV cache in use (1 means 100 percent)", registry=r
        )
        self.expert_tokens = ExpertTokenCounts(expert_metrics)
        r.register(self.expert_tokens)
        self.lora = LoraMetrics()
        r.register(self.lora)

    def count_prefix_cache(self, queries: int, hits: int) -> None:
        for counter, count in (
            (self.prefix_cache_queries, queries),
            (self.vllm_prefix_cache_queries, queries),
            (self.prefix_cache_hits, hits),
            (self.vllm_prefix_cache_hits, hits),
        ):
            counter.inc(count)

    def set_waiting(self, waiting: int) -> None:
        self.queue_depth.set(waiting)
        self.waiting.set(waiting)

    def set_load(self, waiting: int, running: int, kv_cache_usage: float) -> None:
        """The gauges a router reads per pod, under both names."""
        self.set_waiting(waiting)
        self.requests_running.set(running)
        self.running.set(running)
        self.kv_cache_usage.set(kv_cache_usage)
        self.kv_cache_usage_perc.set(kv_cache_usage)

    def observe_request(self, end: float, arrival: float, first_token_at: float | None, tokens: int) -> None:
        self.request_latency.observe(end - arrival)
        if first_token_at is not None and tokens > 1:
            self.time_per_output_token.observe((end - first_token_at) / (tokens - 1))

    def render(self, names: list[str] | None = None) -> bytes:
        """The exposition; only the families named in `names` when it is given."""
        return generate_latest(self.registry.restricted_registry(names) if names else self.registry)
