"""The router's own Prometheus metrics (`moe_router_`), in their own registry.

- `moe_router_requests_total{code}`: requests by the HTTP status the client got ("499": it went away first;
  "502": the pod broke the answer after it began).
- `moe_router_picks_total{pod,track,reason}`: requests sent to each pod and why it was picked (turn, load,
  prefix, adapter, retry); a pod's series go when it leaves the endpoints.
- `moe_router_retries_total{reason}`: requests sent again to another pod before anything was streamed
  (connect_error: no connection; broken: the connection broke before the answer began; unavailable: the pod
  answered 503 or 429).
- `moe_router_held_requests`: requests waiting for a Ready pod (none is Ready: scale from zero, every pod
  restarting). The operator scales a ModelDeployment at zero replicas up to one when it is above 0, and the
  queue-depth autoscaler counts them with the pods' queues.
- `moe_router_hold_seconds`: how long requests were held, whether a pod came or the wait ran out (503).
- `moe_router_routing_latency_seconds`: from the request's arrival (its body read) to its sending to a pod,
  holding excluded: what routing itself costs.
- `moe_router_in_flight_requests`, `moe_router_ready_endpoints{track}`,
  `moe_router_last_request_timestamp_seconds` (Unix time of the last request that arrived; the router's start
  before the first): idle for as long as now minus its maximum over the router's replicas.
- `moe_router_load_scrape_errors_total`: pod /metrics reads that failed (the pod's load counts as unknown).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

ROUTING_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
HOLD_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "moe_router_requests", "Requests by the HTTP status the client got", ["code"], registry=r
        )
        self.picks = Counter(
            "moe_router_picks",
            "Requests sent to each pod, by track and why it was picked",
            ["pod", "track", "reason"],
            registry=r,
        )
        self.retries = Counter(
            "moe_router_retries",
            "Requests sent again to another pod before anything was streamed",
            ["reason"],
            registry=r,
        )
        self.held = Gauge("moe_router_held_requests", "Requests waiting for a Ready pod", registry=r)
        self.hold_seconds = Histogram(
            "moe_router_hold_seconds",
            "Time requests waited for a Ready pod",
            buckets=HOLD_BUCKETS,
            registry=r,
        )
        self.routing_latency = Histogram(
            "moe_router_routing_latency_seconds",
            "Request arrival to its sending to a pod, holding excluded",
            buckets=ROUTING_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "moe_router_in_flight_requests", "Requests being answered through the router", registry=r
        )
        self.ready_endpoints = Gauge(
            "moe_router_ready_endpoints", "Ready pods per track", ["track"], registry=r
        )
        self.last_request = Gauge(
            "moe_router_last_request_timestamp_seconds",
            "Unix time of the last request that arrived (the router's start before any)",
            registry=r,
        )
        self.last_request.set(time.time())
        self.scrape_errors = Counter(
            "moe_router_load_scrape_errors", "Pod /metrics reads that failed", registry=r
        )
        for code in ("200", "503"):
            self.requests.labels(code=code)
        for reason in ("connect_error", "broken", "unavailable"):
            self.retries.labels(reason=reason)
        for track in ("stable", "canary"):
            self.ready_endpoints.labels(track=track)

    def forget_pod(self, pod: str) -> None:
        for labels in [key for key in self.picks._metrics if key[0] == pod]:  # noqa: SLF001
            self.picks.remove(*labels)

    def render(self) -> bytes:
        return generate_latest(self.registry)
