"""The autoscaler's floor while a canary is analysed: the stable Deployment keeps the replicas it had when the
canary began, from the very pass that starts the canary (found by tests/integration/test_canary_e2e.py)."""

from moe_operator.decisions.promdata import PodSamples
from tests.unit.operator.world import AUTOSCALING, FAST_SLO, GOOD, NAME, World

# scales in as soon as the queue says so: only the floor holds the replicas
EAGER = {**AUTOSCALING, "scaleDown": {"stabilizationWindowSeconds": 0, "maxPods": 4, "periodSeconds": 10}}
SLO = {**FAST_SLO, "bakeSeconds": 0}


def test_the_pass_that_starts_a_canary_already_holds_the_stable_replicas():
    world = World(replicas=2, slo=SLO, autoscaling=AUTOSCALING, minReplicas=1, maxReplicas=10)
    world.reconcile()
    pods = world.ready_pods(2)
    world.settle()
    world.queue_answer = PodSamples(dict.fromkeys(pods, 4.0))  # on target: keep 2
    world.tick()
    assert world.replicas() == 2
    world.queue_answer = PodSamples(dict.fromkeys(pods, 0.0))  # empty queues: 1 would do
    replicas_seen = []
    # a new revision, in a pass where the autoscaler's evaluation is due
    world.clock.now += 10
    world.change_spec(
        autoscaling=EAGER,
        minReplicas=1,
        maxReplicas=10,
        slo=SLO,
        runtime__image="registry.local/moe-runtime:2",
    )
    world.reconcile()
    assert world.deployment("canary") is not None
    replicas_seen.append(world.replicas())
    world.settle("canary")
    for _ in range(3):
        world.tick()
        replicas_seen.append(world.replicas())
    assert world.status()["canary"]["phase"] == "Analyzing"
    assert replicas_seen == [2, 2, 2, 2], "never below what the stable Deployment had when the canary began"
    assert "floor of 2" in world.status()["autoscaling"]["reason"]

    world.analyse_until(GOOD)
    world.settle()
    world.tick()
    world.tick()
    assert world.replicas() == 1, f"once the canary is promoted the autoscaler scales {NAME} in"
