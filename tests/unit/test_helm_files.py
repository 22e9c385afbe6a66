"""The Helm chart's static parts: CRD copy, values schema, no dead values, the Grafana dashboard."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml

from tests.design import RUNTIME_METRIC_NAMES
from tests.paths import ROOT

CHART = ROOT / "helm" / "moedeploy"
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def test_chart_ships_the_crd_byte_for_byte():
    assert (CHART / "crds" / "modeldeployments.yaml").read_bytes() == (
        ROOT / "crds" / "modeldeployments.yaml"
    ).read_bytes(), (
        "helm/moedeploy/crds/modeldeployments.yaml differs from crds/modeldeployments.yaml: "
        "cp crds/modeldeployments.yaml helm/moedeploy/crds/"
    )


def test_chart_crds_folder_holds_only_known_definitions():
    kinds = {}
    for path in sorted((CHART / "crds").iterdir()):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] == "CustomResourceDefinition", path
            kinds[doc["metadata"]["name"]] = doc["spec"]["scope"]
    assert kinds == {"modeldeployments.moedeploy.dev": "Namespaced"}


def test_schema_is_valid_and_accepts_the_defaults():
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.validate(VALUES, SCHEMA, cls=jsonschema.Draft7Validator)


def with_override(path: str, value):
    values = json.loads(json.dumps(VALUES))
    *parents, leaf = path.split(".")
    node = values
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return values


VALID = [
    ("operator.watchNamespaces", ["team-a", "team-b"]),
    ("operator.prometheusUrl", ""),
    ("operator.prometheusUrl", "https://prometheus.example.com:9090/prom"),
    ("image.digest", "sha256:" + "a" * 64),
    ("image.tag", "0.1.0-rc.1"),
    ("resources", {"requests": {"cpu": 0.5, "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "1.5Gi"}}),
    ("tolerations", [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]),
    ("nodeSelector", {"kubernetes.io/os": "linux"}),
    ("operator.leaderElection", {"enabled": False}),
    ("operator.policy", {"allowedSourceKinds": ["*"], "allowedHostPathPrefixes": ["/srv/models"]}),
]


@pytest.mark.parametrize(("path", "value"), VALID, ids=[f"{p}={v!r}"[:60] for p, v in VALID])
def test_schema_accepts_sensible_values(path, value):
    jsonschema.validate(with_override(path, value), SCHEMA, cls=jsonschema.Draft7Validator)


# (dotted path, bad value, where the error must point)
INVALID = [
    ("replicaCount", 0, ["replicaCount"]),
    ("replicaCount", "2", ["replicaCount"]),
    ("operator.logLevel", "warning", ["operator", "logLevel"]),
    ("operator.watchNamespaces", ["Team_A"], ["operator", "watchNamespaces", 0]),
    ("operator.watchNamespaces", ["a", "a"], ["operator", "watchNamespaces"]),
    ("operator.watchNamespaces", "team-a", ["operator", "watchNamespaces"]),
    ("operator.prometheusUrl", "prometheus:9090", ["operator", "prometheusUrl"]),
    ("operator.namespaces", ["a"], ["operator"]),  # a typo is an unknown key, not a silent default
    ("image.tag", 1.0, ["image", "tag"]),
    ("image.digest", "sha256:xyz", ["image", "digest"]),
    ("image.pullPolicy", "always", ["image", "pullPolicy"]),
    ("resources.limits", {"memory": "lots"}, ["resources", "limits", "memory"]),
    ("tolerations", [{"key": "gpu", "effect": "NoScheduling"}], ["tolerations", 0, "effect"]),
    ("nodeSelector", {"gpu": True}, ["nodeSelector", "gpu"]),
    ("nodeselector", {"gpu": "yes"}, []),
    ("monitoring.podMonitor.interval", "15", ["monitoring", "podMonitor", "interval"]),
    (
        "operator.policy.allowedHostPathPrefixes",
        ["srv"],
        ["operator", "policy", "allowedHostPathPrefixes", 0],
    ),
    ("operator.policy.allowSecrets", True, ["operator", "policy"]),
    ("operator.workers", 0, ["operator", "workers"]),
    ("serviceAccount.create", "yes", ["serviceAccount", "create"]),
]


@pytest.mark.parametrize(("path", "value", "where"), INVALID, ids=[f"{p}={v!r}"[:60] for p, v, _ in INVALID])
def test_schema_rejects_bad_values_at_the_right_place(path, value, where):
    errors = list(jsonschema.Draft7Validator(SCHEMA).iter_errors(with_override(path, value)))
    assert errors, f"{path}={value!r} was accepted"
    places = [list(err.absolute_path) for err in errors]
    assert where in places, f"errors point at {places}, expected {where}"


def leaf_paths(node, prefix=""):
    """Dotted paths of the values a template reads: maps that templates pass whole (toYaml) count as leaves."""
    if isinstance(node, dict) and node:
        for key, child in node.items():
            yield from leaf_paths(child, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


def test_every_value_is_used_by_a_template():
    templates = "".join(p.read_text() for p in (CHART / "templates").iterdir())
    unused = []
    for path in leaf_paths(VALUES):
        parts = path.split(".")
        # a value is used when a template names it or a map holding it (e.g. .Values.resources | toYaml)
        prefixes = (".".join(parts[:i]) for i in range(len(parts), 0, -1))
        if not any(re.search(rf"\.Values\.{re.escape(p)}\b(?!\.)", templates) for p in prefixes):
            unused.append(path)
    assert not unused, f"values no template reads: {unused}"


def test_every_schema_property_is_a_value():
    """The schema documents no value that values.yaml lacks (and so no template could read by default)."""

    def walk(schema, values, prefix):
        for key, sub in schema.get("properties", {}).items():
            if key == "global":
                continue
            assert key in values, f"{prefix}{key} is in values.schema.json but not in values.yaml"
            if sub.get("type") == "object" and sub.get("properties"):
                walk(sub, values[key], f"{prefix}{key}.")

    walk(SCHEMA, VALUES, "")


def test_grafana_dashboard_covers_the_signals_with_design_metric_names():
    dashboard = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    titles = [panel["title"].lower() for panel in dashboard["panels"]]
    for signal in ("queue depth", "latency p99", "replicas", "rollbacks"):
        assert any(signal in title for title in titles), f"no panel for {signal}: {titles}"
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for expr in exprs
        for name in re.findall(r"moe_runtime_\w+", expr)
    }
    assert used <= RUNTIME_METRIC_NAMES, f"metrics DESIGN.md does not name: {used - RUNTIME_METRIC_NAMES}"
    from moe_runtime.router.metrics import RouterMetrics

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    router_names = {
        f"{metric.name}{suffix}"
        for metric in RouterMetrics().registry.collect()
        for suffix in suffixes[metric.type]
    }
    router_used = {name for expr in exprs for name in re.findall(r"moe_router_\w+", expr)}
    assert router_used and router_used <= router_names, (
        f"router metrics that do not exist: {router_used - router_names}"
    )
    from moe_operator.io.metrics import OperatorMetrics

    operator_names = {metric.name for metric in OperatorMetrics().registry.collect()}
    assert {name for expr in exprs for name in re.findall(r"moe_operator_\w+", expr)} <= operator_names
    assert any("moe_operator_desired_replicas" in e for e in exprs), "no autoscaling panel"
    latency = [e for e in exprs if "moe_runtime_request_latency_seconds_bucket" in e]
    assert latency and all(e.startswith("histogram_quantile(0.99,") for e in latency)
    for expr in exprs:  # every query follows the dashboard's namespace / ModelDeployment selectors
        assert 'namespace=~"$namespace"' in expr and 'model_deployment=~"$model_deployment"' in expr, expr


def test_chart_versions_match_the_project_so_the_default_image_tag_exists():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == project
