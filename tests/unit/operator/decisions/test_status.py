import pytest

from moe_operator.decisions.status import Condition, DeploymentState, Problem, StatusInputs, compute_status

REV = "abc123def0"
T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def state(
    revision=REV,
    generation=2,
    observed=2,
    replicas=2,
    ready=2,
    updated=2,
    deadline=False,
    failure=None,
    desired=2,
):
    return DeploymentState(
        revision, generation, observed, replicas, ready, updated, deadline, failure, desired
    )


def status_for(seen, desired=2, previous=None, now=T1, **inputs):
    return compute_status(
        StatusInputs(
            generation=7,
            selector="app=x",
            target_revision=inputs.pop("target", REV),
            stable_revision=inputs.pop("stable_revision", REV),
            desired_replicas=desired,
            stable=seen,
            **inputs,
        ),
        previous or {},
        now,
    )


def verdicts(status):
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


# (id, deployment state, desired replicas, phase, Ready, Progressing, Degraded)
TABLE = [
    (
        "no-deployment-yet",
        None,
        2,
        "Pending",
        ("False", "DeploymentMissing"),
        ("True", "Creating"),
        ("False", "AsExpected"),
    ),
    (
        "controller-has-not-seen-the-spec",
        state(observed=1),
        2,
        "Progressing",
        ("False", "RolloutInProgress"),
        ("True", "RolloutInProgress"),
        ("False", "AsExpected"),
    ),
    (
        "template-at-an-older-revision",
        state(revision="old"),
        2,
        "Progressing",
        ("False", "RolloutInProgress"),
        ("True", "RolloutInProgress"),
        ("False", "AsExpected"),
    ),
    (
        "old-pods-still-running",
        state(replicas=3, updated=1, ready=3),
        2,
        "Progressing",
        ("False", "ReplicasNotReady"),
        ("True", "RolloutInProgress"),
        ("False", "AsExpected"),
    ),
    (
        "scaling-up",
        state(replicas=2, updated=2, ready=2),
        3,
        "Progressing",
        ("False", "ReplicasNotReady"),
        ("True", "Scaling"),
        ("False", "AsExpected"),
    ),
    (
        "pods-loading-weights",
        state(ready=0),
        2,
        "Progressing",
        ("False", "ReplicasNotReady"),
        ("True", "WaitingForReady"),
        ("False", "AsExpected"),
    ),
    (
        "all-ready",
        state(),
        2,
        "Ready",
        ("True", "AllReplicasReady"),
        ("False", "RolloutComplete"),
        ("False", "AsExpected"),
    ),
    (
        "scaled-to-zero",
        state(replicas=0, ready=0, updated=0),
        0,
        "Ready",
        ("True", "AllReplicasReady"),
        ("False", "RolloutComplete"),
        ("False", "AsExpected"),
    ),
    (
        "progress-deadline-exceeded",
        state(ready=0, deadline=True),
        2,
        "Degraded",
        ("False", "ReplicasNotReady"),
        ("False", "ProgressDeadlineExceeded"),
        ("True", "ProgressDeadlineExceeded"),
    ),
    (
        "stale-deadline-of-the-previous-generation",
        state(observed=1, deadline=True),
        2,
        "Progressing",
        ("False", "RolloutInProgress"),
        ("True", "RolloutInProgress"),
        ("False", "AsExpected"),
    ),
    (
        "pods-cannot-be-created",
        state(replicas=0, ready=0, updated=0, failure="exceeded quota"),
        2,
        "Degraded",
        ("False", "ReplicasNotReady"),
        ("True", "Scaling"),
        ("True", "ReplicaFailure"),
    ),
]


