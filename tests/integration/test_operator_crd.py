"""The real API server enforces the ModelDeployment schema: defaults, refusals naming the field, subresources."""

from __future__ import annotations

import copy
import json

import pytest
from kubernetes import client

from tests.integration.operator_support import GROUP, PLURAL, VERSION, example

pytestmark = pytest.mark.integration

VALID = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "ModelDeployment",
    "metadata": {"name": "valid"},
    "spec": {
        "model": {"family": "mixtral", "source": {"hostPath": {"path": "/data/mixtral"}}},
        "runtime": {"image": "moe-runtime:1"},
    },
}


def variant(change, name: str = "valid") -> dict:
    body = copy.deepcopy(VALID)
    body["metadata"]["name"] = name
    change(body["spec"])
    return body


def set_in(path: str, value):
    def change(spec: dict) -> None:
        *parents, last = path.split(".")
        target = spec
        for key in parents:
            target = target.setdefault(key, {})
        target[last] = value

    return change


def delete(path: str):
    def change(spec: dict) -> None:
        *parents, last = path.split(".")
        target = spec
        for key in parents:
            target = target[key]
        del target[last]

    return change


def both(*changes):
    def change(spec: dict) -> None:
        for each in changes:
            each(spec)

    return change


# (id, invalid object, text the refusal must contain: the field it is about)
INVALID = [
    ("missing-model", variant(delete("model")), "spec.model"),
    ("empty-image", variant(set_in("runtime.image", "")), "spec.runtime.image"),
    ("replicas-wrong-type", variant(set_in("replicas", "three")), "spec.replicas"),
    ("replicas-negative", variant(set_in("replicas", -1)), "spec.replicas"),
    ("min-above-max", variant(set_in("minReplicas", 5)), "spec.minReplicas"),
    ("replicas-above-max", variant(both(set_in("replicas", 4), set_in("maxReplicas", 3))), "spec.replicas"),
    ("max-zero", variant(set_in("maxReplicas", 0)), "spec.maxReplicas"),
    ("unknown-family", variant(set_in("model.family", "llama")), "spec.model.family"),
    ("no-model-source", variant(set_in("model.source", {})), "spec.model.source"),
    (
        "two-model-sources",
        variant(set_in("model.source.pvc", {"claimName": "weights"})),
        "spec.model.source: Invalid value: a source must set exactly one",
    ),
    (
        "relative-host-path",
        variant(set_in("model.source.hostPath.path", "data")),
        "spec.model.source.hostPath.path",
    ),
    (
        "pvc-path-escapes",
        variant(set_in("model.source", {"pvc": {"claimName": "w", "path": "a/../../etc"}})),
        "spec.model.source.pvc.path",
    ),
    ("negative-gpus", variant(set_in("runtime.resources.gpu", -1)), "spec.runtime.resources.gpu"),
    ("too-many-gpus", variant(set_in("runtime.resources.gpu", 17)), "spec.runtime.resources.gpu"),
    (
        "gpu-type-without-gpus",
        variant(set_in("runtime.resources", {"gpu": 0, "gpuType": "NVIDIA-H100-80GB-HBM3"})),
        "spec.runtime.resources.gpuType",
    ),
    (
        "memory-not-a-quantity",
        variant(set_in("runtime.resources.memory", "lots")),
        "spec.runtime.resources.memory",
    ),
    ("unknown-quantization", variant(set_in("runtime.quantization", "int4")), "spec.runtime.quantization"),
    ("unknown-dtype", variant(set_in("runtime.dtype", "float8")), "spec.runtime.dtype"),
    ("zero-queue", variant(set_in("runtime.batching.maxQueue", 0)), "spec.runtime.batching.maxQueue"),
    (
        "prefill-chunk-above-budget",
        variant(set_in("runtime.batching", {"tokenBudget": 256, "prefillChunk": 512})),
        "spec.runtime.batching.prefillChunk",
    ),
    (
        "batch-over-budget",
        variant(
            set_in("runtime.batching", {"tokenBudget": 64, "prefillChunk": 64, "maxBatchSequences": 128})
        ),
        "spec.runtime.batching.maxBatchSequences",
    ),
    (
        "window-not-above-global-tokens",
        variant(set_in("runtime.attention", {"window": 4, "globalTokens": 4})),
        "spec.runtime.attention.window",
    ),
    (
        "global-tokens-without-window",
        variant(set_in("runtime.attention", {"globalTokens": 4})),
        "spec.runtime.attention.window",
    ),
    (
        "startup-timeout-too-short",
        variant(set_in("runtime.startupTimeoutSeconds", 5)),
        "spec.runtime.startupTimeoutSeconds",
    ),
    (
        "env-value-and-value-from",
        variant(
            set_in(
                "runtime.env", [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}]
            )
        ),
        "spec.runtime.env",
    ),
    (
        "unknown-toleration-operator",
        variant(set_in("runtime.tolerations", [{"key": "a", "operator": "Maybe"}])),
        "spec.runtime.tolerations[0].operator",
    ),
    (
        "rollout-cannot-progress",
        variant(set_in("rollout", {"maxSurge": 0, "maxUnavailable": "0%"})),
        "spec.rollout.maxSurge",
    ),
    (
        "zero-queue-target",
        variant(set_in("autoscaling.targetQueueDepth", 0)),
        "spec.autoscaling.targetQueueDepth",
    ),
    (
        "slo-without-any-objective",
        variant(set_in("slo", {"failureLimit": 1})),
        "spec.slo must set at least one of p99LatencySeconds, ttftP99Seconds",
    ),
    (
        "slo-window-shorter-than-two-scrapes",
        variant(set_in("slo", {"maxRelativeIncrease": 0.2, "analysisIntervalSeconds": 30})),
        "spec.slo.analysisIntervalSeconds must be at least two scrapeIntervalSeconds",
    ),
    (
        "slo-relative-increase-zero",
        variant(set_in("slo", {"maxRelativeIncrease": 0})),
        "spec.slo.maxRelativeIncrease",
    ),
    ("engine-unknown", variant(set_in("runtime", {"image": "x:1", "engine": "tgi"})), "spec.runtime.engine"),
    ("unknown-field", variant(set_in("replica", 2)), "spec.replica"),
    (
        "env-the-operator-sets",
        variant(set_in("runtime.env", [{"name": "OMP_NUM_THREADS", "value": "64"}])),
        "spec.runtime.env[].name must not be one the operator sets",
    ),
    (
        "args-the-operator-sets",
        variant(set_in("runtime.args", ["--log-level", "info", "--model", "/etc"])),
        'spec.runtime.args[2]: Invalid value: "--model": spec.runtime.args[] must not set (or abbreviate)',
    ),
    (
        "args-abbreviated",
        variant(set_in("runtime.args", ["--down=/tmp"])),
        'spec.runtime.args[0]: Invalid value: "--down=/tmp": spec.runtime.args[] must not set (or abbreviate)',
    ),
    (
        "env-overrides-a-setting-the-operator-derives",
        variant(set_in("runtime.env", [{"name": "MOE_RUNTIME_LORA_LIST", "value": "/etc/passwd"}])),
        "spec.runtime.env[].name must not be a MOE_RUNTIME_* variable the operator sets",
    ),
    (
        "download-without-size-limit",
        variant(set_in("model.source", {"uri": "s3://bucket/m"})),
        "spec.model.source.cache.sizeLimit is required",
    ),
    (
        "download-size-limit-with-host-path",
        variant(
            set_in(
                "model.source",
                {"uri": "s3://bucket/m", "cache": {"sizeLimit": "1Gi", "hostPath": {"path": "/c"}}},
            )
        ),
        "it does not apply with cache.hostPath",
    ),
    ("uri-not-s3", variant(set_in("model.source", {"uri": "gs://bucket/m"})), "spec.model.source.uri"),
    (
        "s3-settings-without-uri",
        variant(set_in("model.source.s3", {"region": "eu-west-1"})),
        "s3 and cache apply to a uri source only",
    ),
    (
        "autoscaling-from-zero",
        variant(both(set_in("minReplicas", 0), set_in("autoscaling", {"enabled": True}))),
        "spec.minReplicas must be at least 1",
    ),
    (
        "adapter-named-like-the-model",
        variant(
            both(
                set_in("model.name", "base"),
                set_in("adapters", [{"name": "base", "source": {"image": {"path": "/a"}}}]),
            )
        ),
        "spec.adapters[].name must differ",
    ),
    (
        "adapter-two-sources",
        variant(
            set_in(
                "adapters", [{"name": "a", "source": {"image": {"path": "/a"}, "hostPath": {"path": "/b"}}}]
            )
        ),
        "an adapter source must set exactly one",
    ),
    (
        "volume-named-like-the-operator-s",
        variant(set_in("runtime.volumes", [{"name": "model", "emptyDir": {}}])),
        "spec.runtime.volumes[].name must not be one of the operator's own",
    ),
    ("unknown-strategy", variant(set_in("rollout.strategy", "BlueGreen")), "spec.rollout.strategy"),
    (
        "unknown-on-inconclusive",
        variant(set_in("slo", {"p99LatencySeconds": 1, "onInconclusive": "Promote"})),
        "spec.slo.onInconclusive",
    ),
    ("unknown-engine", variant(set_in("runtime.engine", "tgi")), "spec.runtime.engine"),
    # fields an engine cannot honour: each refusal names the field and the engine
    (
        "gpus-on-moe-runtime",
        variant(set_in("runtime.resources.gpu", 2)),
        "spec.runtime.resources.gpu above 1 is not honoured by engine moe-runtime",
    ),
    (
        "parallelism-on-moe-runtime",
        variant(set_in("runtime.parallelism", {"expertParallel": True})),
        "spec.runtime.parallelism is not honoured by engine moe-runtime",
    ),
    (
        "data-parallel-not-dividing-the-gpus",
        variant(
            both(
                set_in("runtime.engine", "vllm"),
                set_in("runtime.resources.gpu", 3),
                set_in("runtime.parallelism", {"dataParallelSize": 2}),
            )
        ),
        "spec.runtime.parallelism.dataParallelSize must divide spec.runtime.resources.gpu",
    ),
    (
        "attention-window-under-vllm",
        variant(both(set_in("runtime.engine", "vllm"), set_in("runtime.attention", {"window": 4096}))),
        "spec.runtime.attention (window, globalTokens) is not honoured by engine vllm",
    ),
    (
        "global-tokens-under-sglang",
        variant(
            both(
                set_in("runtime.engine", "sglang"),
                set_in("runtime.attention", {"window": 64, "globalTokens": 4}),
            )
        ),
        "spec.runtime.attention (window, globalTokens) is not honoured by engine vllm or sglang",
    ),
    (
        "kv-tokens-under-vllm",
        variant(both(set_in("runtime.engine", "vllm"), set_in("runtime.kvCache", {"maxTokens": 4096}))),
        "spec.runtime.kvCache.maxTokens is not honoured by engine vllm",
    ),
    (
        "kv-bytes-under-sglang",
        variant(both(set_in("runtime.engine", "sglang"), set_in("runtime.kvCache", {"memoryBytes": 2**30}))),
        "spec.runtime.kvCache.memoryBytes is not honoured by engine sglang",
    ),
    (
        "int8-under-sglang",
        variant(both(set_in("runtime.engine", "sglang"), set_in("runtime.quantization", "int8"))),
        "spec.runtime.quantization int8 is not honoured by engine sglang",
    ),
    (
        "json-logs-under-vllm",
        variant(both(set_in("runtime.engine", "vllm"), set_in("runtime.logFormat", "json"))),
        "spec.runtime.logFormat json is not honoured by engine vllm",
    ),
    (
        "per-layer-expert-metrics-under-vllm",
        variant(both(set_in("runtime.engine", "vllm"), set_in("runtime.expertMetrics", "layer_expert"))),
        "spec.runtime.expertMetrics layer_expert is not honoured by engine vllm",
    ),
    (
        "lora-rank-vllm-does-not-take",
        variant(both(set_in("runtime.engine", "vllm"), set_in("runtime.maxLoraRank", 4))),
        "spec.runtime.maxLoraRank must be one of 1, 8, 16, 32, 64, 128, 256, 320, 512 with engine vllm",
    ),
    ("name-starts-with-digit", variant(lambda spec: None, name="7b-model"), "metadata.name"),
    ("name-too-long", variant(lambda spec: None, name="m" * 64), "metadata.name"),
]


