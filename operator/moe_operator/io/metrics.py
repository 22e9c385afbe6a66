"""The operator's own Prometheus metrics, served on /metrics by `start(metrics, port)`. One
instance per operator process, handed to every part that counts something.

| metric | type | labels | meaning |
|---|---|---|---|
| `moe_operator_reconcile_total` | counter | `result` (ok, error, requeued) | reconcile passes by how they ended |
| `moe_operator_reconcile_duration_seconds` | histogram | | time one reconcile pass took |
| `moe_operator_work_queue_depth` | gauge | | ModelDeployments waiting in the work queue |
| `moe_operator_autoscaler_decisions_total` | counter | `direction` (up, down, none) | autoscaler decisions |
| `moe_operator_desired_replicas` | gauge | `namespace`, `model_deployment` | replicas the operator wants for a ModelDeployment |
| `moe_operator_current_replicas` | gauge | `namespace`, `model_deployment` | replicas its Deployment has now |
| `moe_operator_prometheus_query_failures_total` | counter | `reason` (PrometheusUnavailable, QueryFailed, NoSeries, StaleSeries) | Prometheus reads that gave no usable data |
| `moe_operator_prometheus_query_duration_seconds` | histogram | `query` (queue_depth, tracks, adapter_states) | time one Prometheus HTTP query took |
| `moe_operator_canary_outcomes_total` | counter | `kind` (Passed, Failed, Inconclusive, Errored) | canary analysis windows judged |
| `moe_operator_rollbacks_total` | counter | `reason` (SLOBreached, AnalysisInconclusive, ProgressDeadlineExceeded, CanaryUnhealthy, AdapterLoadFailed) | revisions rolled back (canaries, and bakes that broke) |
| `moe_operator_promotions_total` | counter | | canaries promoted to stable |
| `moe_operator_leader` | gauge | | 1 while this operator replica is the one reconciling, else 0 |

Labels are bounded: fixed value sets, plus one series per ModelDeployment for the replica gauges, which
`forget(namespace, name)` removes when the ModelDeployment is deleted.
"""

from __future__ import annotations

import contextlib
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

from moe_operator.decisions.promdata import NO_DATA_REASONS

RECONCILE_RESULTS = ("ok", "error", "requeued")
DIRECTIONS = ("up", "down", "none")
QUERIES = ("queue_depth", "tracks", "adapter_states")
OUTCOME_KINDS = ("Passed", "Failed", "Inconclusive", "Errored")
ROLLBACK_REASONS = (
    "SLOBreached",
    "AnalysisInconclusive",
    "ProgressDeadlineExceeded",
    "CanaryUnhealthy",
    "AdapterLoadFailed",
)

# A reconcile is a few API calls: milliseconds, seconds when the API server is slow.
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
QUERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.reconciles = Counter(
            "moe_operator_reconcile", "Reconcile passes by result", ["result"], registry=r
        )
        self.reconcile_duration = Histogram(
            "moe_operator_reconcile_duration_seconds",
            "Time one reconcile pass took",
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.work_queue_depth = Gauge(
            "moe_operator_work_queue_depth", "ModelDeployments waiting in the work queue", registry=r
        )
        self.autoscaler_decisions = Counter(
            "moe_operator_autoscaler_decisions",
            "Autoscaler decisions by direction",
            ["direction"],
            registry=r,
        )
        self.desired_replicas = Gauge(
            "moe_operator_desired_replicas",
            "Replicas the operator wants for a ModelDeployment",
            ["namespace", "model_deployment"],
            registry=r,
        )
        self.current_replicas = Gauge(
            "moe_operator_current_replicas",
            "Replicas the ModelDeployment's Deployment has now",
            ["namespace", "model_deployment"],
            registry=r,
        )
        self.prometheus_query_failures = Counter(
            "moe_operator_prometheus_query_failures",
            "Prometheus reads that gave no usable data, by reason",
            ["reason"],
            registry=r,
        )
        self.prometheus_query_duration = Histogram(
            "moe_operator_prometheus_query_duration_seconds",
            "Time one Prometheus HTTP query took",
            ["query"],
            buckets=QUERY_BUCKETS,
            registry=r,
        )
        self.canary_outcomes = Counter(
            "moe_operator_canary_outcomes", "Canary analysis windows judged, by outcome", ["kind"], registry=r
        )
        self.rollbacks = Counter(
            "moe_operator_rollbacks", "Canaries rolled back, by reason", ["reason"], registry=r
        )
        self.promotions = Counter("moe_operator_promotions", "Canaries promoted to stable", registry=r)
        self.leader = Gauge(
            "moe_operator_leader", "1 while this operator replica is the one reconciling, else 0", registry=r
        )
        # Every known label value from the start, so that rate() sees the first increase.
        for family, values in (
            (self.reconciles, RECONCILE_RESULTS),
            (self.autoscaler_decisions, DIRECTIONS),
            (self.prometheus_query_failures, NO_DATA_REASONS),
            (self.prometheus_query_duration, QUERIES),
            (self.canary_outcomes, OUTCOME_KINDS),
            (self.rollbacks, ROLLBACK_REASONS),
        ):
            for value in values:
                family.labels(value)

    def forget(self, namespace: str, name: str) -> None:
        """Drops the series of a ModelDeployment that is gone."""
        for gauge in (self.desired_replicas, self.current_replicas):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def start(metrics: OperatorMetrics, port: int, addr: str = "0.0.0.0") -> WSGIServer:
    """Serves `metrics` on http://addr:port/metrics from a daemon thread; `.shutdown()` stops it."""
    server, _thread = start_http_server(port, addr=addr, registry=metrics.registry)
    return server
