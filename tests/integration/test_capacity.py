"""A rollout on a cluster with no spare GPU, against the real scheduler: a canary with no room waits for
capacity past its startup timeout and is not rejected; once it runs and is promoted, the stable Deployment's new
pods find no room until the canary hands its GPUs over (KWOK nodes of their own GPU type, so that nothing else
takes their GPUs)."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from localcluster import fake_node

from tests.integration.operator_support import small_md
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

GPU_TYPE = "NVIDIA-TIGHT-1"
STARTUP_TIMEOUT_S = 30  # the least the CRD allows


@pytest.fixture
def tight_nodes(cluster):
    """Adds KWOK nodes of GPU_TYPE with the GPUs asked, Ready; deletes them after the test."""
    names: list[str] = []

    def add(gpus: int) -> str:
        name = f"tight-{uuid.uuid4().hex[:6]}"
        node = fake_node(name, gpus)
        node["metadata"]["labels"]["nvidia.com/gpu.product"] = GPU_TYPE
        cluster.kubectl("apply", "-f", "-", input=json.dumps(node))
        names.append(name)

        def ready() -> bool:
            found = json.loads(cluster.kubectl("get", "node", name, "-o", "json").stdout)
            conditions = {c["type"]: c["status"] for c in found.get("status", {}).get("conditions", ())}
            return conditions.get("Ready") == "True" and not found["spec"].get("taints")

        wait_for(ready, timeout=60, what=f"node {name} Ready and untainted")
        return name

    yield add
    for name in names:
        cluster.kubectl("delete", "node", name, "--wait=false", check=False)


def tight_md(name: str) -> dict:
    runtime = {"image": "moe-runtime:1", "resources": {"gpu": 1, "gpuType": GPU_TYPE}}
    return small_md(name, replicas=2, runtime={**runtime, "startupTimeoutSeconds": STARTUP_TIMEOUT_S})


def test_a_rollout_with_no_spare_gpu_waits_for_room_then_hands_the_canary_s_gpus_over(
    models, operator, created, tight_nodes
):
    first_node = tight_nodes(2)
    name = created(tight_md("tight"))
    first = models.wait_ready(name, replicas=2)["status"]["stableRevision"]

    models.patch_spec(name, {"runtime": {"batching": {"maxQueue": 100}}})

    def waiting() -> dict | None:
        canary = (models.get(name) or {}).get("status", {}).get("canary") or {}
        return canary if canary.get("reason") == "WaitingForCapacity" else None

    canary = wait_for(waiting, timeout=60, what="the canary waiting for capacity")
    assert "cannot be scheduled" in canary["message"], canary
    past_timeout = time.time() + STARTUP_TIMEOUT_S + 10
    wait_for(lambda: time.time() > past_timeout and waiting(), timeout=STARTUP_TIMEOUT_S + 30,
             what="the canary still waiting past its startup timeout")  # fmt: skip
    status = models.get(name)["status"]
    assert not status.get("rejectedRevisions"), "a canary with no room is not rejected"
    assert models.condition(name, "Degraded")["status"] == "False", models.condition(name, "Degraded")
    assert models.condition(name, "Ready")["status"] == "True", "the stable track serves meanwhile"

    # room for the canary (one GPU), none for the stable Deployment's surge pod after promotion
    tight_nodes(1)
    md = models.wait_ready(name, replicas=2, timeout=120)
    second = md["status"]["stableRevision"]
    assert second != first and not md["status"].get("rejectedRevisions")
    reasons = [event["reason"] for event in models.events(name)]
    assert {"WaitingForCapacity", "Promoted", "CapacityHandedOver", "PromotionComplete"} <= set(reasons), (
        reasons
    )
    assert reasons.count("WaitingForCapacity") == 1, reasons
    pods = [p for p in models.pods(name) if not p["metadata"].get("deletionTimestamp")]
    assert {p["metadata"]["labels"]["moedeploy.dev/revision"] for p in pods} == {second}
    assert first_node in {p["spec"]["nodeName"] for p in pods}
