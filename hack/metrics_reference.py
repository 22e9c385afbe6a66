"""Writes docs/metrics.md from the metric registries themselves: every runtime and operator metric with its
type, labels and help, and the modules' notes. tests/unit/test_metrics_reference.py fails when it drifts.

    python hack/metrics_reference.py            # rewrite the file
    python hack/metrics_reference.py --check    # exit 1 when it is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

import generated

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "metrics.md"

HEADER = """# Metrics reference

Generated from the registries by `python hack/metrics_reference.py`; do not edit by hand. Counters carry the
`_total` suffix in Prometheus, histograms `_bucket`, `_sum` and `_count`. Every runtime series also carries
the labels Prometheus attaches from its scrape target, which the operator's queries select on: `namespace`,
`model_deployment`, `revision` and `pod` (the chart's PodMonitor relabels them from the pod; the local stack's
`targets.json` gives them).

"""


def rows(metrics) -> list[str]:
    lines = ["| metric | type | labels | help |", "|---|---|---|---|"]
    for metric in sorted(_metric_objects(metrics), key=lambda m: m[0]):
        name, kind, labels, help_text = metric
        suffix = "_total" if kind == "counter" else ""
        shown = ", ".join(f"`{label}`" for label in labels) or ""
        lines.append(f"| `{name}{suffix}` | {kind} | {shown} | {help_text} |")
    return lines


def _metric_objects(metrics):
    for value in vars(metrics).values():
        if hasattr(value, "_name") and hasattr(value, "_type"):
            yield value._name, value._type, tuple(value._labelnames), value._documentation
        elif hasattr(value, "collect") and not hasattr(value, "register"):  # a custom collector
            # describe(): the families of a collector that exports nothing until it has something to say
            for family in value.describe() if hasattr(value, "describe") else value.collect():
                named = getattr(value, "LABELS", ())
                labels = tuple(sorted({key for sample in family.samples for key in sample.labels})) or (
                    named.get(family.name, ()) if isinstance(named, dict) else named
                )
                yield family.name, family.type, labels, family.documentation


def render() -> str:
    from moe_operator.io import metrics as operator_metrics
    from moe_runtime import metrics as runtime_metrics

    text = HEADER
    text += "## Runtime (`moe_runtime_*`, per pod, on `:8000/metrics`)\n\n"
    text += "\n".join(rows(runtime_metrics.RuntimeMetrics())) + "\n\n"
    text += (runtime_metrics.__doc__ or "").strip() + "\n\n"
    from moe_runtime.router import metrics as router_metrics

    text += "## Router (`moe_router_*`, per router pod of a ModelDeployment with spec.routing, on `:8000/metrics`)\n\n"
    text += "\n".join(rows(router_metrics.RouterMetrics())) + "\n\n"
    text += (router_metrics.__doc__ or "").strip() + "\n\n"
    text += "## Operator (`moe_operator_*`, on `--metrics-port`, the chart's `<release>-metrics` Service)\n\n"
    text += "\n".join(rows(operator_metrics.OperatorMetrics())) + "\n\n"
    notes = (operator_metrics.__doc__ or "").strip().split("\n\n")[-1]
    text += notes + "\n"
    return text


if __name__ == "__main__":
    sys.exit(generated.main(OUT, render, __doc__, "metrics_reference.py"))
