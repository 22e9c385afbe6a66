"""The local kubelet builds a container's environment as a kubelet does (hack/localkubelet/env.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from localkubelet.env import ConfigError, PodContext, container_env, expand, field_value, resource_value
from localkubelet.quantity import parse_quantity

NAMES = st.from_regex(r"[A-Z][A-Z0-9_]{0,8}", fullmatch=True)
VALUES = st.text(alphabet="abc/=:$() ", max_size=12)


def pod(container: dict, **metadata) -> dict:
    return {
        "metadata": {"name": "p-1", "namespace": "ns", "uid": "u-1", **metadata},
        "spec": {"nodeName": "gpu-node-0", "serviceAccountName": "default", "containers": [container]},
    }


def context(
    container: dict, config_maps: dict | None = None, secrets: dict | None = None, **kw
) -> PodContext:
    config_maps, secrets = config_maps or {}, secrets or {}
    return PodContext(
        pod=pod(container),
        container=container,
        pod_ip="10.245.0.3",
        host_ip="10.245.0.1",
        config_maps=config_maps.get,
        secrets=secrets.get,
        **kw,
    )


def test_operator_rendered_container_gets_config_map_and_cpu_threads():
    container = {
        "name": "runtime",
        "envFrom": [{"configMapRef": {"name": "md-abc123"}}],
        "env": [
            {"name": "HOME", "value": "/tmp"},
            {
                "name": "OMP_NUM_THREADS",
                "valueFrom": {
                    "resourceFieldRef": {
                        "containerName": "runtime",
                        "resource": "requests.cpu",
                        "divisor": "1",
                    }
                },
            },
        ],
        "resources": {"requests": {"cpu": "1500m"}},
    }
    env = container_env(
        context(container, {"md-abc123": {"MOE_RUNTIME_MODEL": "/models", "MOE_RUNTIME_PORT": "8000"}})
    )
    assert env == {
        "MOE_RUNTIME_MODEL": "/models",
        "MOE_RUNTIME_PORT": "8000",
        "HOME": "/tmp",
        "OMP_NUM_THREADS": "2",
    }


@given(st.dictionaries(NAMES, VALUES, max_size=5), st.dictionaries(NAMES, VALUES, max_size=5))
def test_env_always_beats_env_from(from_config_map, explicit):
    container = {
        "name": "c",
        "envFrom": [{"configMapRef": {"name": "cm"}}],
        "env": [{"name": name, "value": value.replace("$", "")} for name, value in explicit.items()],
    }
    env = container_env(context(container, {"cm": from_config_map}))
    for name, value in explicit.items():
        assert env[name] == value.replace("$", "")
    for name, value in from_config_map.items():
        if name not in explicit:
            assert env[name] == value


def test_later_env_from_source_wins_and_prefix_applies():
    container = {
        "name": "c",
        "envFrom": [
            {"configMapRef": {"name": "a"}},
            {"secretRef": {"name": "s"}, "prefix": "S_"},
            {"configMapRef": {"name": "b"}},
        ],
    }
    env = container_env(
        context(container, {"a": {"X": "1", "BAD=KEY": "no"}, "b": {"X": "2"}}, {"s": {"TOKEN": "t"}})
    )
    assert env == {"X": "2", "S_TOKEN": "t"}


def test_missing_config_map_is_a_config_error_unless_optional():
    required = {"name": "c", "envFrom": [{"configMapRef": {"name": "md-runtime"}}]}
    with pytest.raises(ConfigError, match='configmap "md-runtime" not found'):
        container_env(context(required))
    optional = {"name": "c", "envFrom": [{"configMapRef": {"name": "md-runtime", "optional": True}}]}
    assert container_env(context(optional)) == {}


def test_key_refs_and_missing_keys():
    container = {
        "name": "c",
        "env": [
            {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "a"}}},
            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "b"}}},
            {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "nope", "optional": True}}},
        ],
    }
    assert container_env(context(container, {"cm": {"a": "1"}}, {"s": {"b": "2"}})) == {"A": "1", "B": "2"}
    broken = {
        "name": "c",
        "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "zz"}}}],
    }
    with pytest.raises(ConfigError, match="couldn't find key zz in ConfigMap ns/cm"):
        container_env(context(broken, {"cm": {"a": "1"}}))


def test_downward_api_fields():
    container = {"name": "c"}
    ctx = context(container)
    ctx.pod["metadata"]["labels"] = {"moedeploy.dev/revision": "abc"}
    assert field_value("metadata.name", ctx) == "p-1"
    assert field_value("metadata.namespace", ctx) == "ns"
    assert field_value("spec.nodeName", ctx) == "gpu-node-0"
    assert field_value("status.podIP", ctx) == "10.245.0.3"
    assert field_value("metadata.labels['moedeploy.dev/revision']", ctx) == "abc"
    with pytest.raises(ConfigError, match="not supported"):
        field_value("status.phase", ctx)


@pytest.mark.parametrize(
    ("resource", "divisor", "resources", "expected"),
    [
        ("requests.cpu", "1", {"requests": {"cpu": "250m"}}, "1"),
        ("requests.cpu", "1m", {"requests": {"cpu": "250m"}}, "250"),
        ("requests.cpu", "1", {"requests": {"cpu": "3"}}, "3"),
        ("requests.cpu", "1", {}, "0"),
        ("limits.memory", "1Mi", {"limits": {"memory": "1Gi"}}, "1024"),
        ("limits.cpu", "1", {}, "32"),  # no limit: the node's allocatable
    ],
)
def test_resource_fields_round_up_in_divisor_units(resource, divisor, resources, expected):
    container = {"name": "c", "resources": resources}
    ctx = context(container, node_allocatable={"cpu": "32", "memory": "256Gi"})
    assert resource_value({"resource": resource, "divisor": divisor}, ctx) == expected


def test_expansion_follows_kubernetes():
    defined = {"A": "x", "B": "y"}
    assert expand("$(A)-$(B)", defined) == "x-y"
    assert expand("$(C)", defined) == "$(C)"
    assert expand("$$(A)", defined) == "$(A)"
    assert expand("$$", defined) == "$"
    assert expand("$(A", defined) == "$(A"
    assert expand("a$b", defined) == "a$b"
    container = {
        "name": "c",
        "env": [
            {"name": "A", "value": "1"},
            {"name": "B", "value": "$(A)2$(LATER)"},
            {"name": "LATER", "value": "3"},
        ],
    }
    assert container_env(context(container))["B"] == "12$(LATER)"


@given(st.text(alphabet=st.characters(blacklist_characters="$"), max_size=30), st.dictionaries(NAMES, VALUES))
def test_text_without_dollar_is_never_changed(text, defined):
    assert expand(text, defined) == text


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", 0.5),
        ("2", 2),
        ("1Gi", 2**30),
        ("1k", 1000),
        ("1e3", 1000),
        ("0.5", 0.5),
        ("100Mi", 100 * 2**20),
    ],
)
def test_quantities(text, value):
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "1.2.3", "Gi", "1 Gi", "1gi"])
def test_bad_quantities_are_refused(text):
    with pytest.raises(ValueError, match="quantity"):
        parse_quantity(text)
