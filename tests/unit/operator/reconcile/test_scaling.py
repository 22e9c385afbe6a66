"""The autoscaler wired into the reconcile pass: decisions land on the Deployment and in the status, missing
data holds, a restarted operator keeps its windows, a manual scale is answered with an Event."""

from moe_operator.decisions.promdata import NoData, PodSamples
from moe_operator.decisions.rollout import Verdict
from moe_operator.reconcile.reconciler import Reconciler
from moe_operator.reconcile.scaling import Scaler
from tests.unit.operator.fake_api import Events
from tests.unit.operator.reconcile.test_reconciler import NAME, NS, OPEN_POLICY, Clock, World

AUTOSCALING = {
    "enabled": True,
    "targetQueueDepth": 4,
    "intervalSeconds": 10,
    "scaleUp": {"stabilizationWindowSeconds": 0, "maxPods": 4, "periodSeconds": 10},
    "scaleDown": {"stabilizationWindowSeconds": 60, "maxPods": 1, "periodSeconds": 10},
}


class FakePrometheus:
    """Answers the queue query with what the test sets, and counts the queries."""

    def __init__(self):
        self.answer = PodSamples({})
        self.queries = 0

    def queue_depth(self, namespace, name, window_s, template=None, now=None):
        self.queries += 1
        return self.answer


class AutoscaledWorld(World):
    def __init__(self, **md_spec):
        self.prometheus = FakePrometheus()
        super().__init__(autoscaling=AUTOSCALING, minReplicas=1, maxReplicas=10, **md_spec)
        self.reconciler = self._reconciler()

    def _reconciler(self):
        return Reconciler(
            self.api, self.api.cache, self.events, policy=lambda: OPEN_POLICY, scaler=Scaler(self.prometheus),
            analyzer=self.analyser, clock=self.clock,
        )  # fmt: skip

    def restart(self):
        self.reconciler = self._reconciler()

    def ready_pods(self, count):
        for i in range(count):
            self.api.put(
                {"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": f"{NAME}-{i}", "namespace": NS,
                              "labels": {"app.kubernetes.io/name": "moe-runtime", "moedeploy.dev/model-deployment": NAME,
                                         "moedeploy.dev/track": "stable"}},
                 "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
            )  # fmt: skip
        return [f"{NAME}-{i}" for i in range(count)]

    def replicas(self):
        return self.deployment()["spec"]["replicas"]

    def tick(self, seconds=10):
        self.clock.now += seconds
        return self.reconcile()


def test_a_queue_over_target_scales_out_and_the_decision_is_remembered_in_status():
    world = AutoscaledWorld()
    world.reconcile()
    pods = world.ready_pods(2)
    world.settle()
    world.prometheus.answer = PodSamples(dict.fromkeys(pods, 10.0))  # 20 waiting, target 4 per pod
    result = world.tick()
    assert world.replicas() == 5 and result.requeue_after == 10
    autoscaling = world.status()["autoscaling"]
    assert autoscaling["desiredReplicas"] == 5 and autoscaling["currentMetric"] == 10.0
    assert autoscaling["memory"]["recommendations"] and autoscaling["lastScaleTime"]
    assert world.status()["desiredReplicas"] == 5
    assert any(e.reason == "Scaled" and "queue" in e.message for e in world.events.posted)
    queries = world.prometheus.queries
    world.clock.now += 3
    world.reconcile()
    assert world.prometheus.queries == queries, "no query between two evaluations"


def test_missing_data_holds_the_replicas_and_says_so_once():
    world = AutoscaledWorld(replicas=3)
    world.reconcile()
    world.ready_pods(3)
    world.settle()
    world.prometheus.answer = NoData("PrometheusUnavailable", "connection refused")
    for _ in range(3):
        world.tick()
        assert world.replicas() == 3
    condition = world.condition("MetricsAvailable")
    assert (condition["status"], condition["reason"]) == ("False", "PrometheusUnavailable")
    assert world.events.reasons.count("PrometheusUnavailable") == 1
    world.prometheus.answer = PodSamples({f"{NAME}-{i}": 4.0 for i in range(3)})
    world.tick()
    assert world.condition("MetricsAvailable")["status"] == "True"
    assert "MetricsAvailable" in world.events.reasons


