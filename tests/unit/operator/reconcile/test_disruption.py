"""Writing the budgets: created, kept in step, deleted when a track no longer needs one; never someone else's."""

import pytest

from moe_operator.decisions.naming import CANARY, STABLE
from moe_operator.decisions.render import disruption_budget
from moe_operator.decisions.spec import parse_spec
from moe_operator.io.children import NameConflict, Writer
from moe_operator.reconcile.disruption import ensure_disruption_budgets
from tests.unit.operator.fake_api import FakeApi
from tests.unit.operator.samples import OWNER, spec


def ensure(api, tracks, **fields):
    desired = parse_spec(spec(**fields))
    ensure_disruption_budgets(Writer(api, api.cache, OWNER.uid), api.cache, OWNER, desired, tracks)


def names(api):
    return sorted(o["metadata"]["name"] for o in api.of_kind("PodDisruptionBudget"))


def test_budgets_come_and_go_with_the_tracks_and_follow_the_spec():
    api = FakeApi()
    ensure(api, [STABLE, CANARY], replicas=3, rollout={"canaryReplicas": 2})
    assert names(api) == [OWNER.name, f"{OWNER.name}-canary"]
    writes = len(api.writes)
    ensure(api, [STABLE, CANARY], replicas=3, rollout={"canaryReplicas": 2})
    assert len(api.writes) == writes, "in step: nothing written"
    ensure(api, [STABLE], replicas=3, rollout={"maxUnavailable": 2})
    assert names(api) == [OWNER.name]
    assert api.get_obj("PodDisruptionBudget", OWNER.namespace, OWNER.name)["spec"]["maxUnavailable"] == 2
    ensure(api, [STABLE], replicas=1)
    assert names(api) == []


def test_a_namesake_of_someone_else_is_left_alone():
    api = FakeApi()
    theirs = disruption_budget(OWNER, parse_spec(spec(replicas=3)), STABLE)
    theirs["metadata"]["ownerReferences"] = []
    api.put(theirs)
    with pytest.raises(NameConflict):
        ensure(api, [STABLE], replicas=3)


def test_the_operator_may_do_what_it_does_with_budgets():
    from moe_operator.io.kube import PERMISSIONS
    from moe_operator.manager import WATCHED

    granted = {(group, resource): set(verbs) for group, resource, verbs in PERMISSIONS}
    assert {"list", "watch", "create", "patch", "delete"} <= granted["policy", "poddisruptionbudgets"]
    assert "PodDisruptionBudget" in WATCHED, "the pass reads them from the watch cache"
