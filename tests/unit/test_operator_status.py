import pytest

from moe_operator.status import DeploymentState, compute_status

REV = "abc123def0"
T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def state(
    revision=REV, generation=2, observed=2, replicas=2, ready=2, updated=2, deadline=False, failure=None
):
    return DeploymentState(revision, generation, observed, replicas, ready, updated, deadline, failure)


def status_for(seen, desired=2, previous=None, now=T1, apply_error=None):
    return compute_status(
        generation=7,
        desired_replicas=desired,
        revision=REV,
        selector="app=x",
        deployment=seen,
        previous=previous or {},
        now=now,
        apply_error=apply_error,
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


def test_apply_refused_is_degraded():
    status = status_for(state(), apply_error="the API server refused: bad env")
    assert status["phase"] == "Degraded"
    assert verdicts(status)["Degraded"] == ("True", "ApplyFailed")
    assert "bad env" in status["conditions"][2]["message"]


def test_counts_selector_and_revision():
    status = status_for(state(replicas=3, updated=1, ready=2))
    assert status["observedGeneration"] == 7
    assert (status["replicas"], status["readyReplicas"], status["updatedReplicas"]) == (3, 2, 1)
    assert status["currentRevision"] == REV and status["selector"] == "app=x"
    assert status_for(state(revision="old"))["updatedReplicas"] == 0
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
        "spec": {"template": {"metadata": {"labels": {"moedeploy.dev/revision": REV}}}},
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
    assert DeploymentState.of(deployment) == DeploymentState(REV, 4, 4, 3, 1, 2, True, "forbidden: quota")
    fresh = {"metadata": {"generation": 1}, "spec": {"template": {"metadata": {}}}}
    assert DeploymentState.of(fresh) == DeploymentState(None, 1, 0, 0, 0, 0, False, None)
