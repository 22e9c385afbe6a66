import pytest

from moe_operator.decisions.policy import Policy, violations
from moe_operator.decisions.spec import parse_spec
from moe_operator.io.policy_file import load_policy
from tests.unit.operator.samples import spec

ALLOWED_IMAGE = "ghcr.io/moedeploy/runtime:1"


DEFAULT = Policy()


def check(policy=DEFAULT, **fields):
    return violations(parse_spec(spec(**{"runtime__image": ALLOWED_IMAGE, **fields})), policy)


def test_the_default_policy_allows_a_plain_deployment():
    assert check() == []
    assert check(model__source={"image": {"path": "/opt/m"}}) == []
    assert check(model__source={"uri": "s3://bucket/m", "cache": {"sizeLimit": "10Gi"}}) == []


# (id, fields, words the one violation must contain)
REFUSED_BY_DEFAULT = [
    (
        "host-path",
        {"model__source": {"hostPath": {"path": "/etc"}}},
        ["spec.model.source.hostPath", "pvc, image, uri"],
    ),
    ("image-registry", {"runtime__image": "evil.io/miner:1"}, ["spec.runtime.image", "ghcr.io/moedeploy/"]),
    (
        "secret-env",
        {"runtime__env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}}]},
        ["spec.runtime.env[K]", "Secret"],
    ),
    ("toleration", {"runtime__tolerations": [{"key": "dedicated", "operator": "Exists"}]}, ["dedicated"]),
    ("every-taint", {"runtime__tolerations": [{"operator": "Exists"}]}, ["every taint"]),
    (
        "router-toleration",
        {"routing": {"tolerations": [{"key": "dedicated", "operator": "Exists"}]}},
        ["spec.routing.tolerations", "dedicated"],
    ),
    ("service-account", {"runtime__serviceAccountName": "admin"}, ["spec.runtime.serviceAccountName"]),
    ("priority-class", {"runtime__priorityClassName": "system-cluster-critical"}, ["priorityClassName"]),
    (
        "secret-volume",
        {"runtime__volumes": [{"name": "s", "secret": {"secretName": "db"}}]},
        ["volumes[s]", "Secret"],
    ),
    (
        "host-volume",
        {"runtime__volumes": [{"name": "h", "hostPath": {"path": "/"}}]},
        ["volumes[h]", "hostPath"],
    ),
    ("odd-volume", {"runtime__volumes": [{"name": "n", "nfs": {"server": "x", "path": "/"}}]}, ["nfs"]),
    (
        "s3-credentials",
        {"model__source": {"uri": "s3://b/m", "s3": {"credentialsSecret": "aws"}, "cache": {"sizeLimit": 1}}},
        ["credentialsSecret", "Secret"],
    ),
    (
        "adapter-host-path",
        {"adapters": [{"name": "a", "source": {"hostPath": {"path": "/x"}}}]},
        ["spec.adapters[0].source.hostPath"],
    ),
]


@pytest.mark.parametrize(
    ("fields", "words"), [c[1:] for c in REFUSED_BY_DEFAULT], ids=[c[0] for c in REFUSED_BY_DEFAULT]
)
def test_the_default_policy_refuses_what_rbac_would_not_give(fields, words):
    found = check(**fields)
    assert len(found) == 1, found
    for word in words:
        assert word in found[0]


def test_the_gpu_toleration_is_always_fine():
    assert (
        check(runtime__tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
        == []
    )


def test_host_paths_under_allowed_folders_only_and_no_dot_dot_escape():
    policy = Policy(allowed_source_kinds=("hostPath",), allowed_host_path_prefixes=("/srv/models",))
    assert check(policy, model__source={"hostPath": {"path": "/srv/models/qwen"}}) == []
    assert check(policy, model__source={"hostPath": {"path": "/srv/models-evil"}}) != []
    assert check(policy, model__source={"hostPath": {"path": "/srv/models/../../etc"}}) != []
    assert check(policy, model__source={"hostPath": {"path": "/srv"}}) != []


def test_a_permissive_policy_from_a_file(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(
        "allowedSourceKinds: ['*']\nallowedHostPathPrefixes: ['*']\nallowedImagePrefixes: ['*']\n"
        "allowSecretReferences: true\nallowedTolerationKeys: ['*']\nallowedServiceAccounts: ['*']\n"
        "allowedPriorityClasses: ['*']\nallowedVolumeTypes: ['*']\n"
    )
    policy = load_policy(str(path))
    assert [check(policy, **fields) for _, fields, _ in REFUSED_BY_DEFAULT] == [[]] * len(REFUSED_BY_DEFAULT)


def test_unknown_policy_keys_are_an_error():
    with pytest.raises(ValueError, match="allowedImages"):
        Policy.from_mapping({"allowedImages": ["*"]})


def test_several_violations_are_all_named():
    found = check(runtime__image="evil:1", model__source={"hostPath": {"path": "/"}})
    assert len(found) == 2


# Attempted escapes through the operator, each past what a plain string match or a partial list would catch:
# refused once, by a message that starts with the field.
PREFIXED = Policy(allowed_image_prefixes=("registry.corp", "ghcr.io/moedeploy/runtime"))
HOST_PATHS = Policy(allowed_source_kinds=("*",), allowed_host_path_prefixes=("/srv",))
MINE = [{"name": "mine", "configMap": {"name": "mine"}}]
# a node's shared download cache at /srv/cache, model folders elsewhere under /srv
CACHED = Policy(
    allowed_source_kinds=("*",),
    allowed_host_path_prefixes=("/srv",),
    allowed_cache_host_path_prefixes=("/srv/cache",),
)
SHARED_CACHE = {"uri": "s3://b/m", "cache": {"hostPath": {"path": "/srv/cache"}}}


def escape(name, field, policy=DEFAULT, **fields):
    return pytest.param(policy, fields, field, id=name)


ESCAPES = [
    # the last --model wins: any path in the pod, another tenant's download in a shared cache included
    escape(
        "args-model", "spec.runtime.args[2]", runtime__args=["--log-level", "info", "--model", "/var/cache"]
    ),
    escape("args-flag-equals", "spec.runtime.args[0]", runtime__args=["--download-dir=/tmp/x"]),
    escape("args-abbreviated", "spec.runtime.args[0]", runtime__args=["--mod", "/etc"]),
    escape("args-alias", "spec.runtime.args[0]", runtime__args=["--max-batch-seqs=1"]),
    escape("args-lora-modules", "spec.runtime.args[0]", runtime__args=["--lora-modules", "x=/var/cache/m"]),
    escape(
        "env-model",
        "spec.runtime.env[MOE_RUNTIME_MODEL]",
        runtime__env=[{"name": "MOE_RUNTIME_MODEL", "value": "/"}],
    ),
    escape(
        "env-lora-modules",
        "spec.runtime.env[MOE_RUNTIME_LORA_MODULES]",
        runtime__env=[{"name": "MOE_RUNTIME_LORA_MODULES", "value": "x=/var/cache/m"}],
    ),
    # the operator mounts its hostPath volumes read-only: mounting one again must not make it writable
    escape(
        "mount-operator-volume",
        "spec.runtime.volumeMounts[0]",
        HOST_PATHS,
        model__source={"hostPath": {"path": "/srv/models"}},
        runtime__volumeMounts=[{"name": "model", "mountPath": "/rw"}],
    ),
    escape(
        "mount-user-host-path-read-write",
        "spec.runtime.volumeMounts[0]",
        HOST_PATHS,
        runtime__volumes=[{"name": "h", "hostPath": {"path": "/srv/shared"}}],
        runtime__volumeMounts=[{"name": "h", "mountPath": "/data", "readOnly": False}],
    ),
    # an own adapter list over the operator's: adapters from any path in the pod, past the adapter policy
    escape(
        "mount-over-the-adapter-list",
        "spec.runtime.volumeMounts[0]",
        runtime__volumes=MINE,
        runtime__volumeMounts=[{"name": "mine", "mountPath": "/etc/moe-runtime/adapters"}],
    ),
    escape(
        "mount-inside-the-model",
        "spec.runtime.volumeMounts[0]",
        runtime__volumes=MINE,
        runtime__volumeMounts=[{"name": "mine", "mountPath": "/models/qwen3"}],
    ),
    escape(
        "mount-dot-dot",
        "spec.runtime.volumeMounts[0]",
        runtime__volumes=MINE,
        runtime__volumeMounts=[{"name": "mine", "mountPath": "/data/../var/cache/moe-runtime"}],
    ),
    escape(
        "mount-of-no-volume",
        "spec.runtime.volumeMounts[0]",
        runtime__volumeMounts=[{"name": "tmp", "mountPath": "/data"}],
    ),
    # the shared download cache holds other tenants' downloads: no path into it but the runtime's own
    escape(
        "source-inside-the-download-cache",
        "spec.model.source.hostPath.path",
        CACHED,
        model__source={"hostPath": {"path": "/srv/cache/s3/minio-1a2b3c4d/victim/model"}},
    ),
    escape(
        "adapter-inside-the-download-cache",
        "spec.adapters[0].source.hostPath.path",
        CACHED,
        adapters=[{"name": "a", "source": {"hostPath": {"path": "/srv/cache/s3/e/victim/lora"}}}],
    ),
    escape(
        "volume-holding-the-download-cache",
        "spec.runtime.volumes[h].hostPath.path",
        CACHED,
        runtime__volumes=[{"name": "h", "hostPath": {"path": "/srv"}}],
        runtime__volumeMounts=[{"name": "h", "mountPath": "/h", "readOnly": True}],
    ),
    escape(
        "cache-outside-the-cache-folders",
        "spec.model.source.cache.hostPath.path",
        CACHED,
        model__source={"uri": "s3://b/m", "cache": {"hostPath": {"path": "/srv/models"}}},
    ),
    escape(
        "image-registry-suffix", "spec.runtime.image", PREFIXED, runtime__image="registry.corp.evil.io/x:1"
    ),
    escape("image-registry-port", "spec.runtime.image", PREFIXED, runtime__image="registry.corp:5000/x:1"),
    escape(
        "image-repository-suffix",
        "spec.runtime.image",
        PREFIXED,
        runtime__image="ghcr.io/moedeploy/runtime-x",
    ),
]


@pytest.mark.parametrize(("policy", "fields", "field"), ESCAPES)
def test_attempted_escapes_are_refused_naming_the_field(policy, fields, field):
    found = check(policy, **fields)
    assert len(found) == 1, found
    assert found[0].startswith(field), found[0]


def test_args_and_variables_the_operator_leaves_alone_are_fine():
    args = ["--log-level", "debug", "--schedule-policy=fcfs", "--device", "cuda:0"]
    env = [{"name": "MOE_RUNTIME_SCHEDULE_POLICY", "value": "fcfs"}, {"name": "HF_HUB_OFFLINE", "value": "1"}]
    assert check(runtime__args=args, runtime__env=env) == []


def test_own_volumes_mount_anywhere_but_over_the_operator_s_mounts():
    mounts = [
        {"name": "mine", "mountPath": "/etc/extra"},
        {"name": "mine", "mountPath": "/var/cache/other", "subPath": "x"},
        {"name": "h", "mountPath": "/data", "readOnly": True},
    ]
    volumes = [*MINE, {"name": "h", "hostPath": {"path": "/srv/shared"}}]
    assert check(HOST_PATHS, runtime__volumes=volumes, runtime__volumeMounts=mounts) == []


def test_a_shared_download_cache_under_its_own_folders():
    assert check(CACHED, model__source=SHARED_CACHE) == []
    assert check(CACHED, model__source={"hostPath": {"path": "/srv/models/qwen"}}) == []
    [refused] = check(model__source={"uri": "s3://b/m", "cache": {"hostPath": {"path": "/srv/cache"}}})
    assert "allowedCacheHostPathPrefixes" in refused


def test_image_prefixes_match_on_the_registry_and_path_boundary():
    allowed = [
        "registry.corp/team/runtime:1",
        "registry.corp/runtime@sha256:" + "0" * 64,
        "ghcr.io/moedeploy/runtime:0.1.0",
        "ghcr.io/moedeploy/runtime",
        "ghcr.io/moedeploy/runtime/cuda:12",
        "ghcr.io/moedeploy/runtime@sha256:" + "0" * 64,
    ]
    assert [check(PREFIXED, runtime__image=image) for image in allowed] == [[]] * len(allowed)
    assert check(runtime__image="ghcr.io/moedeploy/any:1") == [], "a prefix ending in / allows the folder"


def test_a_host_path_adapter_is_checked_by_the_folder_the_pods_mount():
    policy = Policy(allowed_source_kinds=("*",), allowed_host_path_prefixes=("/srv/loras",))

    def adapter_at(path):
        return check(policy, adapters=[{"name": "a", "source": {"hostPath": {"path": path}}}])

    assert adapter_at("/srv/loras/sql") == []
    [found] = adapter_at("/srv/loras")
    assert "the pods mount the folder that holds it, '/srv'" in found
    assert len(adapter_at("/etc/sql")) == 1, "outside: refused once, not twice"


def test_a_spec_without_image_runs_the_chosen_engine_image_and_needs_no_prefix():
    raw = spec(runtime__engine="vllm")
    del raw["runtime"]["image"]
    assert violations(parse_spec(raw), Policy()) == []
    raw["runtime"]["image"] = "vllm/vllm-openai:v0.32.0"
    assert (
        "spec.runtime.image 'vllm/vllm-openai:v0.32.0' is not allowed"
        in violations(parse_spec(raw), Policy())[0]
    )
