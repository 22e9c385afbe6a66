"""A PodDisruptionBudget per track: a node drain or a cluster-autoscaler scale-down must not evict every
replica at once (replacements take up to startupTimeoutSeconds to load their weights)."""

import pytest

from moe_operator.decisions.naming import CANARY, STABLE, TRACK_LABEL
from moe_operator.decisions.render import disruption_budget
from moe_operator.decisions.spec import parse_spec
from tests.unit.operator.samples import OWNER, spec


def budget(track=STABLE, **fields):
    return disruption_budget(OWNER, parse_spec(spec(**fields)), track)


def test_several_replicas_get_a_budget_per_track_that_selects_only_that_track_s_pods():
    stable = budget(replicas=3)
    assert stable["apiVersion"] == "policy/v1" and stable["kind"] == "PodDisruptionBudget"
    assert (
        stable["metadata"]["name"] == OWNER.name
        and stable["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    )
    assert stable["spec"]["selector"]["matchLabels"][TRACK_LABEL] == STABLE
    # one pod at a time, even with maxUnavailable 0 for the rolling update: a budget of 0 blocks every drain
    assert stable["spec"]["maxUnavailable"] == 1
    # a pod that is not Ready (loading its weights, crash-looping) serves nothing: evicting it costs nothing
    assert stable["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    canary = budget(CANARY, replicas=3, rollout={"canaryReplicas": 2})
    assert canary["metadata"]["name"] == f"{OWNER.name}-canary"
    assert canary["spec"]["selector"]["matchLabels"][TRACK_LABEL] == CANARY


@pytest.mark.parametrize(
    ("rollout", "expected"),
    [({"maxUnavailable": 2}, 2), ({"maxUnavailable": "25%"}, "25%"), ({"maxUnavailable": "0%"}, 1)],
)
def test_max_unavailable_follows_the_rollout_settings(rollout, expected):
    assert budget(replicas=4, rollout=rollout)["spec"]["maxUnavailable"] == expected


def test_a_single_replica_gets_none_unless_asked_for():
    assert budget(replicas=1) is None
    assert budget(CANARY, replicas=3) is None, "one canary pod by default"
    assert budget(replicas=1, autoscaling={"enabled": True}, maxReplicas=5) is not None, "it may grow"
    asked = budget(replicas=1, rollout={"disruptionBudget": {"maxUnavailable": 0}})
    assert asked["spec"]["maxUnavailable"] == 0, "the author's own choice, even one that blocks drains"
    assert budget(CANARY, rollout={"disruptionBudget": {}})["spec"]["maxUnavailable"] == 1
