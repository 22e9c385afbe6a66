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
    assert check(model__source={"uri": "s3://bucket/m"}) == []


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
        {"model__source": {"uri": "s3://b/m", "s3": {"credentialsSecret": "aws"}}},
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
