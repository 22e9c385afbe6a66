"""A rollout on a cluster with no spare GPU: a canary the scheduler has no room for waits for capacity and is never
rejected for it; a promotion whose new stable pods find no room gets the canary's."""

from tests.unit.operator.world import FAST_SLO, GOOD, NAME, NS, World

SLO = {**FAST_SLO, "bakeSeconds": 0}
STARTUP_TIMEOUT_S = 60
NO_ROOM = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."


def unschedulable_pod(world: World, track: str, revision: str, index: int = 0) -> None:
    labels = {
        "app.kubernetes.io/name": "moe-runtime",
        "moedeploy.dev/model-deployment": NAME,
        "moedeploy.dev/track": track,
        "moedeploy.dev/revision": revision,
    }
    condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": NO_ROOM}
    world.api.put(
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": f"{NAME}-{track}-pending-{index}", "namespace": NS, "labels": labels,
                      "creationTimestamp": "2020-01-01T00:00:00Z"},
         "status": {"phase": "Pending", "conditions": [condition]}}
    )  # fmt: skip


def remove_pod(world: World, track: str, index: int = 0) -> None:
    world.api.delete("Pod", NS, f"{NAME}-{track}-pending-{index}")


def new_revision(world: World) -> str:
    world.change_spec(
        slo=SLO,
        runtime__image="registry.local/moe-runtime:2",
        runtime__startupTimeoutSeconds=STARTUP_TIMEOUT_S,
    )
    world.reconcile()
    return world.status()["canary"]["revision"]


def stable_world() -> World:
    world = World(slo=SLO, runtime__startupTimeoutSeconds=STARTUP_TIMEOUT_S)
    world.reconcile()
    world.ready_pods(2, revision=world.status()["stableRevision"])
    world.settle()
    world.tick()
    return world


def test_a_canary_with_no_room_waits_for_capacity_past_its_startup_timeout_and_then_starts():
    world = stable_world()
    revision = new_revision(world)
    unschedulable_pod(world, "canary", revision)
    for _ in range(3 * STARTUP_TIMEOUT_S // 10):
        world.tick()
    canary = world.status()["canary"]
    assert canary["phase"] == "Starting" and canary["reason"] == "WaitingForCapacity", canary
    assert NO_ROOM in canary["message"] and not world.status()["rejectedRevisions"]
    assert world.condition("Degraded")["status"] == "False", "a canary waiting for room breaks nothing"
    assert world.condition("Ready")["status"] == "True", "the stable track serves meanwhile"
    warnings = [e for e in world.events.posted if e.reason == "WaitingForCapacity"]
    assert len(warnings) == 1, "said once, not at every pass"
    before = world.status()
    world.tick()
    assert world.status() == before, "a wait of hours writes its status once, not at every pass"
    world.restart()  # all a new operator knows is the status
    world.tick(STARTUP_TIMEOUT_S)
    assert world.status() == before and world.events.reasons.count("WaitingForCapacity") == 1

    # room appears: its startup timeout runs from then, not from the canary's start
    remove_pod(world, "canary")
    world.tick()
    assert world.status()["canary"].get("reason", "") == ""
    world.tick(STARTUP_TIMEOUT_S - 15)
    assert world.status()["canary"]["phase"] == "Starting", "not rejected before its own timeout"
    world.tick(30)
    rejected = world.status()["rejectedRevisions"]
    assert [r["reason"] for r in rejected] == ["ProgressDeadlineExceeded"], "placed and never Ready: rejected"


def test_a_promotion_with_no_room_for_the_new_stable_pods_hands_the_canary_s_capacity_over():
    world = stable_world()
    revision = new_revision(world)
    world.settle("canary")
    world.tick()
    world.analyse_until(GOOD)
    assert world.status()["canary"]["phase"] == "Promoting"
    assert world.deployment("canary") is not None, "the canary serves until the stable track has rolled"
    world.tick()
    assert world.deployment("canary") is not None, "nothing handed over while the stable pods find room"

    unschedulable_pod(world, "stable", revision)  # the stable Deployment's surge pod
    world.tick()
    assert world.deployment("canary") is None, "the canary's pods give up their GPUs"
    canary = world.status()["canary"]
    assert canary["phase"] == "Promoting" and canary["capacityHandedOver"] is True
    assert world.condition("Degraded")["status"] == "False"
    assert world.events.reasons.count("CapacityHandedOver") == 1
    world.restart()
    world.tick()
    assert world.deployment("canary") is None, "and it does not come back, nor after an operator restart"
    assert world.events.reasons.count("CapacityHandedOver") == 1, "the restarted operator knows it was done"

    remove_pod(world, "stable")  # scheduled on the canary's GPU
    world.settle()
    world.tick()
    status = world.status()
    assert "canary" not in status and status["stableRevision"] == revision
    assert "PromotionComplete" in world.events.reasons
