import re

import pytest
import yaml

from moe_operator.decisions.spec import (
    HostPathSource,
    ImageSource,
    InvalidSpec,
    ModelDeploymentSpec,
    PvcSource,
    parse_spec,
)
from tests.paths import ROOT
from tests.unit.operator.samples import spec

CRD = yaml.safe_load((ROOT / "crds" / "modeldeployments.yaml").read_text())
SPEC_SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def schema_defaults(schema: dict, path: tuple[str, ...] = ()):
    for name, sub in schema.get("properties", {}).items():
        if "default" in sub and sub.get("type") != "object":
            yield (*path, name), sub["default"]
        yield from schema_defaults(sub, (*path, name))


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@pytest.mark.parametrize(
    ("path", "default"),
    list(schema_defaults(SPEC_SCHEMA)),
    ids=lambda p: ".".join(p) if isinstance(p, tuple) else None,
)
def test_python_defaults_equal_the_crd_defaults(path, default):
    raw = spec(model__source={"pvc": {"claimName": "weights"}}, slo={"p99LatencySeconds": 1.0})
    raw["adapters"] = [{"name": "a", "source": {"pvc": {"claimName": "weights"}}}]
    raw["routing"] = {"scaleToZero": {}}
    value = parse_spec(raw)
    for name in path:
        if name == "adapters":
            value = value.adapters[0]
        elif name != "pvc":  # the source's variant is its type, not an attribute
            value = getattr(value, snake(name))
    assert value == default


def test_routing_is_on_when_present_even_empty():
    assert parse_spec(spec()).routing is None
    routed = parse_spec(spec(routing={}))
    assert routed.routing is not None and routed.routing.strategy == "PrefixAware"
    assert routed.routing.scale_to_zero is None
    zero = parse_spec(spec(routing={"scaleToZero": {"idleSeconds": 60}, "nodeSelector": {"pool": "cpu"}}))
    assert zero.routing.scale_to_zero.idle_seconds == 60 and zero.routing.node_selector == {"pool": "cpu"}


def test_minimal_spec_gets_defaults():
    parsed = parse_spec(spec())
    assert isinstance(parsed, ModelDeploymentSpec)
    assert parsed.model.source == PvcSource(claim_name="weights", path="qwen3")
    assert (parsed.replicas, parsed.min_replicas, parsed.max_replicas) == (1, 1, 10)
    assert parsed.runtime.resources.gpu == 1
    assert parsed.runtime.attention.window is None
    assert parsed.runtime.env == () and parsed.runtime.node_selector == {}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ({"pvc": {"claimName": "w"}}, PvcSource("w", "")),
        ({"hostPath": {"path": "/data/m"}}, HostPathSource("/data/m")),
        ({"image": {"path": "/opt/m"}}, ImageSource("/opt/m")),
    ],
)
def test_each_model_source(source, expected):
    assert parse_spec(spec(model__source=source)).model.source == expected


def test_set_fields_override_defaults():
    parsed = parse_spec(
        spec(
            replicas=3,
            maxReplicas=4,
            runtime__batching={"maxQueue": 9, "prefillChunk": 64},
            runtime__attention={"window": 128, "globalTokens": 4},
            runtime__env=[{"name": "A", "value": "1"}],
            rollout={"maxSurge": "25%"},
        )
    )
    assert parsed.replicas == 3 and parsed.max_replicas == 4
    assert (parsed.runtime.batching.max_queue, parsed.runtime.batching.prefill_chunk) == (9, 64)
    assert parsed.runtime.batching.token_budget is None, "unset: the runtime picks by device"
    assert (parsed.runtime.attention.window, parsed.runtime.attention.global_tokens) == (128, 4)
    assert parsed.runtime.env == ({"name": "A", "value": "1"},)
    assert parsed.rollout.max_surge == "25%" and parsed.rollout.max_unavailable == 0


@pytest.mark.parametrize(
    "broken", [{}, {"model": {"family": "mixtral", "source": {}}, "runtime": {"image": "x"}}]
)
def test_incomplete_spec_is_refused(broken):
    with pytest.raises(InvalidSpec):
        parse_spec(broken)


def test_a_download_into_the_pod_needs_a_size_limit():
    with pytest.raises(InvalidSpec, match=r"spec.model.source.cache.sizeLimit"):
        parse_spec(spec(model__source={"uri": "s3://m/q"}))
    assert (
        parse_spec(
            spec(model__source={"uri": "s3://m/q", "cache": {"sizeLimit": 10**11}})
        ).model.source.cache_size_limit
        == 10**11
    )


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_parse(example):
    from moe_operator.decisions.images import EngineImages

    body = yaml.safe_load(example.read_text())
    assert EngineImages().of(parse_spec(body["spec"])), "the spec's image, or its engine's"
