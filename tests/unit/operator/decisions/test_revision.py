import pytest

from moe_operator.decisions.revision import revision_hash
from tests.unit.operator.samples import render_children, spec


def revision_of(raw):
    return render_children(raw).revision


BASE = revision_of(spec())

# (id, spec) pairs that change what a pod is: each must give a new revision
POD_CHANGES = [
    ("image", spec(runtime__image="registry.local/moe-runtime:2")),
    ("model-path", spec(model__source={"pvc": {"claimName": "weights", "path": "other"}})),
    ("model-source", spec(model__source={"hostPath": {"path": "/data"}})),
    ("served-name", spec(model__name="renamed")),
    ("args", spec(runtime__args=["--seed", "1"])),
    ("env", spec(runtime__env=[{"name": "X", "value": "1"}])),
    ("gpus", spec(runtime__resources={"gpu": 2})),
    ("gpu-type", spec(runtime__resources={"gpu": 1, "gpuType": "NVIDIA-A100"})),
    ("memory", spec(runtime__resources={"memory": "8Gi"})),
    ("tolerations", spec(runtime__tolerations=[{"key": "a", "operator": "Exists"}])),
    ("node-selector", spec(runtime__nodeSelector={"zone": "b"})),
    ("config-only:max-queue", spec(runtime__batching={"maxQueue": 1})),
    ("config-only:window", spec(runtime__attention={"window": 512})),
    ("config-only:quantization", spec(runtime__quantization="int8")),
    ("config-only:dtype", spec(runtime__dtype="bfloat16")),
    ("startup-timeout", spec(runtime__startupTimeoutSeconds=60)),
]

# changes that leave the pods alone
NON_POD_CHANGES = [
    ("replicas", spec(replicas=3, maxReplicas=5)),
    ("min-max", spec(minReplicas=0, maxReplicas=20)),
    ("rollout-strategy", spec(rollout={"maxSurge": 2, "maxUnavailable": 1})),
    ("autoscaling", spec(autoscaling={"enabled": True, "targetQueueDepth": 3})),
    ("slo", spec(slo={"p99LatencySeconds": 1.5})),
    # the runtime reads the architecture from the checkpoint's config.json
    ("family", spec(model__family="qwen2_moe")),
    ("defaults-written-out", spec(replicas=1, minReplicas=1, runtime__batching={"maxQueue": 256})),
]


@pytest.mark.parametrize("raw", [c[1] for c in POD_CHANGES], ids=[c[0] for c in POD_CHANGES])
def test_pod_changes_give_a_new_revision(raw):
    assert revision_of(raw) != BASE


@pytest.mark.parametrize("raw", [c[1] for c in NON_POD_CHANGES], ids=[c[0] for c in NON_POD_CHANGES])
def test_other_changes_keep_the_revision(raw):
    assert revision_of(raw) == BASE


def test_every_pod_change_is_distinct():
    revisions = [revision_of(raw) for _, raw in POD_CHANGES]
    assert len(set(revisions)) == len(revisions)


def test_hash_is_stable_and_order_independent():
    template = {"spec": {"a": 1, "b": [1, 2]}, "metadata": {"labels": {"x": "y"}}}
    reordered = {"metadata": {"labels": {"x": "y"}}, "spec": {"b": [1, 2], "a": 1}}
    assert revision_hash(template, {"K": "v", "L": "w"}) == revision_hash(reordered, {"L": "w", "K": "v"})
    # a fixed value: a hash that drifts between operator versions would roll every pod on upgrade
    assert revision_hash({}, {}) == "0764de54f4"
    assert len(BASE) == 10 and BASE.isalnum()


def test_config_change_alone_changes_the_hash():
    assert revision_hash({"spec": {}}, {"MOE_RUNTIME_MAX_QUEUE": "1"}) != revision_hash(
        {"spec": {}}, {"MOE_RUNTIME_MAX_QUEUE": "2"}
    )
