"""The PodDisruptionBudgets the operator writes, against the real API server: the running operator creates one
per track of several pods from its reconcile pass (accepted as rendered, owned by the ModelDeployment), keeps it
in step with the spec, and deletes it when the track no longer needs one."""

from __future__ import annotations

import json

import pytest

from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def budgeted(replicas: int, **rollout) -> dict:
    return {
        "apiVersion": "moedeploy.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "budgeted"},
        "spec": {
            "replicas": replicas,
            "model": {"family": "mixtral", "source": {"hostPath": {"path": "/srv/mixtral"}}},
            "runtime": {"image": "moe-runtime:1", "resources": {"gpu": 0}},
            "rollout": {"strategy": "RollingUpdate", **rollout},
        },
    }


def budgets(models) -> dict[str, dict]:
    found = json.loads(models.kubectl("get", "pdb", "-o", "json").stdout)["items"]
    return {pdb["metadata"]["name"]: pdb for pdb in found}


def test_budgets_are_written_owned_kept_in_step_and_removed(models, operator, created):
    created(budgeted(3, maxUnavailable="34%"))
    stable = wait_for(lambda: budgets(models).get("budgeted"), what="the stable track's PodDisruptionBudget")
    assert stable["spec"]["maxUnavailable"] == "34%"
    assert stable["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert stable["spec"]["selector"]["matchLabels"]["moedeploy.dev/track"] == "stable"
    assert stable["metadata"]["ownerReferences"][0]["uid"] == models.get("budgeted")["metadata"]["uid"]

    models.patch_spec("budgeted", {"rollout": {"maxUnavailable": 2}})
    wait_for(
        lambda: budgets(models)["budgeted"]["spec"]["maxUnavailable"] == 2,
        what="the budget following the spec",
    )
    models.patch_spec("budgeted", {"replicas": 1})
    wait_for(lambda: "budgeted" not in budgets(models), what="the budget of a one-pod track deleted")
