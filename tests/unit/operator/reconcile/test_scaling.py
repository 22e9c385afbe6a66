"""The autoscaler wired into the reconcile pass: each queue read the measurement loop takes is evaluated once,
decisions land on the Deployment and in the status, missing data holds, a restarted operator keeps its
windows, a manual scale is answered with an Event."""

from moe_operator.decisions.promdata import NoData, PodSamples
from tests.unit.operator.world import AUTOSCALING, GOOD, NAME, World


class AutoscaledWorld(World):
    def __init__(self, **md_spec):
        super().__init__(autoscaling=AUTOSCALING, minReplicas=1, maxReplicas=10, **md_spec)
        self.queue_answer = PodSamples({})


def test_a_queue_over_target_scales_out_and_the_decision_is_remembered_in_status():
    world = AutoscaledWorld()
    world.reconcile()
    pods = world.ready_pods(2)
    world.settle()
    world.queue_answer = PodSamples(dict.fromkeys(pods, 10.0))  # 20 waiting, target 4 per pod
    world.tick()
    assert world.replicas() == 5
    autoscaling = world.status()["autoscaling"]
    assert autoscaling["desiredReplicas"] == 5 and autoscaling["currentMetric"] == 10.0
    assert autoscaling["memory"]["recommendations"] and autoscaling["lastScaleTime"]
    assert world.status()["desiredReplicas"] == 5
    assert any(e.reason == "Scaled" and "queue" in e.message for e in world.events.posted)
    evaluated = world.status()["autoscaling"]["lastEvaluationTime"]
    world.clock.now += 3
    world.queue_answer = PodSamples(dict.fromkeys(pods, 0.0))
    world.reconcile()  # no new read since the last evaluation: the decision stands
    assert world.status()["autoscaling"]["lastEvaluationTime"] == evaluated and world.replicas() == 5


def test_missing_data_holds_the_replicas_and_says_so_once():
    world = AutoscaledWorld(replicas=3)
    world.reconcile()
    world.ready_pods(3)
    world.settle()
    world.queue_answer = NoData("PrometheusUnavailable", "connection refused")
    for _ in range(3):
        world.tick()
        assert world.replicas() == 3
    condition = world.condition("MetricsAvailable")
    assert (condition["status"], condition["reason"]) == ("False", "PrometheusUnavailable")
    assert world.events.reasons.count("PrometheusUnavailable") == 1
    world.queue_answer = PodSamples({f"{NAME}-{i}": 4.0 for i in range(3)})
    world.tick()
    assert world.condition("MetricsAvailable")["status"] == "True"
    assert "MetricsAvailable" in world.events.reasons


def test_a_restarted_operator_keeps_the_scale_down_window():
    world = AutoscaledWorld()
    world.reconcile()
    pods = world.ready_pods(2)
    world.settle()
    world.queue_answer = PodSamples(dict.fromkeys(pods, 10.0))
    world.tick()
    assert world.replicas() == 5
    world.queue_answer = PodSamples({f"{NAME}-{i}": 0.0 for i in range(5)})
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


def test_without_autoscaling_spec_replicas_rule_whatever_the_queue_says():
    world = World()
    world.read_queue(PodSamples({f"{NAME}-0": 50.0}))
    world.reconcile()
    assert world.deployment()["spec"]["replicas"] == 2
    assert "autoscaling" not in world.status()


def test_a_pass_before_the_first_read_holds_what_runs():
    world = AutoscaledWorld(replicas=3)
    world.reconcile()
    assert world.replicas() == 3 and "desiredReplicas" not in world.status()["autoscaling"]


def test_the_stable_track_is_not_scaled_in_below_its_size_while_a_canary_runs_or_is_promoted():
    world = AutoscaledWorld(slo={"p99LatencySeconds": 1.0})
    world.reconcile()
    pods = world.ready_pods(2)
    world.settle()
    world.queue_answer = PodSamples(dict.fromkeys(pods, 10.0))
    world.tick()
    assert world.replicas() == 5
    world.ready_pods(5)
    world.settle()
    world.change_spec(autoscaling=AUTOSCALING, minReplicas=1, maxReplicas=10, slo={"p99LatencySeconds": 1.0},
                      runtime__image="registry.local/moe-runtime:2")  # fmt: skip
    world.tick()
    assert world.deployment("canary") is not None
    world.queue_answer = PodSamples({f"{NAME}-{i}": 0.0 for i in range(5)})  # the canary takes the load
    world.settle("canary")
    for _ in range(12):  # two minutes: far past the 60 s scale-down window
        world.tick()
        assert world.replicas() == 5, "scaled in during the canary"
    world.analyse_until(GOOD)
    assert world.status()["canary"]["phase"] == "Promoting"
    for _ in range(12):
        world.tick()
        assert world.replicas() == 5, "scaled in while the canary is promoted"


def test_no_series_before_any_pod_could_be_scraped_is_no_warning_but_later_it_is():
    """Hardening 19: the first pass of a new ModelDeployment warned "does Prometheus scrape its pods?" before
    any pod could have been scraped."""
    world = AutoscaledWorld()
    world.queue_answer = NoData("NoSeries", "no queue depth series")
    world.tick()
    world.tick()
    assert "NoSeries" not in world.events.reasons
    assert all(c["type"] != "MetricsAvailable" for c in world.status()["conditions"])
    world.ready_pods(2)
    world.settle()
    world.tick(60)  # Ready longer than the metric window: now it should have been scraped
    assert world.events.reasons.count("NoSeries") == 1
    assert world.condition("MetricsAvailable")["reason"] == "NoSeries"
