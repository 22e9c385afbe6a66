"""The reconciler's I/O shell against an in-memory stand-in for the API server."""

import copy

import pytest
from kubernetes.client.exceptions import ApiException

from moe_operator.reconcile import Reconciler
from tests.unit.operator_samples import OWNER, spec


class FakeKube:
    def __init__(self):
        self.objects = {}
        self.status_patches = []
        self.refuse = None
        self.reads = []
        self.applies = []

    def get_model_deployment(self, namespace, name):
        return copy.deepcopy(self.objects.get(("ModelDeployment", namespace, name)))

    def patch_model_deployment_status(self, namespace, name, status):
        self.status_patches.append(status)
        self.objects[("ModelDeployment", namespace, name)]["status"] = copy.deepcopy(status)

    def read(self, obj):
        self.reads.append(obj["kind"])
        return copy.deepcopy(
            self.objects.get((obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]))
        )

    def apply(self, obj):
        if self.refuse == obj["kind"]:
            raise ApiException(status=422, reason="Unprocessable Entity")
        self.applies.append(obj["kind"])
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        stored = copy.deepcopy(obj)
        before = self.objects.get(key, {})
        stored["metadata"]["generation"] = before.get("metadata", {}).get("generation", 0) + 1
        stored["status"] = before.get("status", {})
        self.objects[key] = stored
        return copy.deepcopy(stored)

    def deployment_controller_catches_up(self, ready):
        deployment = self.objects[("Deployment", OWNER.namespace, OWNER.name)]
        replicas = deployment["spec"]["replicas"]
        deployment["status"] = {
            "observedGeneration": deployment["metadata"]["generation"],
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": ready,
        }


@pytest.fixture
def world():
    kube = FakeKube()
    kube.objects[("ModelDeployment", OWNER.namespace, OWNER.name)] = {
        "apiVersion": "moedeploy.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": OWNER.name, "namespace": OWNER.namespace, "uid": OWNER.uid, "generation": 1},
        "spec": spec(replicas=2),
    }
    events = []
    reconciler = Reconciler(
        kube, lambda md, event: events.append(event.reason), clock=lambda: "2026-01-01T00:00:00Z"
    )
    return kube, reconciler, events


def md_of(kube):
    return kube.get_model_deployment(OWNER.namespace, OWNER.name)


def test_first_pass_creates_children_and_reports_progress(world):
    kube, reconciler, events = world
    reconciler.reconcile(OWNER.namespace, OWNER.name)
    assert {key[0] for key in kube.objects} == {"ModelDeployment", "ConfigMap", "Service", "Deployment"}
    assert md_of(kube)["status"]["phase"] == "Progressing"
    assert events == ["Created"]


def test_ready_once_the_pods_are(world):
    kube, reconciler, events = world
    reconciler.reconcile(OWNER.namespace, OWNER.name)
    kube.deployment_controller_catches_up(ready=2)
    reconciler.reconcile(OWNER.namespace, OWNER.name, full=False)
    status = md_of(kube)["status"]
    assert status["phase"] == "Ready" and status["readyReplicas"] == 2
    assert events == ["Created", "Ready"]
    patches = len(kube.status_patches)
    reconciler.reconcile(OWNER.namespace, OWNER.name)
    assert len(kube.status_patches) == patches, "an unchanged status is not written again"
    assert events == ["Created", "Ready"]


def test_drift_is_put_back(world):
    kube, reconciler, events = world
    reconciler.reconcile(OWNER.namespace, OWNER.name)
    kube.deployment_controller_catches_up(ready=2)
    deployment = kube.objects[("Deployment", OWNER.namespace, OWNER.name)]
    deployment["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:1"
    reconciler.reconcile(OWNER.namespace, OWNER.name, full=False)
    container = kube.objects[("Deployment", OWNER.namespace, OWNER.name)]["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert container["image"] == "registry.local/moe-runtime:1"
    assert "DriftRepaired" in events


def test_refused_child_is_reported_not_retried(world):
    kube, reconciler, events = world
    kube.refuse = "Deployment"
    reconciler.reconcile(OWNER.namespace, OWNER.name)
    status = md_of(kube)["status"]
    assert status["phase"] == "Degraded"
    assert status["conditions"][2]["reason"] == "ApplyFailed"
    assert events == ["ApplyFailed"]


def test_other_api_errors_propagate_for_kopf_to_retry(world):
    kube, reconciler, _ = world

    def unavailable(obj):
        raise ApiException(status=503, reason="Service Unavailable")

    kube.apply = unavailable
    with pytest.raises(ApiException):
        reconciler.reconcile(OWNER.namespace, OWNER.name)


def test_deleted_model_deployment_is_left_to_the_garbage_collector(world):
    kube, reconciler, events = world
    kube.objects[("ModelDeployment", OWNER.namespace, OWNER.name)]["metadata"]["deletionTimestamp"] = (
        "2026-01-01T00:00:00Z"
    )
    reconciler.reconcile(OWNER.namespace, OWNER.name)
    reconciler.reconcile(OWNER.namespace, "gone", full=False)
    assert {key[0] for key in kube.objects} == {"ModelDeployment"}
    assert events == []


def test_settings_edited_by_hand_are_put_back_by_a_full_pass_only(world):
    kube, reconciler, _ = world
    reconciler.reconcile(OWNER.namespace, OWNER.name)
    config_map = kube.objects[("ConfigMap", OWNER.namespace, f"{OWNER.name}-runtime")]
    config_map["data"]["MOE_RUNTIME_MAX_QUEUE"] = "1"
    kube.applies.clear()
    reconciler.reconcile(OWNER.namespace, OWNER.name, full=False)
    assert kube.applies == []
    reconciler.reconcile(OWNER.namespace, OWNER.name)
    assert kube.applies == ["ConfigMap"], "only what differs is applied"
    assert config_map is not kube.objects[("ConfigMap", OWNER.namespace, f"{OWNER.name}-runtime")]
    assert (
        kube.objects[("ConfigMap", OWNER.namespace, f"{OWNER.name}-runtime")]["data"]["MOE_RUNTIME_MAX_QUEUE"]
        == "256"
    )