@pytest.fixture(scope="module")
def custom(cluster):
    return client.CustomObjectsApi(cluster.api_client())


def create(custom, namespace: str, body: dict, dry_run: bool = True) -> dict:
    return custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body, dry_run="All" if dry_run else None, field_validation="Strict"
    )


@pytest.mark.parametrize(("body", "field"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_object_is_refused_naming_the_field(custom, md_namespace, body, field):
    with pytest.raises(client.ApiException) as refused:
        create(custom, md_namespace, body)
    assert refused.value.status in (400, 422)
    message = json.loads(refused.value.body)["message"]
    assert field in message, message


def test_defaults_are_filled_in(custom, md_namespace):
    spec = create(custom, md_namespace, VALID)["spec"]
    assert (spec["replicas"], spec["minReplicas"], spec["maxReplicas"]) == (1, 1, 10)
    runtime = spec["runtime"]
    assert runtime["resources"] == {"gpu": 1}
    assert runtime["batching"] == {
        "maxQueue": 256,
        "maxBatchSequences": 32,
        "prefillChunk": 512,
        "requestTimeoutSeconds": 300,
    }
    assert (runtime["quantization"], runtime["dtype"], runtime["startupTimeoutSeconds"]) == (
        "none",
        "auto",
        1200,
    )
    assert spec["rollout"] == {
        "strategy": "Canary",
        "canaryReplicas": 1,
        "maxSurge": 1,
        "maxUnavailable": 0,
        "autoRollback": True,
        "revisionHistoryLimit": 3,
    }
    assert runtime["drainDelaySeconds"] == 10


def test_a_download_with_a_size_limit_or_a_node_folder_is_valid(custom, md_namespace):
    for cache in ({"sizeLimit": "80Gi"}, {"sizeLimit": 10**11}, {"hostPath": {"path": "/var/cache/m"}}):
        create(
            custom, md_namespace, variant(set_in("model.source", {"uri": "s3://bucket/m", "cache": cache}))
        )


# what each engine does honour is accepted (the refusals above are about the engine, not the values)
ACCEPTED = [
    ("vllm-tensor-expert-data-parallel", variant(both(
        set_in("runtime.engine", "vllm"),
        set_in("runtime.resources.gpu", 8),
        set_in("runtime.parallelism", {"dataParallelSize": 2, "expertParallel": True}),
        set_in("runtime.quantization", "int8"),
        set_in("runtime.kvCache", {"memoryBytes": 2**34}),
        set_in("runtime.maxLoraRank", 64),
    ))),
    ("sglang-tokens-and-parallelism", variant(both(
        set_in("runtime.engine", "sglang"),
        set_in("runtime.resources.gpu", 4),
        set_in("runtime.parallelism", {"expertParallel": True}),
        set_in("runtime.kvCache", {"maxTokens": 100000}),
        set_in("runtime.maxLoraRank", 24),
    ))),
    ("moe-runtime-one-gpu-windowed", variant(both(
        set_in("runtime.attention", {"window": 64, "globalTokens": 4}),
        set_in("runtime.parallelism", {"dataParallelSize": 1}),
        set_in("runtime.maxLoraRank", 4),
        set_in("runtime.logFormat", "json"),
    ))),
]  # fmt: skip


@pytest.mark.parametrize("body", [case[1] for case in ACCEPTED], ids=[case[0] for case in ACCEPTED])
def test_what_the_engine_honours_is_accepted(custom, md_namespace, body):
    created = create(custom, md_namespace, body)["spec"]["runtime"]
    assert created["engine"] == body["spec"]["runtime"].get("engine", "moe-runtime")


@pytest.mark.parametrize("name", ["qwen3-moe.yaml", "mixtral-int8-windowed.yaml", "qwen3-moe-vllm.yaml"])
def test_examples_are_valid(custom, md_namespace, name):
    create(custom, md_namespace, example(name))


def test_scale_subresource_moves_spec_replicas_within_bounds(cluster, custom, md_namespace):
    body = variant(set_in("maxReplicas", 3), name="scalable")
    create(custom, md_namespace, body, dry_run=False)
    cluster.kubectl("-n", md_namespace, "scale", "md/scalable", "--replicas=3")
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, md_namespace, PLURAL, "scalable")
    assert stored["spec"]["replicas"] == 3
    refused = cluster.kubectl("-n", md_namespace, "scale", "mdep/scalable", "--replicas=4", check=False)
    assert refused.returncode != 0 and "spec.replicas" in refused.stderr


def test_short_names_and_status_subresource(cluster, custom, md_namespace):
    create(custom, md_namespace, variant(lambda spec: None, name="plain"), dry_run=False)
    assert "plain" in cluster.kubectl("-n", md_namespace, "get", "mdep", "-o", "name").stdout
    # status is a subresource: a write to the main resource leaves it alone
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, md_namespace, PLURAL, "plain", {"status": {"phase": "Ready"}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, md_namespace, PLURAL, "plain")
    assert "status" not in stored
