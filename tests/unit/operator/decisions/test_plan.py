import copy

import pytest

from moe_operator.decisions.plan import covers, plan_deployment, template_revision
from tests.unit.operator.samples import render_children, spec

DESIRED = render_children(spec(runtime__resources={"gpu": 2, "cpu": "1000m", "memory": "1Gi"})).deployment


def as_stored(deployment):
    """The Deployment as the API server returns it: defaults filled in, quantities canonical, status added."""
    stored = copy.deepcopy(deployment)
    stored["metadata"].update(uid="u", resourceVersion="9", generation=3, managedFields=[])
    pod = stored["spec"]["template"]["spec"]
    pod.update(dnsPolicy="ClusterFirst", restartPolicy="Always", schedulerName="default-scheduler")
    container = pod["containers"][0]
    container.update(terminationMessagePath="/dev/termination-log", imagePullPolicy="IfNotPresent")
    container["resources"] = {
        "requests": {"cpu": "1", "memory": "1Gi"},
        "limits": {"memory": "1Gi", "nvidia.com/gpu": "2"},
    }
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        container[probe].update(successThreshold=1)
        container[probe]["httpGet"]["scheme"] = "HTTP"
    pod["volumes"][0]["emptyDir"] = {}
    stored["status"] = {"observedGeneration": 3, "replicas": 1}
    return stored


def edited(change):
    stored = as_stored(DESIRED)
    change(stored)
    return stored


def image_changed(d):
    d["spec"]["template"]["spec"]["containers"][0]["image"] = "someone/else:1"


def env_added_by_someone(d):
    d["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "DEBUG", "value": "1"})


def label_removed(d):
    del d["metadata"]["labels"]["app.kubernetes.io/managed-by"]


def gpu_lowered(d):
    d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "1"


def scaled_by_hand(d):
    d["spec"]["replicas"] = 5


def older_revision(d):
    d["spec"]["template"] = render_children(spec(runtime__image="old:1")).deployment["spec"]["template"]


# (id, Deployment in the cluster, action, what changed, replicas it had)
CASES = [
    ("absent", None, "create", set(), None),
    ("in-step-with-server-defaults", as_stored(DESIRED), "keep", set(), 1),
    ("fields-added-by-others-are-left-alone", edited(env_added_by_someone), "keep", set(), 1),
    ("image-edited-by-hand", edited(image_changed), "update", {"drift"}, 1),
    ("label-removed", edited(label_removed), "update", {"drift"}, 1),
    ("gpu-limit-lowered", edited(gpu_lowered), "update", {"drift"}, 1),
    ("replicas-changed", edited(scaled_by_hand), "update", {"scale"}, 5),
    ("new-revision", edited(older_revision), "update", {"rollout"}, 1),
]


@pytest.mark.parametrize(
    ("observed", "action", "changes", "replicas"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_plan(observed, action, changes, replicas):
    plan = plan_deployment(DESIRED, observed)
    assert plan.action == action
    assert {change for change in ("rollout", "scale", "drift") if getattr(plan, change)} == changes
    assert plan.previous_replicas == replicas
    assert plan.previous_revision == (observed and template_revision(observed))


@pytest.mark.parametrize(
    ("observed", "desired", "result"),
    [
        ({"a": 1, "b": 2}, {"a": 1}, True),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ([{"name": "x", "v": 1}, {"name": "y"}], [{"name": "y"}, {"name": "x"}], True),
        ([{"name": "x", "v": 1}], [{"name": "x", "v": 2}], False),
        ([1, 2], [1, 2, 3], False),
        ([{"key": "a"}, {"key": "b"}], [{"key": "a"}], False),
        ({"limits": {"cpu": "1"}}, {"limits": {"cpu": "1000m"}}, True),
        ({"limits": {"nvidia.com/gpu": "2"}}, {"limits": {"nvidia.com/gpu": 2}}, True),
        ({"limits": {"memory": "1G"}}, {"limits": {"memory": "1Gi"}}, False),
        ({"label": "1k"}, {"label": "1000"}, False),
    ],
)
def test_covers(observed, desired, result):
    assert covers(observed, desired) is result
