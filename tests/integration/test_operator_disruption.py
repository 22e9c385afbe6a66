"""The PodDisruptionBudgets the operator writes, against the real API server: accepted as rendered, owned by
the ModelDeployment, gone when the track no longer needs one."""

from __future__ import annotations

import json

import pytest

from moe_operator.decisions.naming import CANARY, STABLE, Owner
from moe_operator.decisions.spec import parse_spec
from moe_operator.io.children import Writer
from moe_operator.io.kube import Kube
from moe_operator.machinery.cache import ObjectCache
from moe_operator.reconcile.disruption import ensure_disruption_budgets

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.integration.operator_fixtures"]


def test_budgets_are_written_owned_and_removed(cluster, models):
    body = {
        "apiVersion": "moedeploy.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "budgeted"},
        "spec": {
            "replicas": 3,
            "model": {"family": "mixtral", "source": {"image": {"path": "/opt/m"}}},
            "runtime": {"image": "moe-runtime:1", "resources": {"gpu": 0}},
            "rollout": {"canaryReplicas": 2, "maxUnavailable": "34%"},
        },
    }
    models.apply(body)
    md = models.get("budgeted")
    owner = Owner.of(md)
    cache = ObjectCache()
    writer = Writer(Kube(cluster.api_client()), cache, owner.uid)

    def budgets() -> dict[str, dict]:
        found = json.loads(models.kubectl("get", "pdb", "-o", "json").stdout)["items"]
        return {pdb["metadata"]["name"]: pdb for pdb in found}

    ensure_disruption_budgets(writer, cache, owner, parse_spec(md["spec"]), [STABLE, CANARY])
    found = budgets()
    assert sorted(found) == ["budgeted", "budgeted-canary"]
    stable = found["budgeted"]
    assert stable["spec"]["maxUnavailable"] == "34%"
    assert stable["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert stable["spec"]["selector"]["matchLabels"]["moedeploy.dev/track"] == STABLE
    assert stable["metadata"]["ownerReferences"][0]["uid"] == owner.uid

    ensure_disruption_budgets(writer, cache, owner, parse_spec(md["spec"]), [STABLE])
    assert sorted(budgets()) == ["budgeted"], "the canary's went with the canary"
