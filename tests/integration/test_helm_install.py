"""The chart installed into the real local control plane, and the operator running with its identity.

One release per module, its tests in order: install → the operator, authenticated as the chart's
ServiceAccount (a real token from the TokenRequest API), reconciles an example ModelDeployment → what that
identity must not do → upgrade with changed values → uninstall keeps the CRD and the user's objects.
The apiserver authorizes with RBAC, so this proves the chart's rules are enough, and no more than needed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.paths import ROOT
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


CHART = ROOT / "helm" / "moedeploy"
CRD_NAME = "modeldeployments.moedeploy.dev"
# nothing listens there: the operator must cope with Prometheus being away (no scaling on missing data)
PROMETHEUS_URL = "http://127.0.0.1:9"


@dataclass
class Release:
    name: str
    namespace: str  # where the operator runs
    watched: str  # where ModelDeployments live
    other: str  # a namespace the first install does not watch
    cluster: object
    helm_env: dict

    @property
    def fullname(self) -> str:
        return f"{self.name}-moedeploy"

    @property
    def service_account(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.fullname}"

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.cluster.assets / "helm"), *args]
        result = subprocess.run(cmd, capture_output=True, text=True, env=self.helm_env, timeout=300)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def kubectl_json(self, *args: str) -> dict:
        return json.loads(self.cluster.kubectl(*args, "-o", "json").stdout)

    def can_i(self, verb: str, resource: str, namespace: str | None = None) -> bool:
        """`kubectl auth can-i` as the chart's ServiceAccount; resource is TYPE, TYPE/NAME or TYPE:SUBRESOURCE."""
        resource, _, subresource = resource.partition(":")
        where = ["-n", namespace] if namespace else []
        if subresource:
            where.append(f"--subresource={subresource}")
        out = self.cluster.kubectl(
            "auth", "can-i", verb, resource, *where, f"--as={self.service_account}", check=False
        )
        assert out.stdout.strip() in ("yes", "no"), out.stderr
        return out.stdout.strip() == "yes"


@pytest.fixture(scope="module")
def release(cluster, tmp_path_factory):
    suffix = uuid.uuid4().hex[:6]
    home = tmp_path_factory.mktemp("helm-home")
    helm_env = {
        **cluster.env(),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    rel = Release(
        f"moe-{suffix}", f"moe-system-{suffix}", f"models-{suffix}", f"others-{suffix}", cluster, helm_env
    )
    for namespace in (rel.namespace, rel.watched, rel.other):
        cluster.kubectl("create", "namespace", namespace)
    yield rel
    rel.helm("uninstall", rel.name, "-n", rel.namespace, "--wait", check=False)
    for namespace in (rel.namespace, rel.watched, rel.other):
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_install_creates_everything(release):
    result = release.helm(
        "install", release.name, str(CHART), "-n", release.namespace, "--wait", "--timeout", "120s",
        "--set", f"operator.watchNamespaces={{{release.watched}}}",
        "--set", f"operator.prometheusUrl={PROMETHEUS_URL}",
    )  # fmt: skip
    assert "STATUS: deployed" in result.stdout
    assert f"these namespaces only: {release.watched}" in result.stdout  # NOTES.txt

    crd = release.kubectl_json("get", "crd", CRD_NAME)
    established = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert established["Established"] == "True"
    ns = release.namespace
    release.cluster.kubectl("get", "serviceaccount", release.fullname, "-n", ns)
    deployment = release.kubectl_json("get", "deployment", release.fullname, "-n", ns)
    assert deployment["status"].get("availableReplicas") == 1  # KWOK plays the kubelet
    role = release.kubectl_json("get", "role", release.fullname, "-n", release.watched)
    assert any("modeldeployments" in rule["resources"] for rule in role["rules"])
    release.cluster.kubectl("get", "rolebinding", release.fullname, "-n", release.watched)
    release.cluster.kubectl("get", "configmap", f"{release.fullname}-policy", "-n", ns)
    assert release.can_i("update", f"leases.coordination.k8s.io/{release.fullname}", ns)
    assert not release.can_i("update", "leases.coordination.k8s.io", release.watched)
    assert (
        release.cluster.kubectl("get", "role", release.fullname, "-n", release.other, check=False).returncode
        != 0
    )


def service_account_kubeconfig(release: Release, path: Path) -> Path:
    """A kubeconfig that authenticates with a real token of the chart's ServiceAccount."""
    token = release.cluster.kubectl(
        "create", "token", release.fullname, "-n", release.namespace, "--duration=1h"
    ).stdout.strip()
    admin = yaml.safe_load(Path(release.cluster.kubeconfig).read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": cluster["name"], "user": "operator"}}],
        "current-context": "operator",
    }))  # fmt: skip
    return path