def test_a_restarted_operator_keeps_the_scale_down_window():
    world = AutoscaledWorld()
    world.reconcile()
    pods = world.ready_pods(2)
    world.settle()
    world.prometheus.answer = PodSamples(dict.fromkeys(pods, 10.0))
    world.tick()
    assert world.replicas() == 5
    world.prometheus.answer = PodSamples({f"{NAME}-{i}": 0.0 for i in range(5)})
    world.ready_pods(5)
    world.settle()
    world.restart()  # a new operator: all it knows is the status
    world.tick()
    assert world.replicas() == 5, "the 60 s scale-down window still holds the recent recommendation of 5"
    for _ in range(6):
        world.tick()
    assert world.replicas() < 5, "once the window has passed it scales in, one pod per period"


def test_a_manual_scale_while_autoscaling_is_answered_with_an_event():
    world = AutoscaledWorld()
    world.reconcile()
    world.ready_pods(1)
    world.settle()
    world.tick()
    world.change_spec(autoscaling=AUTOSCALING, minReplicas=1, maxReplicas=10, replicas=7)
    world.tick()
    assert "ManualScaleIgnored" in world.events.reasons
    assert world.replicas() == world.status()["autoscaling"]["desiredReplicas"] != 7


def test_without_autoscaling_spec_replicas_rule_and_no_query_is_made():
    prometheus = FakePrometheus()
    world = World()
    world.reconciler = Reconciler(
        world.api,
        world.api.cache,
        Events(),
        policy=lambda: OPEN_POLICY,
        scaler=Scaler(prometheus),
        clock=Clock(),
    )
    world.reconcile()
    assert world.deployment()["spec"]["replicas"] == 2 and prometheus.queries == 0
    assert "autoscaling" not in world.status()


def test_the_stable_track_is_not_scaled_in_below_its_size_while_a_canary_runs_or_is_promoted():
    world = AutoscaledWorld(slo={"p99LatencySeconds": 1.0})
    world.reconcile()
    pods = world.ready_pods(2)
    world.settle()
    world.prometheus.answer = PodSamples(dict.fromkeys(pods, 10.0))
    world.tick()
    assert world.replicas() == 5
    world.ready_pods(5)
    world.settle()
    world.change_spec(autoscaling=AUTOSCALING, minReplicas=1, maxReplicas=10, slo={"p99LatencySeconds": 1.0},
                      runtime__image="registry.local/moe-runtime:2")  # fmt: skip
    world.tick()
    assert world.deployment("canary") is not None
    world.prometheus.answer = PodSamples({f"{NAME}-{i}": 0.0 for i in range(5)})  # the canary takes the load
    for verdict in ("Continue", "Promote"):
        world.settle("canary")
        world.reconciler._analyzer.verdict = Verdict(verdict, "R", "m")
        for _ in range(12):  # two minutes: far past the 60 s scale-down window
            world.tick()
            assert world.replicas() == 5, f"scaled in during the canary ({verdict})"


class RoutedPrometheus(FakePrometheus):
    """Also answers what the routers report."""

    def __init__(self):
        super().__init__()
        from moe_operator.decisions.autoscale import RouterDemand

        self.demand = RouterDemand(held=0, in_flight=0, idle_s=0.0)

    def router_demand(self, namespace, name, now=None):
        return self.demand


def test_scale_to_zero_goes_to_zero_when_idle_and_back_to_one_for_a_held_request():
    from moe_operator.decisions.autoscale import RouterDemand

    world = AutoscaledWorld(routing={"scaleToZero": {"idleSeconds": 60}})
    world.prometheus = RoutedPrometheus()
    world.api.put({**world.md(), "spec": {**world.md()["spec"], "minReplicas": 0}})
    world.restart()
    world.reconcile()
    pods = world.ready_pods(2)
    world.prometheus.answer = PodSamples(dict.fromkeys(pods, 0.0))
    world.prometheus.demand = RouterDemand(held=0, in_flight=0, idle_s=30.0)
    world.clock.now += 11
    world.reconcile()
    assert world.replicas() >= 1, "an empty queue alone never scales to zero, even with minReplicas 0"

    world.prometheus.demand = RouterDemand(held=0, in_flight=0, idle_s=61.0)
    world.clock.now += 11
    result = world.reconcile()
    assert world.replicas() == 0 and result.requeue_after <= 1.0, "at zero the routers are read every second"
    scaled = [e for e in world.events.posted if e.reason == "Scaled"]
    assert "scaling to zero" in scaled[-1].message

    world.prometheus.demand = RouterDemand(held=2, in_flight=2, idle_s=0.1)
    world.clock.now += 1
    world.reconcile()
    assert world.replicas() == 1
    assert "held at the router" in [e for e in world.events.posted if e.reason == "Scaled"][-1].message
