"""The operator's own metrics: names, types and labels as documented, and the /metrics endpoint."""

from __future__ import annotations

import re
import socket

import httpx
from prometheus_client.parser import text_string_to_metric_families

from moe_operator.io import metrics as operator_metrics
from moe_operator.io.metrics import OperatorMetrics

# family (as the parser names it, counters without _total) -> (type, labels)
EXPECTED = {
    "moe_operator_reconcile": ("counter", {"result"}),
    "moe_operator_reconcile_duration_seconds": ("histogram", set()),
    "moe_operator_work_queue_depth": ("gauge", set()),
    "moe_operator_autoscaler_decisions": ("counter", {"direction"}),
    "moe_operator_desired_replicas": ("gauge", {"namespace", "model_deployment"}),
    "moe_operator_current_replicas": ("gauge", {"namespace", "model_deployment"}),
    "moe_operator_prometheus_query_failures": ("counter", {"reason"}),
    "moe_operator_prometheus_query_duration_seconds": ("histogram", {"query"}),
    "moe_operator_canary_outcomes": ("counter", {"kind"}),
    "moe_operator_rollbacks": ("counter", {"reason"}),
    "moe_operator_promotions": ("counter", set()),
    "moe_operator_leader": ("gauge", set()),
}


def families(metrics: OperatorMetrics) -> dict[str, tuple[str, set[str], list]]:
    parsed = text_string_to_metric_families(metrics.render().decode())
    out = {}
    for family in parsed:
        if family.name.endswith(
            "_created"
        ):  # prometheus_client's creation timestamps of counters and histograms
            continue
        labels = {key for sample in family.samples for key in sample.labels if key != "le"}
        out[family.name] = (family.type, labels, family.samples)
    return out


def used(metrics: OperatorMetrics) -> OperatorMetrics:
    metrics.desired_replicas.labels("ns", "md").set(3)
    metrics.current_replicas.labels("ns", "md").set(2)
    metrics.reconcile_duration.observe(0.02)
    metrics.work_queue_depth.set(1)
    metrics.promotions.inc()
    metrics.leader.set(1)
    return metrics


def test_names_types_and_labels():
    found = families(used(OperatorMetrics()))
    assert {name: (kind, labels) for name, (kind, labels, _) in found.items()} == EXPECTED


def test_counters_are_exposed_with_the_total_suffix_and_start_at_zero():
    found = families(OperatorMetrics())
    samples = {s.name: s for s in found["moe_operator_reconcile"][2]}
    assert "moe_operator_reconcile_total" in samples
    values = {
        s.labels["direction"]: s.value
        for s in found["moe_operator_autoscaler_decisions"][2]
        if s.name.endswith("_total")
    }
    assert values == {"up": 0, "down": 0, "none": 0}
    reasons = {s.labels["reason"] for s in found["moe_operator_prometheus_query_failures"][2]}
    assert reasons == {"PrometheusUnavailable", "QueryFailed", "NoSeries", "StaleSeries"}


def test_forget_drops_a_deleted_model_deployment():
    metrics = used(OperatorMetrics())
    metrics.desired_replicas.labels("ns", "other").set(1)
    metrics.forget("ns", "md")
    metrics.forget("ns", "never-seen")
    found = families(metrics)
    assert [s.labels["model_deployment"] for s in found["moe_operator_desired_replicas"][2]] == ["other"]
    assert found["moe_operator_current_replicas"][2] == []


def test_every_metric_has_one_documented_line():
    """The README's metrics reference is generated from the module docstring."""
    doc = operator_metrics.__doc__
    for name, (kind, labels) in EXPECTED.items():
        exposed = f"{name}_total" if kind == "counter" else name
        lines = [line for line in doc.splitlines() if f"`{exposed}`" in line]
        assert len(lines) == 1, name
        assert f"| {kind} |" in lines[0]
        label_column = re.sub(r"\([^)]*\)", "", lines[0].split("|")[3])
        assert set(re.findall(r"`(\w+)`", label_column)) == labels, lines[0]


def test_start_serves_the_registry():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics = used(OperatorMetrics())
    server = operator_metrics.start(metrics, port, addr="127.0.0.1")
    try:
        body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        server.shutdown()
        server.server_close()
    assert 'moe_operator_desired_replicas{model_deployment="md",namespace="ns"} 3.0' in body
