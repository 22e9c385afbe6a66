import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moe_operator.decisions.naming import COMPONENT_LABEL, ENGINE, REVISION_LABEL, TRACK_LABEL
from moe_operator.decisions.render import termination_grace_seconds
from moe_operator.decisions.runtime_config import OPERATOR_MOUNT_PATHS, RUNTIME_SETTINGS
from moe_operator.decisions.spec import parse_spec
from tests.unit.operator.samples import OWNER, render_children, spec

FIXED_LABELS = {
    "app.kubernetes.io/name": "moe-runtime",
    "app.kubernetes.io/instance": OWNER.name,
    "app.kubernetes.io/managed-by": "moe-operator",
    "moedeploy.dev/model-deployment": OWNER.name,
}
RUNTIME_IMAGE_USER = 10001  # images/runtime.Dockerfile
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}

# (id, spec, expectations on the pod: model path, GPU limit, node selector, tolerations, model volume)
CASES = [
    (
        "pvc-two-h100",
        spec(runtime__resources={"gpu": 2, "gpuType": "NVIDIA-H100-80GB-HBM3"}),
        "/models/qwen3",
        2,
        {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        [GPU_TOLERATION],
        {"persistentVolumeClaim": {"claimName": "weights", "readOnly": True}},
    ),
    (
        "pvc-root",
        spec(model__source={"pvc": {"claimName": "w"}}),
        "/models",
        1,
        None,
        [GPU_TOLERATION],
        {"persistentVolumeClaim": {"claimName": "w", "readOnly": True}},
    ),
    (
        "host-path",
        spec(model__source={"hostPath": {"path": "/data/mixtral"}}, model__family="mixtral"),
        "/models",
        1,
        None,
        [GPU_TOLERATION],
        {"hostPath": {"path": "/data/mixtral", "type": "Directory"}},
    ),
    (
        "baked-into-image-cpu-only",
        spec(model__source={"image": {"path": "/opt/model"}}, runtime__resources={"gpu": 0}),
        "/opt/model",
        None,
        None,
        None,
        None,
    ),
    (
        "download-shm-and-adapters",
        spec(
            model__source={"uri": "s3://b/m", "cache": {"hostPath": {"path": "/var/cache/m"}}},
            runtime__shmSize="1Gi",
            adapters=[
                {"name": "a", "source": {"hostPath": {"path": "/srv/loras/a"}}},
                {"name": "b", "source": {"pvc": {"claimName": "loras", "path": "b"}}},
            ],
        ),
        "s3://b/m",
        1,
        None,
        [GPU_TOLERATION],
        None,
    ),
    (
        "user-toleration-and-selector",
        spec(
            runtime__tolerations=[GPU_TOLERATION, {"key": "team", "operator": "Equal", "value": "a"}],
            runtime__nodeSelector={"zone": "a"},
        ),
        "/models/qwen3",
        1,
        {"zone": "a"},
        [GPU_TOLERATION, {"key": "team", "operator": "Equal", "value": "a"}],
        {"persistentVolumeClaim": {"claimName": "weights", "readOnly": True}},
    ),
]


def pod_of(children):
    return children.deployment["spec"]["template"]


@pytest.mark.parametrize(
    ("raw", "model_path", "gpus", "node_selector", "tolerations", "model_volume"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_pod_shape(raw, model_path, gpus, node_selector, tolerations, model_volume):
    children = render_children(raw)
    pod = pod_of(children)["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["python", "-m", "moe_runtime", "serve"]
    assert container["args"][:2] == ["--model", model_path]
    assert children.config_map["data"]["MOE_RUNTIME_MODEL"] == model_path
    assert container["resources"].get("limits", {}).get("nvidia.com/gpu") == gpus
    assert pod.get("nodeSelector") == node_selector
    assert pod.get("tolerations") == tolerations
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tmp"] == {"name": "tmp", "emptyDir": {}}
    if model_volume is None:
        assert "model" not in volumes
    else:
        assert {k: v for k, v in volumes["model"].items() if k != "name"} == model_volume
        assert {"name": "model", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]


@pytest.mark.parametrize("raw", [case[1] for case in CASES], ids=[case[0] for case in CASES])
def test_invariants(raw):
    parsed = parse_spec(raw)
    children = render_children(raw)
    objects = [children.config_map, children.service, children.deployment]
    extra_labels = [{REVISION_LABEL: children.revision}, {}, {TRACK_LABEL: "stable"}]
    for obj, extra in zip(objects, extra_labels, strict=True):
        assert obj["metadata"]["labels"] == {**FIXED_LABELS, **extra}
        assert obj["metadata"]["namespace"] == OWNER.namespace
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref == {
            "apiVersion": "moedeploy.dev/v1alpha1",
            "kind": "ModelDeployment",
            "name": OWNER.name,
            "uid": OWNER.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    template = pod_of(children)
    labels = template["metadata"]["labels"]
    assert labels == {
        **FIXED_LABELS,
        REVISION_LABEL: children.revision,
        TRACK_LABEL: "stable",
        COMPONENT_LABEL: ENGINE,
    }
    selector = children.deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items() and REVISION_LABEL not in selector
    assert children.service["spec"]["selector"].items() < selector.items(), "the Service selects both tracks"
    assert children.deployment["spec"]["replicas"] == parsed.replicas

    pod = template["spec"]
    container = pod["containers"][0]
    assert container["envFrom"] == [{"configMapRef": {"name": children.config_map["metadata"]["name"]}}]
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert children.service["spec"]["ports"][0]["targetPort"] == "http"
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/ready", "port": "http"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= parsed.runtime.startup_timeout_seconds
    assert pod["terminationGracePeriodSeconds"] == termination_grace_seconds(parsed)
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert (
        pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == RUNTIME_IMAGE_USER
    )
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "8000"
    # the policy keeps the author's mounts off the operator's: it must know every one of them
    for mount in container["volumeMounts"]:
        assert any(mount["mountPath"].startswith(path) for path in OPERATOR_MOUNT_PATHS), mount


def test_runtime_settings_reach_the_config_map():
    raw = spec(
        runtime__batching={
            "maxQueue": 7,
            "maxBatchSequences": 3,
            "tokenBudget": 99,
            "prefillChunk": 11,
            "requestTimeoutSeconds": 42,
        },
        runtime__attention={"window": 256, "globalTokens": 4},
        runtime__quantization="int8",
        runtime__dtype="float32",
        runtime__maxLoras=4,
        runtime__maxLoraRank=32,
        model__name="served-name",
    )
    data = render_children(raw).config_map["data"]
    assert data == {
        "MOE_RUNTIME_MODEL": "/models/qwen3",
        "MOE_RUNTIME_SERVED_MODEL_NAME": "served-name",
        "MOE_RUNTIME_PORT": "8000",
        "MOE_RUNTIME_MAX_QUEUE": "7",
        "MOE_RUNTIME_MAX_BATCH_SEQS": "3",
        "MOE_RUNTIME_MAX_BATCH_TOKENS": "99",
        "MOE_RUNTIME_PREFILL_CHUNK": "11",
        "MOE_RUNTIME_REQUEST_TIMEOUT": "42",
        "MOE_RUNTIME_WINDOW": "256",
        "MOE_RUNTIME_GLOBAL_TOKENS": "4",
        "MOE_RUNTIME_QUANTIZE": "int8",
        "MOE_RUNTIME_DTYPE": "float32",
        "MOE_RUNTIME_GPU_MEMORY_UTILIZATION": "0.9",
        "MOE_RUNTIME_EXPERT_METRICS": "expert",
        "MOE_RUNTIME_LOG_FORMAT": "text",
        "MOE_RUNTIME_LORA_LIST": "/etc/moe-runtime/adapters/adapters.json",
        "MOE_RUNTIME_MAX_LORAS": "4",
        "MOE_RUNTIME_MAX_LORA_RANK": "32",
    }


def test_unset_settings_leave_the_runtime_defaults_and_name_defaults_to_the_md():
    data = render_children(spec()).config_map["data"]
    assert "MOE_RUNTIME_WINDOW" not in data and "MOE_RUNTIME_GLOBAL_TOKENS" not in data
    assert "MOE_RUNTIME_DTYPE" not in data, "dtype auto is the runtime's own choice"
    assert data["MOE_RUNTIME_SERVED_MODEL_NAME"] == OWNER.name
    assert all(name.startswith("MOE_RUNTIME_") for name, _ in RUNTIME_SETTINGS)


def test_user_args_env_and_resources():
    raw = spec(
        runtime__args=["--log-level", "debug"],
        runtime__env=[{"name": "MOE_RUNTIME_MAX_QUEUE", "value": "5"}],
        runtime__resources={"gpu": 1, "cpu": "4", "memory": "32Gi"},
        runtime__imagePullPolicy="IfNotPresent",
    )
    container = pod_of(render_children(raw))["spec"]["containers"][0]
    assert container["args"] == ["--model", "/models/qwen3", "--log-level", "debug"]
    # env comes after envFrom, so the user's value wins over the ConfigMap's
    assert container["env"][-1] == {"name": "MOE_RUNTIME_MAX_QUEUE", "value": "5"}
    assert container["resources"] == {
        "requests": {"cpu": "4", "memory": "32Gi"},
        "limits": {"memory": "32Gi", "nvidia.com/gpu": 1},
    }
    assert container["imagePullPolicy"] == "IfNotPresent"


def test_rollout_strategy_and_deadline():
    raw = spec(rollout={"maxSurge": "50%", "maxUnavailable": 1}, runtime__startupTimeoutSeconds=3000)
    deployment = render_children(raw).deployment["spec"]
    assert deployment["strategy"]["rollingUpdate"] == {"maxSurge": "50%", "maxUnavailable": 1}
    assert deployment["progressDeadlineSeconds"] > 3000


def test_torch_threads_follow_the_cpu_request_when_there_is_one():
    def thread_env(raw):
        env = pod_of(render_children(raw))["spec"]["containers"][0]["env"]
        return [e for e in env if e["name"] == "OMP_NUM_THREADS"]

    (threads,) = thread_env(spec(runtime__resources={"cpu": "6"}))
    assert threads["valueFrom"]["resourceFieldRef"] == {
        "containerName": "runtime",
        "resource": "requests.cpu",
        "divisor": "1",
    }
    assert thread_env(spec()) == []


def test_pod_settings_real_clusters_need_are_passed_through():
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}}  # fmt: skip
    raw = spec(
        runtime__imagePullSecrets=[{"name": "regcred"}],
        runtime__serviceAccountName="model-reader",
        runtime__runtimeClassName="nvidia",
        runtime__priorityClassName="inference",
        runtime__affinity=affinity,
        runtime__volumes=[{"name": "extra", "configMap": {"name": "prompts"}}],
        runtime__volumeMounts=[{"name": "extra", "mountPath": "/etc/prompts", "readOnly": True}],
        runtime__shmSize="8Gi",
    )
    pod = pod_of(render_children(raw))["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert (pod["serviceAccountName"], pod["automountServiceAccountToken"]) == ("model-reader", True)
    assert (pod["runtimeClassName"], pod["priorityClassName"], pod["affinity"]) == (
        "nvidia",
        "inference",
        affinity,
    )
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["shm"] == {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}
    assert volumes["extra"] == {"name": "extra", "configMap": {"name": "prompts"}}
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert (mounts["shm"], mounts["extra"]) == ("/dev/shm", "/etc/prompts")
    plain = pod_of(render_children(spec()))["spec"]
    assert plain["automountServiceAccountToken"] is False and "serviceAccountName" not in plain


def test_a_download_into_the_pod_is_bounded_and_counted_in_the_node_s_disk():
    """An unbounded download fills the node's disk, and DiskPressure evicts the node's other pods."""
    source = {"uri": "s3://m/q", "cache": {"sizeLimit": "80Gi"}}
    pod = pod_of(render_children(spec(model__source=source)))["spec"]
    volume = {v["name"]: v for v in pod["volumes"]}["model-cache"]
    assert volume == {"name": "model-cache", "emptyDir": {"sizeLimit": "80Gi"}}
    assert pod["containers"][0]["resources"]["requests"]["ephemeral-storage"] == "80Gi"
    shared = {"uri": "s3://m/q", "cache": {"hostPath": {"path": "/var/cache/models"}}}
    requests = pod_of(render_children(spec(model__source=shared)))["spec"]["containers"][0]["resources"]
    assert "ephemeral-storage" not in requests.get("requests", {}), "a node folder is not the pod's storage"


def test_object_storage_renders_the_download():
    raw = spec(model__source={"uri": "s3://models/qwen3", "s3": {"endpoint": "https://minio.local", "region": "eu-1",
                                                                 "credentialsSecret": "aws"},
                              "cache": {"sizeLimit": "100Gi"}})  # fmt: skip
    children = render_children(raw)
    pod = pod_of(children)["spec"]
    container = pod["containers"][0]
    assert container["args"][:2] == ["--model", "s3://models/qwen3"]
    env = {e["name"]: e for e in container["env"]}
    # the S3 endpoint only: AWS_ENDPOINT_URL would send STS there too, and IRSA / Pod Identity get no credentials
    assert env["AWS_ENDPOINT_URL_S3"]["value"] == "https://minio.local" and "AWS_ENDPOINT_URL" not in env
    assert env["AWS_REGION"]["value"] == "eu-1"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "aws",
        "key": "AWS_ACCESS_KEY_ID",
        "optional": False,
    }
    assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert children.config_map["data"]["MOE_RUNTIME_DOWNLOAD_DIR"] == "/var/cache/moe-runtime"
    assert {"name": "model-cache", "mountPath": "/var/cache/moe-runtime"} in container["volumeMounts"]
    shared = render_children(
        spec(model__source={"uri": "s3://m/q", "cache": {"hostPath": {"path": "/var/cache/models"}}})
    )
    volume = {v["name"]: v for v in pod_of(shared)["spec"]["volumes"]}["model-cache"]
    assert volume["hostPath"] == {"path": "/var/cache/models", "type": "DirectoryOrCreate"}


ADAPTERS = [
    {"name": "on-the-model-claim", "source": {"pvc": {"claimName": "weights", "path": "loras/sql"}}},
    {"name": "own-claim", "source": {"pvc": {"claimName": "loras", "path": "chat"}}},
    {"name": "same-own-claim", "source": {"pvc": {"claimName": "loras", "path": "math/v2"}}},
    {"name": "on-the-node", "source": {"hostPath": {"path": "/data/loras/legal"}}},
    {"name": "in-the-image", "source": {"image": {"path": "/opt/loras/code"}}},
    {"name": "next-to-it", "source": {"hostPath": {"path": "/data/loras/medical/"}}},
    {"name": "under-the-root", "source": {"hostPath": {"path": "/finance"}}},
]


def test_adapters_go_to_their_config_map_with_the_paths_the_pods_see_them_at():
    from moe_operator.decisions.render import adapters_config_map

    raw = spec(adapters=ADAPTERS)
    config_map = adapters_config_map(OWNER, parse_spec(raw))
    assert config_map["metadata"]["name"] == f"{OWNER.name}-adapters"
    assert config_map["metadata"]["labels"] == FIXED_LABELS and "immutable" not in config_map
    listed = {a["name"]: a["path"] for a in json.loads(config_map["data"]["adapters.json"])}
    pod = pod_of(render_children(raw))["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    own = next(
        name for name, v in volumes.items() if v.get("persistentVolumeClaim", {}).get("claimName") == "loras"
    )
    host = next(name for name, v in volumes.items() if v.get("hostPath", {}).get("path") == "/data/loras")
    root = next(name for name, v in volumes.items() if v.get("hostPath", {}).get("path") == "/finance")
    assert listed == {
        "on-the-model-claim": "/models/loras/sql",
        "own-claim": f"/adapters/{own}/chat",
        "same-own-claim": f"/adapters/{own}/math/v2",
        "on-the-node": f"/adapters/{host}/legal",
        "in-the-image": "/opt/loras/code",
        "next-to-it": f"/adapters/{host}/medical",
        "under-the-root": f"/adapters/{root}",
    }
    assert (
        volumes[own]["persistentVolumeClaim"]["readOnly"] and volumes[host]["hostPath"]["type"] == "Directory"
    )
    assert mounts[f"/adapters/{own}"] == own and mounts[f"/adapters/{host}"] == host
    assert sum("persistentVolumeClaim" in v for v in volumes.values()) == 2, "one volume per claim"
    assert sum("hostPath" in v for v in volumes.values()) == 2, "one volume per node folder"
    assert volumes["adapters"]["configMap"] == {"name": f"{OWNER.name}-adapters"}
    assert mounts["/etc/moe-runtime/adapters"] == "adapters"


def test_adding_or_removing_adapters_makes_no_new_revision_unless_a_new_volume_is_needed():
    def revision(*adapters):
        return render_children(spec(adapters=list(adapters))).revision

    none = revision()
    assert revision(ADAPTERS[0]) == revision(ADAPTERS[4]) == none, "on the model's claim, or in the image"
    with_claim = revision(ADAPTERS[1])
    assert with_claim != none, "a claim the pods do not mount yet"
    assert revision(ADAPTERS[1], ADAPTERS[2]) == revision(ADAPTERS[2], ADAPTERS[0], ADAPTERS[1]) == with_claim
    assert revision(ADAPTERS[3], ADAPTERS[1]) == revision(ADAPTERS[1], ADAPTERS[3]) != with_claim
    assert revision(ADAPTERS[3]) == revision(ADAPTERS[3], ADAPTERS[5]), "side by side in one node folder"


@given(timeout=st.integers(1, 3600), drain_delay=st.integers(0, 300))
def test_the_grace_period_always_outlasts_a_request_accepted_during_the_prestop_sleep(timeout, drain_delay):
    """SIGKILL comes `terminationGracePeriodSeconds` after the deletion, preStop sleep included; a request
    accepted at the sleep's last moment runs up to its timeout plus the runtime's backstop margin."""
    raw = spec()
    raw["runtime"]["drainDelaySeconds"] = drain_delay
    raw["runtime"].setdefault("batching", {})["requestTimeoutSeconds"] = timeout
    parsed = parse_spec(raw)
    backstop_margin = max(2.0, 0.1 * timeout)  # moe_runtime.api.app.ServingState.backstop_s
    last_answer = drain_delay + timeout + backstop_margin
    assert termination_grace_seconds(parsed) > last_answer
