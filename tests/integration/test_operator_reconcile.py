"""The operator as a process against the real control plane: children, readiness on fake GPU nodes,
rollouts, scaling, drift repair, restarts, refusals and deletion."""

from __future__ import annotations

import json

import pytest

from tests.integration.operator_support import (
    GROUP,
    PLURAL,
    VERSION,
    OperatorProcess,
    example,
    small_md,
    static_pvc,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

FIXED_LABELS = {
    "app.kubernetes.io/name": "moe-runtime",
    "app.kubernetes.io/managed-by": "moe-operator",
}


def revisions_of_pods(models, name: str) -> set[str]:
    return {pod["metadata"]["labels"]["moedeploy.dev/revision"] for pod in models.pods(name)}


def only_new_pods(models, name: str, revision: str, count: int):
    def done():
        pods = models.pods(name)
        return (
            len(pods) == count
            and revisions_of_pods(models, name) == {revision}
            and all(pod["status"]["phase"] == "Running" for pod in pods)
        )

    return wait_for(done, timeout=90, what=f"only {count} Running pods at revision {revision}")


def event_reasons(models, name: str) -> set[str]:
    return {event["reason"] for event in models.events(name)}


def test_example_becomes_ready_on_gpu_nodes(cluster, models, operator):
    models.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                         "items": static_pvc(models.namespace, "model-weights")}))  # fmt: skip
    body = example("qwen3-moe.yaml")
    name = body["metadata"]["name"]
    models.apply(body)
    md = models.wait_ready(name, replicas=2)
    revision = md["status"]["currentRevision"]
    owner = {"apiVersion": "moedeploy.dev/v1alpha1", "kind": "ModelDeployment", "name": name,
             "uid": md["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}  # fmt: skip

    for kind in ("deployment", "service", "configmap"):
        child_name = f"{name}-{revision}" if kind == "configmap" else name
        child = json.loads(models.kubectl("get", kind, child_name, "-o", "json").stdout)
        labels = child["metadata"]["labels"]
        assert labels.items() >= {**FIXED_LABELS, "app.kubernetes.io/instance": name,
                                  "moedeploy.dev/model-deployment": name}.items()  # fmt: skip
        if kind == "configmap":
            assert child["immutable"] is True and child["data"]["MOE_RUNTIME_SERVED_MODEL_NAME"]
        assert child["metadata"]["ownerReferences"] == [owner]

    deployment = models.deployment(name)
    pod_spec = deployment["spec"]["template"]["spec"]
    assert pod_spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod_spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert deployment["spec"]["template"]["metadata"]["labels"]["moedeploy.dev/revision"] == revision

    pods = models.pods(name)
    assert len(pods) == 2
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        assert pod["spec"]["nodeName"] in cluster.gpu_nodes
        assert pod["metadata"]["labels"]["moedeploy.dev/revision"] == revision

    status = md["status"]
    assert (status["phase"], status["replicas"], status["readyReplicas"], status["updatedReplicas"]) == (
        "Ready", 2, 2, 2,
    )  # fmt: skip
    assert status["selector"] == (
        f"app.kubernetes.io/name=moe-runtime,moedeploy.dev/model-deployment={name},app.kubernetes.io/component notin (router)"
    )
    ready = models.condition(name, "Ready")
    assert (
        ready["reason"] == "AllReplicasReady" and ready["observedGeneration"] == md["metadata"]["generation"]
    )

    assert status["stableRevision"] == revision and status["model"] == "qwen3-30b-a3b"
    assert status["url"] == f"http://{name}.{models.namespace}.svc.cluster.local"
    table = models.kubectl("get", "md", name).stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "DESIRED", "STABLE", "CANARY", "ANALYSIS", "PHASE", "AGE"]
    assert table[1].split()[:4] == [name, "2", "2", revision] and "Ready" in table[1].split()
    wide = models.kubectl("get", "md", name, "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-2:] == ["URL", "MODEL"] and wide[1].split()[-1] == "qwen3-30b-a3b"
    wait_for(lambda: {"Created", "Ready"} <= event_reasons(models, name), what="Created and Ready events")


def test_spec_change_runs_a_canary_then_rolls_the_stable_track(models, operator, created):
    created(small_md("rolling", replicas=2))
    first = models.wait_ready("rolling", replicas=2)["status"]["currentRevision"]

    models.patch_spec("rolling", {"runtime": {"batching": {"maxQueue": 100}}})
    second = models.wait_ready("rolling", replicas=2)["status"]["currentRevision"]
    assert second != first, "a runtime setting in the ConfigMap is part of the revision"
    only_new_pods(models, "rolling", second, 2)
    config = json.loads(models.kubectl("get", "configmap", f"rolling-{second}", "-o", "json").stdout)
    assert config["data"]["MOE_RUNTIME_MAX_QUEUE"] == "100"
    assert models.deployment("rolling-canary") is None
    wait_for(
        lambda: {"CanaryStarted", "Promoted", "PromotionComplete"} <= event_reasons(models, "rolling"),
        what="the canary's events",
    )


def test_a_removed_setting_leaves_the_pods(models, operator, created):
    created(
        small_md(
            "unset", runtime={"image": "moe-runtime:1", "resources": {"gpu": 1}, "attention": {"window": 64}}
        )
    )
    models.wait_ready("unset", replicas=1)
    models.patch_spec("unset", {"runtime": {"attention": None}})
    revision = models.wait_ready("unset", replicas=1)["status"]["currentRevision"]
    config = json.loads(models.kubectl("get", "configmap", f"unset-{revision}", "-o", "json").stdout)
    assert "MOE_RUNTIME_WINDOW" not in config["data"]
    env_from = models.deployment("unset")["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert env_from == [{"configMapRef": {"name": f"unset-{revision}"}}]


def test_kubectl_scale_changes_the_replicas(models, operator, created):
    created(small_md("scaled"))
    models.wait_ready("scaled", replicas=1)
    models.kubectl("scale", "md/scaled", "--replicas=3")
    md = models.wait_ready("scaled", replicas=3)
    assert md["spec"]["replicas"] == 3 and md["status"]["replicas"] == 3
    assert models.deployment("scaled")["spec"]["replicas"] == 3
    assert len(models.pods("scaled")) == 3
    wait_for(lambda: "Scaled" in event_reasons(models, "scaled"), what="a Scaled event")


def test_manual_edit_of_the_deployment_is_put_back(models, operator, created):
    created(small_md("drifting", replicas=2))
    md = models.wait_ready("drifting", replicas=2)
    revision = md["status"]["currentRevision"]
    patch = {
        "spec": {
            "replicas": 1,
            "template": {"spec": {"containers": [{"name": "runtime", "image": "evil:1"}]}},
        }
    }
    models.kubectl("patch", "deployment", "drifting", "--type=strategic", "-p", json.dumps(patch))

    def put_back():
        deployment = models.deployment("drifting")
        return (
            deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "moe-runtime:1"
            and deployment["spec"]["replicas"] == 2
        )

    wait_for(put_back, timeout=30, what="the Deployment's image and replicas to be put back")
    models.wait_ready("drifting", revision=revision, replicas=2)

    def original_pods_only():
        pods = models.pods("drifting")
        images = {pod["spec"]["containers"][0]["image"] for pod in pods}
        return (
            len(pods) == 2
            and images == {"moe-runtime:1"}
            and revisions_of_pods(models, "drifting") == {revision}
        )

    wait_for(original_pods_only, timeout=90, what="the pods of the hand-edited template to be replaced")
    wait_for(lambda: "DriftRepaired" in event_reasons(models, "drifting"), what="a DriftRepaired event")


def test_operator_restarted_mid_rollout_finishes_it(models, operator, created):
    created(small_md("restarted", replicas=2))
    old = models.wait_ready("restarted", replicas=2)["status"]["currentRevision"]

    models.patch_spec("restarted", {"runtime": {"image": "moe-runtime:2"}})
    wait_for(lambda: models.deployment("restarted-canary"), timeout=30, what="the operator to start a canary")
    operator.restart(kill=True)
    new = models.wait_ready("restarted", replicas=2)["status"]["currentRevision"]
    assert new != old
    only_new_pods(models, "restarted", new, 2)

    # a change made while no operator runs is picked up at start
    operator.stop()
    models.patch_spec("restarted", {"runtime": {"image": "moe-runtime:3"}})
    operator.start()
    newest = models.wait_ready("restarted", replicas=2)["status"]["currentRevision"]
    assert newest not in (old, new)
    only_new_pods(models, "restarted", newest, 2)


def test_child_refused_by_the_api_server_is_reported(models, operator, created):
    broken_env = [{"name": "BROKEN", "valueFrom": {}}]
    created(
        small_md("refused", runtime={"image": "moe-runtime:1", "resources": {"gpu": 1}, "env": broken_env})
    )

    def degraded():
        condition = models.condition("refused", "Degraded")
        return (
            condition and condition["status"] == "True" and condition["reason"] == "ApplyFailed" and condition
        )

    condition = wait_for(degraded, timeout=30, what="Degraded=True ApplyFailed")
    assert "valueFrom" in condition["message"]
    assert models.get("refused")["status"]["phase"] == "Degraded"

    models.patch_spec("refused", {"runtime": {"env": None}})
    models.wait_ready("refused", replicas=1)


def test_a_namesake_that_belongs_to_someone_else_is_left_alone(models, operator, created):
    foreign = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "taken", "labels": {"app.kubernetes.io/managed-by": "Helm"}},
               "spec": {"selector": {"app": "theirs"}, "ports": [{"port": 80}]}}  # fmt: skip
    models.apply(foreign)
    created(small_md("taken"))

    def conflict():
        condition = models.condition("taken", "Degraded")
        return condition if condition and condition["reason"] == "NameConflict" else None

    condition = wait_for(conflict, timeout=30, what="Degraded=True NameConflict")
    assert "Service" in condition["message"] and "taken" in condition["message"]
    service = json.loads(models.kubectl("get", "service", "taken", "-o", "json").stdout)
    assert service["spec"]["selector"] == {"app": "theirs"} and "ownerReferences" not in service["metadata"]
    assert models.deployment("taken") is None
    wait_for(lambda: "NameConflict" in event_reasons(models, "taken"), what="a NameConflict event")
    models.kubectl("delete", "md", "taken", "--wait=true", "--timeout=60s")
    models.kubectl("get", "service", "taken")  # deleting the ModelDeployment did not take it along
    models.kubectl("delete", "service", "taken")


def test_a_pod_that_cannot_be_scheduled_says_why_at_once(models, operator, created):
    gpu_type = {"image": "moe-runtime:1", "resources": {"gpu": 1, "gpuType": "NVIDIA-B200"}}
    created(small_md("nowhere", runtime=gpu_type))

    def unschedulable():
        condition = models.condition("nowhere", "Degraded")
        return condition if condition and condition["reason"] == "Unschedulable" else None

    condition = wait_for(unschedulable, timeout=30, what="Degraded=True Unschedulable")
    assert "node" in condition["message"], condition["message"]


def test_the_operator_policy_refuses_before_anything_is_created(cluster, models, tmp_path):
    # the running operator of this module would reconcile it too: give the strict one a namespace of its own
    namespace = f"{models.namespace}-strict"
    cluster.kubectl("create", "namespace", namespace)
    strict = OperatorProcess(cluster, ["--namespace", namespace], tmp_path / "strict.log", policy={})
    strict.start()
    try:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(small_md("hostpath")))

        def refused():
            md = json.loads(cluster.kubectl("get", "md", "hostpath", "-n", namespace, "-o", "json").stdout)
            degraded = next(
                (c for c in md.get("status", {}).get("conditions", ()) if c["type"] == "Degraded"), {}
            )
            return degraded if degraded.get("reason") == "PolicyViolation" else None

        degraded = wait_for(refused, timeout=60, what="Degraded=True PolicyViolation")
        assert (
            "spec.model.source.hostPath" in degraded["message"]
            and "spec.runtime.image" in degraded["message"]
        )
        children = cluster.kubectl("get", "deployment,service,configmap", "-n", namespace, "-l",
                                   "moedeploy.dev/model-deployment=hostpath", "-o", "name").stdout  # fmt: skip
        assert children.strip() == ""
    finally:
        strict.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_deleting_the_model_deployment_removes_its_children(models, operator, created):
    created(small_md("deleted", replicas=2))
    models.wait_ready("deleted", replicas=2)
    models.kubectl("delete", "md", "deleted", "--wait=true", "--timeout=60s")

    def gone():
        remaining = models.kubectl(
            "get",
            "deployment,service,configmap,pod",
            "-l",
            "moedeploy.dev/model-deployment=deleted",
            "-o",
            "name",
        ).stdout.split()
        return not remaining

    wait_for(gone, timeout=60, what="the garbage collector to remove the children")


def test_operator_bookkeeping_stays_out_of_the_way(models, operator):
    for md in models.custom.list_namespaced_custom_object(GROUP, VERSION, models.namespace, PLURAL)["items"]:
        assert "kopf" not in md["status"]
        assert not md["metadata"].get("finalizers")
        annotations = md["metadata"].get("annotations", {})
        assert all(not key.startswith("kopf.zalando.org") for key in annotations), annotations
    assert operator.alive
    assert operator.errors() == []
