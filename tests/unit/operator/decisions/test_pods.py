from moe_operator.decisions.pods import count_pods, pod_problem, unschedulable


def pod(name, ready=False, track="stable", terminating=False, conditions=(), containers=()):
    meta = {"name": name, "labels": {"moedeploy.dev/track": track}}
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    conds = [{"type": "Ready", "status": "True" if ready else "False"}, *conditions]
    return {"metadata": meta, "status": {"conditions": conds, "containerStatuses": list(containers)}}


def waiting(reason, message="", restarts=0, last=None):
    status = {
        "name": "runtime",
        "state": {"waiting": {"reason": reason, "message": message}},
        "restartCount": restarts,
    }
    if last:
        status["lastState"] = {"terminated": last}
    return status


def test_counts_per_track_skip_terminating_pods():
    pods = [pod("a", ready=True), pod("b"), pod("c", ready=True, track="canary"), pod("d", terminating=True)]
    stable = count_pods(pods, "stable")
    assert stable.ready == {"a"} and stable.starting == 1
    assert count_pods(pods).ready == {"a", "c"}


def test_reasons_a_pod_cannot_start_name_the_pod():
    assert pod_problem([pod("a", ready=True)]) is None
    assert pod_problem([pod("a", containers=[waiting("ContainerCreating")])]) is None
    pull = pod_problem([pod("a", containers=[waiting("ImagePullBackOff", "not found")])])
    assert (pull.reason, pull.message) == ("ImagePullBackOff", "pod a: ImagePullBackOff: not found")
    crash = pod_problem(
        [
            pod(
                "b",
                containers=[waiting("CrashLoopBackOff", restarts=4, last={"exitCode": 1, "reason": "Error"})],
            )
        ]
    )
    assert crash.reason == "CrashLoopBackOff" and "last exit code 1, Error, 4 restarts" in crash.message
    unschedulable = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                     "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}  # fmt: skip
    found = pod_problem([pod("c", conditions=[unschedulable])])
    assert found.reason == "Unschedulable" and "Insufficient nvidia.com/gpu" in found.message


def test_a_terminating_pod_is_not_a_problem():
    assert pod_problem([pod("a", terminating=True, containers=[waiting("CrashLoopBackOff")])]) is None


def test_a_pod_ready_for_less_than_the_settle_time_still_counts_as_starting():
    fresh = pod("fresh", ready=True)
    fresh["status"]["conditions"][0]["lastTransitionTime"] = "2026-01-01T00:00:50Z"
    old = pod("old", ready=True)
    old["status"]["conditions"][0]["lastTransitionTime"] = "2026-01-01T00:00:00Z"
    now = 1767225660.0  # 2026-01-01T00:01:00Z
    counts = count_pods([fresh, old], "stable", settle_s=30, now=now)
    assert counts.ready == {"old"} and counts.starting == 1
    assert count_pods([fresh, old], "stable").ready == {"fresh", "old"}


def test_the_unschedulable_pod_of_one_track_and_revision():
    no_room = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "Insufficient gpu",
    }
    pending = pod("c", track="canary", conditions=[no_room])
    pending["metadata"]["labels"]["moedeploy.dev/revision"] = "new"
    gone = pod("d", track="canary", terminating=True, conditions=[no_room])
    gone["metadata"]["labels"]["moedeploy.dev/revision"] = "new"
    problem = unschedulable([pod("a", ready=True), pending, gone], "canary", "new")
    assert (problem.reason, problem.message) == (
        "Unschedulable",
        "pod c cannot be scheduled: Insufficient gpu",
    )
    assert unschedulable([pending], "stable", "new") is None
    assert unschedulable([pending], "canary", "old") is None
    assert unschedulable([gone], "canary", "new") is None
