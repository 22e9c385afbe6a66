"""The reconcile pass keeps a PodDisruptionBudget per track that needs one (issue 24 item 2): created with the
track, kept in step with the spec, put back when edited, deleted when its track goes or shrinks to one pod, and
a namesake of someone else is never touched."""

import pytest
from kubernetes.client.exceptions import ApiException

from moe_operator.decisions.naming import TRACK_LABEL
from moe_operator.io.children import WriteRefused
from moe_operator.io.kube import PERMISSIONS
from moe_operator.manager import WATCHED
from tests.unit.operator.world import FAST_SLO, GOOD, NAME, NS, World

KIND = "PodDisruptionBudget"
NO_BAKE = {**FAST_SLO, "bakeSeconds": 0}


def budgets(world):
    return {budget["metadata"]["name"]: budget for budget in world.api.of_kind(KIND)}


def budget_writes(world, since=0):
    return [write for write in world.api.writes[since:] if write[1] == KIND]


def test_the_stable_track_of_several_pods_gets_one_owned_by_the_model_deployment():
    world = World(replicas=3)
    world.reconcile()
    (stable,) = budgets(world).values()
    assert stable["metadata"]["name"] == NAME
    assert stable["metadata"]["ownerReferences"][0]["uid"] == world.md()["metadata"]["uid"]
    assert stable["spec"]["selector"]["matchLabels"][TRACK_LABEL] == "stable"
    assert stable["spec"]["maxUnavailable"] == 1
    writes = len(world.api.writes)
    world.reconcile()
    assert budget_writes(world, writes) == [], "in step: nothing written"


def test_it_follows_the_spec_and_goes_when_the_track_has_one_pod():
    world = World(replicas=3)
    world.reconcile()
    world.change_spec(replicas=3, rollout={"strategy": "RollingUpdate", "maxUnavailable": 2})
    world.reconcile()
    assert budgets(world)[NAME]["spec"]["maxUnavailable"] == 2
    world.change_spec(replicas=1, rollout={"strategy": "RollingUpdate"})
    world.reconcile()
    assert budgets(world) == {}
    world.change_spec(replicas=1, rollout={"strategy": "RollingUpdate", "disruptionBudget": {}})
    world.reconcile()
    assert list(budgets(world)) == [NAME], "asked for: a track of one pod gets one too"


def test_an_edited_budget_is_put_back():
    world = World(replicas=3)
    world.reconcile()
    edited = budgets(world)[NAME]
    edited["spec"]["maxUnavailable"] = 0  # blocks every drain
    world.api.put(edited)
    world.reconcile()
    assert budgets(world)[NAME]["spec"]["maxUnavailable"] == 1


def test_the_canary_s_budget_comes_and_goes_with_the_canary():
    world = World(replicas=3, slo=NO_BAKE, rollout={"canaryReplicas": 2})
    world.reconcile()
    world.settle()
    world.reconcile()
    world.change_spec(
        replicas=3, slo=NO_BAKE, rollout={"canaryReplicas": 2}, runtime__image="registry.local/moe-runtime:2"
    )
    world.reconcile()
    assert world.deployment("canary") is not None
    canary = budgets(world)[f"{NAME}-canary"]
    assert canary["spec"]["selector"]["matchLabels"][TRACK_LABEL] == "canary"
    world.settle("canary")
    world.reconcile()
    world.analyse_until(GOOD)
    world.settle()
    world.reconcile()
    assert world.deployment("canary") is None
    assert list(budgets(world)) == [NAME]


def test_a_namesake_of_someone_else_is_left_alone_and_reported():
    world = World(replicas=3)
    theirs = {
        "apiVersion": "policy/v1",
        "kind": KIND,
        "metadata": {
            "name": NAME,
            "namespace": NS,
            "labels": {"app.kubernetes.io/managed-by": "moe-operator"},
        },
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "theirs"}}},
    }
    world.api.put(theirs)
    world.reconcile()
    assert budgets(world)[NAME]["spec"] == theirs["spec"]
    assert budget_writes(world) == []
    assert world.condition("Degraded")["reason"] == "NameConflict"
    assert KIND in world.condition("Degraded")["message"]


def test_a_namesake_the_watch_never_showed_is_found_on_create_and_left_alone():
    world = World(replicas=3)
    theirs = {
        "apiVersion": "policy/v1",
        "kind": KIND,
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "theirs"}}},
    }
    world.api.put(theirs)
    world.api.cache.delete(world.api.get_obj(KIND, NS, NAME))  # not labelled as ours: never watched
    world.reconcile()
    assert budgets(world)[NAME]["spec"] == theirs["spec"]
    assert world.condition("Degraded")["reason"] == "NameConflict"


def test_a_refused_budget_is_reported_like_any_refused_child():
    """A cluster whose RBAC or admission refuses budgets: the ModelDeployment says so, it does not loop."""
    world = World(replicas=3)
    forbidden = ApiException(status=403, reason="Forbidden")
    forbidden.body = '{"message": "poddisruptionbudgets.policy is forbidden"}'
    world.api.refuse[KIND] = forbidden
    with pytest.raises(WriteRefused):
        world.reconcile()
    degraded = world.condition("Degraded")
    assert degraded["reason"] == "ApplyFailed" and "poddisruptionbudgets" in degraded["message"]


def test_the_operator_may_do_what_it_does_with_budgets():
    granted = {(group, resource): set(verbs) for group, resource, verbs in PERMISSIONS}
    assert {"get", "list", "watch", "create", "patch", "delete"} <= granted["policy", "poddisruptionbudgets"]
    assert "PodDisruptionBudget" in WATCHED, "the pass reads them from the watch cache"