@pytest.mark.parametrize(
    ("seen", "desired", "phase", "ready", "progressing", "degraded"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_phase_and_conditions(seen, desired, phase, ready, progressing, degraded):
    status = status_for(seen, desired)
    assert status["phase"] == phase
    assert verdicts(status) == {"Ready": ready, "Progressing": progressing, "Degraded": degraded}
    for c in status["conditions"]:
        assert c["observedGeneration"] == 7 and c["lastTransitionTime"] == T1 and c["message"]


def test_a_refusal_is_degraded_while_the_pods_keep_serving():
    status = status_for(state(), refusal=Problem("ApplyFailed", "the API server refused: bad env"))
    assert status["phase"] == "Degraded"
    assert verdicts(status)["Degraded"] == ("True", "ApplyFailed")
    assert verdicts(status)["Ready"] == ("True", "AllReplicasReady")
    assert "bad env" in status["conditions"][2]["message"]


def test_a_refusal_before_anything_exists():
    status = status_for(None, refusal=Problem("PolicyViolation", "hostPath is not allowed"))
    assert status["phase"] == "Degraded"
    assert verdicts(status) == {
        "Ready": ("False", "PolicyViolation"),
        "Progressing": ("False", "PolicyViolation"),
        "Degraded": ("True", "PolicyViolation"),
    }


def test_a_canary_under_analysis_beside_serving_stable_pods():
    canary = state(revision="new4567890", replicas=1, ready=1, updated=1, desired=1)
    status = status_for(state(), target="new4567890", canary=canary, canary_phase="Analyzing")
    assert status["phase"] == "Progressing"
    assert verdicts(status)["Ready"] == ("True", "AllReplicasReady")
    assert verdicts(status)["Progressing"] == ("True", "CanaryAnalyzing")
    assert (status["replicas"], status["readyReplicas"], status["desiredReplicas"]) == (3, 3, 2)
    assert status["currentRevision"] == "new4567890"


def test_a_rejected_revision_the_spec_still_asks_for_stays_degraded_while_stable_serves():
    rejected = Problem("SLOBreached", "p99 3.2s over 1s")
    status = status_for(state(), target="bad4567890", rejected_target=rejected)
    assert status["phase"] == "Degraded"
    assert verdicts(status)["Degraded"] == ("True", "SLOBreached")
    assert verdicts(status)["Ready"] == ("True", "AllReplicasReady")


def test_pod_failures_surface_before_the_deployment_notices():
    problem = Problem("ImagePullBackOff", "pod p-1: ImagePullBackOff: not found")
    status = status_for(state(ready=0), pod_problem=problem)
    assert verdicts(status)["Degraded"] == ("True", "ImagePullBackOff")
    assert verdicts(status)["Progressing"] == ("True", "WaitingForReady")


def test_extra_fields_and_conditions():
    extra = {"autoscaling": {"desiredReplicas": 3}, "url": "http://x", "model": "m"}
    conditions = (("MetricsAvailable", Condition(False, "PrometheusUnavailable", "connection refused")),)
    status = status_for(state(), extra=extra, extra_conditions=conditions)
    assert status["autoscaling"] == {"desiredReplicas": 3} and status["url"] == "http://x"
    assert verdicts(status)["MetricsAvailable"] == ("False", "PrometheusUnavailable")


def test_counts_selector_and_revision():
    status = status_for(state(replicas=3, updated=1, ready=2))
    assert status["observedGeneration"] == 7
    assert (status["replicas"], status["readyReplicas"], status["updatedReplicas"]) == (3, 2, 1)
    assert status["currentRevision"] == REV and status["selector"] == "app=x"
    assert status_for(state(revision="old"), stable_revision="old")["updatedReplicas"] == 0
    assert status_for(None)["replicas"] == 0


def test_transition_time_moves_only_on_flips():
    first = status_for(state(ready=0), now=T0)
    still_waiting = status_for(state(ready=1), previous=first, now=T1)
    assert [c["lastTransitionTime"] for c in still_waiting["conditions"]] == [T0, T0, T0]
    ready = status_for(state(), previous=still_waiting, now=T1)
    times = {c["type"]: c["lastTransitionTime"] for c in ready["conditions"]}
    assert times == {"Ready": T1, "Progressing": T1, "Degraded": T0}


def test_deployment_state_reads_a_deployment():
    deployment = {
        "metadata": {"generation": 4},
        "spec": {"replicas": 3, "template": {"metadata": {"labels": {"moedeploy.dev/revision": REV}}}},
        "status": {
            "observedGeneration": 4,
            "replicas": 3,
            "readyReplicas": 1,
            "updatedReplicas": 2,
            "conditions": [
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"},
                {"type": "ReplicaFailure", "status": "True", "message": "forbidden: quota"},
            ],
        },
    }
    assert DeploymentState.of(deployment) == DeploymentState(REV, 4, 4, 3, 1, 2, True, "forbidden: quota", 3)
    fresh = {"metadata": {"generation": 1}, "spec": {"template": {"metadata": {}}}}
    assert DeploymentState.of(fresh) == DeploymentState(None, 1, 0, 0, 0, 0, False, None)