def example_model_deployment() -> dict:
    """An example from examples/ that needs no volume (the fake nodes have no storage)."""
    examples = [
        doc
        for path in sorted((ROOT / "examples").glob("*.y*ml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") == "ModelDeployment"
    ]
    assert examples, "no ModelDeployment in examples/"
    examples.sort(key=lambda doc: "pvc" in doc["spec"]["model"]["source"])
    doc = examples[0]
    doc["metadata"].pop("namespace", None)
    return doc


@pytest.fixture
def operator_as_service_account(release, tmp_path):
    """`python -m moe_operator` with the arguments the chart gives it, as the chart's ServiceAccount."""
    deployment = release.kubectl_json("get", "deployment", release.fullname, "-n", release.namespace)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "moe_operator"]
    kubeconfig = service_account_kubeconfig(release, tmp_path / "kubeconfig")
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "POD_NAME": "helm-test-operator",
           "POD_NAMESPACE": release.namespace}  # fmt: skip
    env.pop("KUBERNETES_SERVICE_HOST", None)
    # the policy file the pod would have mounted from the chart's ConfigMap
    policy = release.kubectl_json("get", "configmap", f"{release.fullname}-policy", "-n", release.namespace)
    (tmp_path / "policy.yaml").write_text(policy["data"]["policy.yaml"])
    args = [
        f"--policy-file={tmp_path / 'policy.yaml'}" if arg.startswith("--policy-file=") else arg
        for arg in container["args"]
    ]
    log_path = tmp_path / "operator.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moe_operator", *args],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield proc, log_path
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_operator_with_the_chart_identity_reconciles_an_example(release, operator_as_service_account):
    proc, log_path = operator_as_service_account
    md = example_model_deployment()
    name, ns = md["metadata"]["name"], release.watched
    release.cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(md))

    def ready():
        log = log_path.read_text()
        assert proc.poll() is None, f"operator exited {proc.returncode}:\n{log[-4000:]}"
        assert "Forbidden" not in log, f"the chart's RBAC refused the operator:\n{log[-4000:]}"
        status = release.kubectl_json("get", "modeldeployment", name, "-n", ns).get("status", {})
        conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
        return conditions.get("Ready") == "True"

    try:
        wait_for(ready, timeout=180, what=f"ModelDeployment {ns}/{name} Ready=True")
    except AssertionError as err:
        raise AssertionError(f"{err}\noperator log:\n{log_path.read_text()[-4000:]}") from None

    uid = release.kubectl_json("get", "modeldeployment", name, "-n", ns)["metadata"]["uid"]
    children = release.kubectl_json(
        "get", "deployments,services,configmaps", "-n", ns, "-l", f"moedeploy.dev/model-deployment={name}"
    )["items"]  # fmt: skip
    assert {child["kind"] for child in children} == {"Deployment", "Service", "ConfigMap"}
    lease = release.kubectl_json("get", "lease", release.fullname, "-n", release.namespace)
    assert lease["spec"]["holderIdentity"] == "helm-test-operator", "it reconciled as the elected leader"
    for child in children:
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "moe-operator"
        assert [ref["uid"] for ref in child["metadata"]["ownerReferences"]] == [uid]
    log = log_path.read_text()
    # an ApiException reads "(403)\nReason: Forbidden"; a bare "403" would match a log line's milliseconds
    assert "Forbidden" not in log and "(403)" not in log, log[-4000:]


