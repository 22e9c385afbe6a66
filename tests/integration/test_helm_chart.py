"""The chart rendered by the real helm binary: lint, Kubernetes schemas, RBAC shape, values the schema refuses.

Needs only the helm binary from hack/testbin.sh (KUBEBUILDER_ASSETS), no cluster.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from localcluster import assets_dir

from moe_operator.decisions.engine_pod import ADAPTER_SYNC
from tests.paths import ROOT

pytestmark = pytest.mark.integration


CHART = ROOT / "helm" / "moedeploy"
KUBE_VERSION = "1.37.0"

# values files exercising each shape of the chart
SCENARIOS = {
    "defaults": {},
    "namespaced": {"operator": {"watchNamespaces": ["team-a", "team-b"]}},
    "replicas-namespaced": {"replicaCount": 3, "operator": {"watchNamespaces": ["team-a"]}},
    "no-leader-election": {"operator": {"leaderElection": {"enabled": False}}},
    "everything": {
        "image": {"digest": "sha256:" + "0" * 64},
        "imagePullSecrets": [{"name": "regcred"}],
        "operator": {"logLevel": "debug", "prometheusUrl": "https://prom.example:9090", "workers": 16,
                     "prometheus": {"bearerTokenSecret": {"name": "prom-token", "key": "token"},
                                    "caConfigMap": {"name": "prom-ca", "key": "ca.crt"}, "insecureSkipVerify": False},
                     "policy": {"allowedSourceKinds": ["*"], "allowedImagePrefixes": ["registry.example/"]}},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
        "priorityClassName": "system-cluster-critical",
        "podAnnotations": {"example.com/owner": "ml-platform"},
        "podLabels": {"team": "ml"},
        "serviceAccount": {"annotations": {"example.com/role": "moe"}},
        "monitoring": {"podMonitor": {"enabled": True, "labels": {"release": "kps"}},
                       "grafanaDashboard": {"enabled": True, "namespace": "monitoring"}},
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def helm() -> Path:
    path = assets_dir() / "helm"
    assert path.is_file(), f"{path} missing: run hack/testbin.sh"
    return path


def run_helm(helm: Path, *args: str, values: dict | None = None, check: bool = True):
    cmd = [str(helm), *args]
    if values is not None:
        cmd += ["--values", "-"]
    result = subprocess.run(cmd, input=json.dumps(values or {}), capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stderr}")
    return result


def render(helm: Path, values: dict, *extra: str, namespace: str = "moe-system") -> list[dict]:
    out = run_helm(
        helm, "template", "moe", str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION,
        "--include-crds", *extra, values=values,
    ).stdout  # fmt: skip
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def operator_container(docs: list[dict]) -> dict:
    (deployment,) = by_kind(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_is_clean(helm, scenario):
    result = run_helm(
        helm, "lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION, values=SCENARIOS[scenario]
    )
    assert "0 chart(s) failed" in result.stdout, result.stdout


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_manifests_match_the_kubernetes_schemas(helm, scenario):
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    docs = render(helm, SCENARIOS[scenario], "--api-versions", "monitoring.coreos.com/v1/PodMonitor")
    crd_schemas = {
        (crd["spec"]["group"], crd["spec"]["names"]["kind"]): version["schema"]["openAPIV3Schema"]
        for crd in by_kind(docs, "CustomResourceDefinition")
        for version in crd["spec"]["versions"]
    }
    checked, problems = set(), []
    for doc in docs:
        group = doc["apiVersion"].rpartition("/")[0]
        try:
            if (group, doc["kind"]) in crd_schemas:  # our own custom resources: the CRD's schema
                jsonschema.validate(doc, crd_schemas[group, doc["kind"]])
            elif group == "monitoring.coreos.com":  # prometheus-operator's schema is not at hand offline
                assert doc["kind"] == "PodMonitor"
            else:
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except jsonschema.ValidationError as err:  # kubernetes_validate's errors are jsonschema's
            where = "/".join(str(p) for p in err.absolute_path)
            problems.append(f"{doc['kind']} {doc['metadata']['name']}: {err.message} at /{where}")
        checked.add(doc["kind"])
    assert not problems, "\n".join(problems)
    assert {"CustomResourceDefinition", "ServiceAccount", "Deployment"} <= checked
    assert {"ClusterRole", "Role"} & checked


def rules_of(docs: list[dict]) -> list[dict]:
    return [rule for doc in docs if doc["kind"] in ("Role", "ClusterRole") for rule in doc["rules"]]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rbac_has_no_wildcards_and_no_secrets(helm, scenario):
    rules = rules_of(render(helm, SCENARIOS[scenario]))
    assert rules
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        assert not {"secrets", "pods/exec", "serviceaccounts/token"} & set(rule["resources"]), rule
        assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"]), rule


def test_cluster_wide_operator_gets_one_cluster_role(helm):
    docs = render(helm, {})
    workload_roles = [
        r for r in by_kind(docs, "Role") if not r["metadata"]["name"].endswith("-leader-election")
    ]
    assert not workload_roles
    (role,) = by_kind(docs, "ClusterRole")
    (binding,) = by_kind(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "moe-moedeploy", "namespace": "moe-system"}
    ]
    args = operator_container(docs)["args"]
    assert args[:2] == ["run", "--all-namespaces"] and not [a for a in args if a.startswith("--namespace")]


def test_namespaced_operator_gets_a_role_per_namespace_and_nothing_cluster_wide(helm):
    docs = render(helm, SCENARIOS["namespaced"])
    workload = [d for d in docs if not d["metadata"]["name"].endswith("-leader-election")]
    roles = {role["metadata"]["namespace"]: role for role in by_kind(workload, "Role")}
    bindings = {b["metadata"]["namespace"]: b for b in by_kind(workload, "RoleBinding")}
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    for binding in bindings.values():
        assert binding["subjects"][0]["namespace"] == "moe-system"
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    args = operator_container(docs)["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args and "--all-namespaces" not in args


def granted(rules: list[dict]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        if not rule.get("resourceNames")
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def declared(permissions) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for group, resource, verbs in permissions for verb in verbs}


@pytest.mark.parametrize("scenario", ["defaults", "namespaced"])
def test_rbac_grants_exactly_the_permissions_the_operator_declares(helm, scenario):
    from moe_operator.io.kube import LEADER_ELECTION_PERMISSIONS, PERMISSIONS

    roles = [doc for doc in render(helm, SCENARIOS[scenario]) if doc["kind"] in ("Role", "ClusterRole")]
    election = [r for r in roles if r["metadata"]["name"].endswith("-leader-election")]
    assert len(election) == 1 and election[0]["metadata"]["namespace"] == "moe-system"
    assert granted(election[0]["rules"]) == declared(LEADER_ELECTION_PERMISSIONS)
    for role in roles:
        if role not in election:
            assert granted(role["rules"]) == declared(PERMISSIONS), role["metadata"]


def test_leader_election_by_default_recreate_without_it(helm):
    elected = render(helm, SCENARIOS["replicas-namespaced"])
    (deployment,) = by_kind(elected, "Deployment")
    assert deployment["spec"]["replicas"] == 3 and "strategy" not in deployment["spec"]
    args = operator_container(elected)["args"]
    assert "--leader-elect" in args and "--leader-election-id=moe-moedeploy" in args
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in operator_container(elected)["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}

    alone = render(helm, SCENARIOS["no-leader-election"])
    (deployment,) = by_kind(alone, "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "--leader-elect" not in operator_container(alone)["args"]
    assert not [r for r in by_kind(alone, "Role") if r["metadata"]["name"].endswith("-leader-election")]


def test_the_policy_reaches_the_operator_as_a_mounted_file(helm):
    docs = render(helm, SCENARIOS["everything"])
    (policy,) = [cm for cm in by_kind(docs, "ConfigMap") if cm["metadata"]["name"].endswith("-policy")]
    from moe_operator.decisions.policy import Policy

    loaded = Policy.from_mapping(yaml.safe_load(policy["data"]["policy.yaml"]))
    assert loaded.allowed_source_kinds == ("*",) and loaded.allowed_image_prefixes == ("registry.example/",)
    default = Policy.from_mapping(yaml.safe_load(
        next(cm for cm in by_kind(render(helm, {}), "ConfigMap") if cm["metadata"]["name"].endswith("-policy"))["data"]["policy.yaml"]
    ))  # fmt: skip
    assert default == Policy(), "the chart's default policy is the operator's built-in one"
    container = operator_container(docs)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert "--policy-file=/etc/moe-operator/policy/policy.yaml" in container["args"]
    assert mounts["policy"] == "/etc/moe-operator/policy"
    assert "--prometheus-bearer-token-file=/etc/moe-operator/prometheus-token/token" in container["args"]
    assert "--prometheus-ca-file=/etc/moe-operator/prometheus-ca/ca.crt" in container["args"]
    assert "--workers=16" in container["args"]


def test_operator_pod_is_locked_down_and_takes_the_values(helm):
    docs = render(helm, SCENARIOS["everything"])
    (deployment,) = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = operator_container(docs)
    assert container["image"] == "ghcr.io/moedeploy/operator@sha256:" + "0" * 64
    assert container["command"] == ["python", "-m", "moe_operator"]
    assert "--verbose" in container["args"]
    assert "--prometheus-url=https://prom.example:9090" in container["args"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert deployment["spec"]["template"]["metadata"]["labels"]["team"] == "ml"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_pod_monitor_needs_prometheus_operator_and_relabels_for_the_queries(helm):
    values = {"monitoring": {"podMonitor": {"enabled": True, "labels": {"release": "kps"}}}}
    assert not by_kind(render(helm, values), "PodMonitor")  # NOTES.txt says so: test_helm_install.py

    (monitor,) = by_kind(
        render(helm, values, "--api-versions", "monitoring.coreos.com/v1/PodMonitor"), "PodMonitor"
    )
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "moe-runtime",
        "app.kubernetes.io/managed-by": "moe-operator",
    }
    # the engine's port, and the adapter sidecar's of vLLM/SGLang pods (its series feed status.adapters)
    engine, sidecar = monitor["spec"]["podMetricsEndpoints"]
    assert (engine["port"], sidecar["port"]) == ("http", ADAPTER_SYNC)
    for endpoint in (engine, sidecar):
        assert endpoint["path"] == "/metrics"
        relabel = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
        assert relabel == {
            "model_deployment": ["__meta_kubernetes_pod_label_moedeploy_dev_model_deployment"],
            "revision": ["__meta_kubernetes_pod_label_moedeploy_dev_revision"],
            "namespace": ["__meta_kubernetes_namespace"],
        }
    assert not by_kind(
        render(helm, {}, "--api-versions", "monitoring.coreos.com/v1/PodMonitor"), "PodMonitor"
    )


def test_grafana_dashboard_configmap_carries_valid_json(helm):
    docs = render(helm, SCENARIOS["everything"])
    (configmap,) = [cm for cm in by_kind(docs, "ConfigMap") if cm["metadata"]["name"].endswith("-dashboard")]
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["moedeploy.json"])
    assert dashboard == json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    assert [cm["metadata"]["name"] for cm in by_kind(render(helm, {}), "ConfigMap")] == [
        "moe-moedeploy-policy"
    ]


# (--set arguments, text the error must contain)
REFUSED = [
    (["--set", "operator.logLevel=warning"], "/operator/logLevel"),
    (["--set", "replicaCount=0"], "/replicaCount"),
    (["--set", "replicaCount=2", "--set", "operator.leaderElection.enabled=false"], "replicaCount is 2 but operator.leaderElection.enabled is false"),
    (["--set", "operator.policy.allowedSourceKinds={nfs}"], "/operator/policy/allowedSourceKinds/0"),
    (["--set", "operator.watchNamespaces={Team_A}"], "/operator/watchNamespaces/0"),
    (["--set", "operator.prometheusUrl=prometheus:9090"], "/operator/prometheusUrl"),
    (["--set", "image.pullPolicy=sometimes"], "/image/pullPolicy"),
    (["--set", "resources.limits.memory=lots"], "/resources/limits/memory"),
    (["--set", "tolerations[0].effect=NoScheduling"], "/tolerations/0/effect"),
    (["--set", "nodeselector.gpu=yes"], "nodeselector"),
    (["--set-json", 'image.tag=1.5'], "/image/tag"),
    (["--set", "serviceAccount.create=false"], "serviceAccount.name must name an existing ServiceAccount"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_bad_values_are_refused_with_a_message_naming_the_value(helm, args, message):
    result = run_helm(helm, "template", "moe", str(CHART), *args, check=False)
    assert result.returncode != 0, f"helm accepted {args}"
    assert message in result.stderr, result.stderr


def test_chart_args_are_accepted_by_the_operator_cli(helm):
    """Every flag the chart passes is one `python -m moe_operator run` knows."""
    for scenario in ("defaults", "replicas-namespaced", "everything"):
        args = operator_container(render(helm, SCENARIOS[scenario]))["args"]
        assert args[0] == "run"
        help_text = subprocess.run(
            [sys.executable, "-m", "moe_operator", "run", "--help"], capture_output=True, text=True, timeout=60
        )  # fmt: skip
        assert help_text.returncode == 0, help_text.stderr
        for arg in args[1:]:
            flag = arg.split("=", 1)[0]
            assert flag in help_text.stdout, f"the chart passes {flag}, which the operator's CLI lacks"


def test_operator_metrics_are_exposed_and_optionally_monitored(helm):
    docs = render(helm, {})
    (service,) = by_kind(docs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9100, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert "--metrics-port=9100" in operator_container(docs)["args"]
    values = {"monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}}}}
    assert not by_kind(render(helm, values), "ServiceMonitor")
    (monitor,) = by_kind(
        render(helm, values, "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"), "ServiceMonitor"
    )
    assert monitor["metadata"]["labels"]["release"] == "kps"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["honorLabels"] is True
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]


def inference_pool_schema() -> dict:
    """The InferencePool CRD of the Gateway API Inference Extension release hack/testbin.sh fetched."""
    version = next(
        line.split("=", 1)[1].strip()
        for line in (ROOT / "hack" / "versions.env").read_text().splitlines()
        if line.startswith("GAIE_VERSION=")
    )
    path = assets_dir() / f"gateway-api-inference-extension-{version}" / "inferencepools.yaml"
    assert path.is_file(), f"{path} missing: run hack/testbin.sh"
    crd = yaml.safe_load(path.read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return served["schema"]["openAPIV3Schema"]


def test_inference_pools_validate_against_the_inference_extensions_crd_and_select_the_runtime_pods(helm):
    values = {
        "inferencePools": [
            {"modelDeployment": "chat", "namespace": "team-a", "endpointPicker": {"name": "chat-epp"}},
            {"modelDeployment": "code", "namespace": "team-b", "name": "code-pool",
             "endpointPicker": {"name": "epp", "port": 9100, "failureMode": "FailOpen"}},
        ]
    }  # fmt: skip
    assert not by_kind(render(helm, values), "InferencePool"), "rendered where the API is not served"
    pools = by_kind(
        render(helm, values, "--api-versions", "inference.networking.k8s.io/v1/InferencePool"),
        "InferencePool",
    )
    assert [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in pools] == [
        ("team-a", "chat"),
        ("team-b", "code-pool"),
    ]
    schema = inference_pool_schema()
    for pool in pools:
        jsonschema.validate(pool, schema)
        ref = pool["spec"]["endpointPickerRef"]
        assert ref.get("kind", "Service") != "Service" or "port" in ref  # the CRD's CEL rule
    from moe_operator.decisions.naming import Owner
    from moe_operator.decisions.render import deployment, render_revision
    from moe_operator.decisions.routing import router_deployment
    from moe_operator.decisions.spec import parse_spec

    owner = Owner("chat", "team-a", "uid")
    spec = parse_spec(
        {
            "model": {"family": "qwen3_moe", "source": {"pvc": {"claimName": "w"}}},
            "runtime": {"image": "i"},
            "routing": {},
        }
    )
    engine = deployment(owner, spec, render_revision("chat", spec), "stable", 1)["spec"]["template"][
        "metadata"
    ]["labels"]
    router = router_deployment(owner, spec)["spec"]["template"]["metadata"]["labels"]
    selector = pools[0]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= engine.items() and not selector.items() <= router.items()
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**pools[0], "spec": {**pools[0]["spec"], "targetPorts": []}}, schema)


def test_the_engine_images_reach_the_operator(helm):
    from moe_operator.__main__ import options, parse_args

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    defaults = options(parse_args(operator_container(render(helm, SCENARIOS["defaults"]))["args"])).images
    assert defaults.by_engine == {
        "moe-runtime": f"ghcr.io/moedeploy/runtime:{chart['appVersion']}",
        "vllm": "vllm/vllm-openai:v0.32.0",
        "sglang": "lmsysorg/sglang:v0.5.23",
    }
    values = {
        "engines": {
            "moeRuntime": {"image": "registry.local/runtime:2"},
            "vllm": {"image": "registry.local/vllm:1"},
        }
    }
    chosen = options(parse_args(operator_container(render(helm, values))["args"])).images
    assert (chosen.helper, chosen.by_engine["vllm"]) == ("registry.local/runtime:2", "registry.local/vllm:1")
