"""The local control plane is real: scheduling onto fake GPU nodes, RBAC, garbage collection."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def namespace(cluster):
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def gpu_deployment(name: str, gpus: int, replicas: int = 1) -> str:
    labels = {"app": name}
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "main",
                                "image": "moedeploy/runtime:test",
                                "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                            }
                        ]
                    },
                },
            },
        }
    )


def pods(cluster, namespace: str, app: str) -> list[dict]:
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", f"app={app}", "-o", "json").stdout
    return json.loads(out)["items"]


def test_gpu_pods_are_scheduled_on_gpu_nodes_and_become_ready(cluster, namespace):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=gpu_deployment("fits", gpus=1, replicas=2))
    cluster.kubectl("rollout", "status", "-n", namespace, "deployment/fits", "--timeout=90s")
    items = pods(cluster, namespace, "fits")
    assert len(items) == 2
    for pod in items:
        assert pod["spec"]["nodeName"] in cluster.gpu_nodes
        assert pod["status"]["phase"] == "Running"
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert ready["Ready"] == "True"


def test_pod_asking_more_gpus_than_any_node_has_stays_pending(cluster, namespace):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=gpu_deployment("too-big", gpus=64))

    def unschedulable():
        items = pods(cluster, namespace, "too-big")
        conditions = items[0]["status"].get("conditions", []) if items else []
        return [c for c in conditions if c["type"] == "PodScheduled" and c["status"] == "False"]

    condition = wait_for(unschedulable, what="PodScheduled=False")[0]
    assert condition["reason"] == "Unschedulable"
    assert "nvidia.com/gpu" in condition["message"]
    events = cluster.kubectl(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        "reason=FailedScheduling",
        "-o",
        "jsonpath={.items[*].message}",
    ).stdout
    assert "Insufficient nvidia.com/gpu" in events
    assert pods(cluster, namespace, "too-big")[0]["status"]["phase"] == "Pending"


def test_rbac_refuses_a_service_account_without_a_role(cluster, namespace):
    cluster.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    as_nobody = f"--as=system:serviceaccount:{namespace}:nobody"
    refused = cluster.kubectl("get", "pods", "-n", namespace, as_nobody, check=False)
    assert refused.returncode != 0
    assert "Forbidden" in refused.stderr and "cannot list resource" in refused.stderr
    assert (
        cluster.kubectl(
            "auth", "can-i", "list", "pods", "-n", namespace, as_nobody, check=False
        ).stdout.strip()
        == "no"
    )

    cluster.kubectl("create", "role", "pod-reader", "-n", namespace, "--verb=list", "--resource=pods")
    cluster.kubectl(
        "create",
        "rolebinding",
        "nobody-reads",
        "-n",
        namespace,
        "--role=pod-reader",
        f"--serviceaccount={namespace}:nobody",
    )
    assert cluster.kubectl("get", "pods", "-n", namespace, as_nobody).returncode == 0
    assert cluster.kubectl("get", "pods", "-n", namespace).returncode == 0


def test_deleting_an_owner_garbage_collects_its_dependents(cluster, namespace):
    cluster.kubectl("create", "configmap", "owner", "-n", namespace)
    uid = cluster.kubectl(
        "get", "configmap", "owner", "-n", namespace, "-o", "jsonpath={.metadata.uid}"
    ).stdout
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}],
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(dependent))
    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)

    def gone():
        return cluster.kubectl("get", "configmap", "dependent", "-n", namespace, check=False).returncode != 0

    wait_for(gone, what="the garbage collector to delete the dependent")


def test_binaries_report_their_real_version(cluster):
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"].startswith("v1.")
    assert version["serverVersion"]["gitVersion"] != "v0.0.0-master"
    assert version["clientVersion"]["gitVersion"] == version["serverVersion"]["gitVersion"]