def test_service_account_can_do_what_the_operator_needs_and_nothing_else(release):
    watched, other = release.watched, release.other
    for verb, resource in [
        ("watch", "modeldeployments.moedeploy.dev"),
        ("update", "modeldeployments.moedeploy.dev:status"),
        ("delete", "deployments.apps"),
        ("list", "pods"),
        ("create", "deployments.apps"),
        ("patch", "services"),
        ("create", "configmaps"),
        ("create", "events"),
        # spec.routing: the router's identity and the track Services
        ("delete", "services"),
        ("create", "serviceaccounts"),
        ("create", "roles.rbac.authorization.k8s.io"),
        ("create", "rolebindings.rbac.authorization.k8s.io"),
        ("watch", "endpointslices.discovery.k8s.io"),
    ]:
        assert release.can_i(verb, resource, watched), f"cannot {verb} {resource} in {watched}"

    refused = [
        ("get", "secrets", watched),
        ("list", "secrets", watched),
        ("get", "secrets", release.namespace),
        ("create", "pods", watched),
        ("get", "pods", watched),
        ("patch", "modeldeployments.moedeploy.dev", watched),
        ("create", "pods:exec", watched),
        ("create", "serviceaccounts:token", release.namespace),
        # it may create Roles and RoleBindings, but grant nothing it does not hold itself
        ("escalate", "roles.rbac.authorization.k8s.io", watched),
        ("bind", "roles.rbac.authorization.k8s.io", watched),
        ("bind", "clusterroles.rbac.authorization.k8s.io", None),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", None),
        ("create", "rolebindings.rbac.authorization.k8s.io", other),
        ("list", "customresourcedefinitions.apiextensions.k8s.io", None),
        ("list", "namespaces", None),
        ("delete", "modeldeployments.moedeploy.dev", watched),
        ("list", "modeldeployments.moedeploy.dev", other),  # not watched
        ("create", "deployments.apps", other),
        ("get", "nodes", None),
        ("create", "statefulsets.apps", watched),
        ("*", "*", watched),
    ]
    allowed = [(verb, resource, ns) for verb, resource, ns in refused if release.can_i(verb, resource, ns)]
    assert not allowed, f"{release.service_account} may {allowed}"
    forbidden = release.cluster.kubectl(
        "get", "secrets", "-n", watched, f"--as={release.service_account}", check=False
    )  # fmt: skip
    assert forbidden.returncode != 0 and "Forbidden" in forbidden.stderr


def test_upgrade_with_changed_values(release):
    release.helm(
        "upgrade", release.name, str(CHART), "-n", release.namespace, "--wait", "--timeout", "120s",
        "--reuse-values",
        "--set", f"operator.watchNamespaces={{{release.watched},{release.other}}}",
        "--set", "operator.logLevel=debug",
        "--set", "replicaCount=2",
        "--set", "monitoring.podMonitor.enabled=true",
    )  # fmt: skip
    notes = release.helm("get", "notes", release.name, "-n", release.namespace).stdout
    assert "no PodMonitor was created" in notes  # no prometheus-operator in this cluster
    history = json.loads(release.helm("history", release.name, "-n", release.namespace, "-o", "json").stdout)
    assert [entry["revision"] for entry in history] == [1, 2] and history[-1]["status"] == "deployed"

    deployment = release.kubectl_json("get", "deployment", release.fullname, "-n", release.namespace)
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--namespace={release.other}" in args and "--verbose" in args
    assert "--leader-elect" in args
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert release.can_i("create", "deployments.apps", release.other)


def test_uninstall_removes_the_release_but_keeps_the_crd_and_the_models(release):
    release.helm("uninstall", release.name, "-n", release.namespace, "--wait")
    ns = release.namespace
    assert (
        release.cluster.kubectl("get", "deployment", release.fullname, "-n", ns, check=False).returncode != 0
    )
    assert (
        release.cluster.kubectl("get", "serviceaccount", release.fullname, "-n", ns, check=False).returncode
        != 0
    )
    assert (
        release.cluster.kubectl(
            "get", "role", release.fullname, "-n", release.watched, check=False
        ).returncode
        != 0
    )
    assert not release.can_i("list", "modeldeployments.moedeploy.dev", release.watched)

    release.cluster.kubectl("get", "crd", CRD_NAME)  # Helm never deletes what crds/ installed
    models = release.kubectl_json("get", "modeldeployments", "-n", release.watched)["items"]
    assert models, "the user's ModelDeployments went with the release"
