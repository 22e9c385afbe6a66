from moe_operator.events import Event, events_for
from moe_operator.plan import DeploymentPlan
from moe_operator.render import render
from moe_operator.spec import parse_spec
from tests.unit.operator_samples import OWNER, spec

DESIRED = render(OWNER, parse_spec(spec(replicas=3, maxReplicas=3))).deployment
REV = DESIRED["spec"]["template"]["metadata"]["labels"]["moedeploy.dev/revision"]


def status(ready="False", degraded="False", degraded_reason="AsExpected"):
    return {
        "conditions": [
            {"type": "Ready", "status": ready, "reason": "r", "message": "3/3 ready"},
            {"type": "Progressing", "status": "True", "reason": "r", "message": "m"},
            {"type": "Degraded", "status": degraded, "reason": degraded_reason, "message": "stuck"},
        ]
    }


def test_create():
    assert events_for(DeploymentPlan("create"), DESIRED, {}, status()) == [
        Event("Normal", "Created", f"created the Deployment at revision {REV} with 3 replicas")
    ]


def test_rollout_scale_and_drift_in_one_pass():
    plan = DeploymentPlan("update", True, True, True, previous_revision="old", previous_replicas=1)
    assert [e.reason for e in events_for(plan, DESIRED, status(), status())] == [
        "RolloutStarted",
        "Scaled",
        "DriftRepaired",
    ]
    messages = [e.message for e in events_for(plan, DESIRED, status(), status())]
    assert f"rolling out revision {REV} (was old)" in messages
    assert "scaled from 1 to 3 replicas" in messages


def test_nothing_to_say_when_nothing_changed():
    assert events_for(DeploymentPlan("keep"), DESIRED, status(), status()) == []
    assert events_for(DeploymentPlan("keep"), DESIRED, status(ready="True"), status(ready="True")) == []


def test_condition_flips():
    assert events_for(DeploymentPlan("keep"), DESIRED, status(), status(ready="True")) == [
        Event("Normal", "Ready", "3/3 ready")
    ]
    degraded = status(degraded="True", degraded_reason="ProgressDeadlineExceeded")
    assert events_for(DeploymentPlan("keep"), DESIRED, status(), degraded) == [
        Event("Warning", "ProgressDeadlineExceeded", "stuck")
    ]
    assert events_for(DeploymentPlan("keep"), DESIRED, degraded, degraded) == []
