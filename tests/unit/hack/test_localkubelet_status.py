"""What the local kubelet reports: pod status, node status, the Prometheus targets file
(hack/localkubelet/podstatus.py, node.py, targets.py)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from localkubelet.lifecycle import Container
from localkubelet.node import node_status
from localkubelet.podstatus import conditions, pod_status, timestamp
from localkubelet.targets import Serving, file_sd, write_atomically

SCHEDULED = {
    "type": "PodScheduled",
    "status": "True",
    "lastProbeTime": None,
    "lastTransitionTime": "2026-01-01T00:00:00Z",
}


def pod(name: str = "md-1-abc", revision: str = "r1", namespace: str = "ns") -> dict:
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "labels": {"moedeploy.dev/model-deployment": "md-1", "moedeploy.dev/revision": revision},
        },
        "spec": {"nodeName": "gpu-node-0", "containers": [{"name": "runtime", "image": "moe-runtime:1"}]},
        "status": {"phase": "Pending", "conditions": [SCHEDULED]},
    }


def status_of(container: Container, now: float = 100) -> dict:
    return pod_status(
        pod(),
        container,
        now=now,
        start_time=50,
        pod_ip="10.245.0.3",
        host_ip="10.245.0.1",
        container_id="local://42",
    )


def condition(status: dict, kind: str) -> str:
    return next(c["status"] for c in status["conditions"] if c["type"] == kind)


def test_waiting_container_is_pending_and_not_ready_and_keeps_pod_scheduled():
    status = status_of(Container())
    assert status["phase"] == "Pending"
    assert condition(status, "Ready") == "False" and condition(status, "PodScheduled") == "True"
    assert status["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}


def test_crash_loop_shows_back_off_restart_count_and_last_exit_code():
    c = Container()
    c.started_process(10)
    c.exited(1, 11)
    c.started_process(11)
    c.exited(3, 12)
    status = status_of(c)
    container = status["containerStatuses"][0]
    assert status["phase"] == "Running"
    assert container["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert container["restartCount"] == 1
    assert container["lastState"]["terminated"]["exitCode"] == 3
    assert container["lastState"]["terminated"]["reason"] == "Error"


def test_running_and_ready():
    c = Container()
    c.started_process(60)
    status = status_of(c)
    assert status["phase"] == "Running" and condition(status, "Ready") == "True"
    container = status["containerStatuses"][0]
    assert container["ready"] and container["started"] and container["containerID"] == "local://42"
    assert container["state"] == {"running": {"startedAt": timestamp(60)}}


@given(st.lists(st.booleans(), min_size=1, max_size=6), st.lists(st.booleans(), min_size=1, max_size=6))
def test_transition_time_moves_only_when_the_status_changes(first, second):
    current: list = []
    for step, value in enumerate(first + second):
        previous = {c["type"]: c for c in current}
        current = conditions(current, {"Ready": value}, now=step)
        ready = next(c for c in current if c["type"] == "Ready")
        if "Ready" in previous and previous["Ready"]["status"] == ready["status"]:
            assert ready["lastTransitionTime"] == previous["Ready"]["lastTransitionTime"]
        else:
            assert ready["lastTransitionTime"] == timestamp(step)


SERVINGS = st.lists(
    st.builds(
        lambda i, ready, terminating: Serving(pod(f"p-{i}"), 40000 + i, ready, terminating),
        st.integers(0, 50),
        st.booleans(),
        st.booleans(),
    ),
    max_size=10,
    unique_by=lambda s: s.pod["metadata"]["name"],
)


@given(SERVINGS)
def test_targets_list_exactly_the_ready_pods_that_are_not_being_deleted(servings):
    targets = file_sd(servings)
    listed = {t["labels"]["pod"] for t in targets}
    assert listed == {s.pod["metadata"]["name"] for s in servings if s.ready and not s.terminating}
    for target in targets:
        assert len(target["targets"]) == 1 and target["targets"][0].startswith("127.0.0.1:")
        assert set(target["labels"]) == {"namespace", "model_deployment", "revision", "pod"}


def test_target_labels_come_from_the_pod():
    [target] = file_sd([Serving(pod("md-1-x", revision="abc123", namespace="team"), 41000, True, False)])
    assert target == {
        "targets": ["127.0.0.1:41000"],
        "labels": {"namespace": "team", "model_deployment": "md-1", "revision": "abc123", "pod": "md-1-x"},
    }


def test_targets_file_is_replaced_whole(tmp_path):
    path = tmp_path / "targets.json"
    write_atomically(path, [{"targets": ["127.0.0.1:1"], "labels": {}}])
    write_atomically(path, [])
    assert json.loads(path.read_text()) == []
    assert [p.name for p in tmp_path.iterdir()] == ["targets.json"], "no temporary file left behind"


def test_node_heartbeat_keeps_transition_times():
    node = {"metadata": {"name": "gpu-node-0"}, "status": {"conditions": []}}
    first = node_status(node, now=10, address="10.245.0.1", version="v1.37.2")
    ready = next(c for c in first["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["lastHeartbeatTime"] == timestamp(10)
    later = node_status({**node, "status": first}, now=20, address="10.245.0.1", version="v1.37.2")
    ready_later = next(c for c in later["conditions"] if c["type"] == "Ready")
    assert ready_later["lastHeartbeatTime"] == timestamp(20) and ready_later[
        "lastTransitionTime"
    ] == timestamp(10)
    assert later["nodeInfo"]["kubeletVersion"] == "v1.37.2"


def test_a_pod_with_a_sidecar_is_ready_only_when_both_are():
    from localkubelet.lifecycle import State
    from localkubelet.targets import sidecar_sd

    two = pod()
    two["spec"]["containers"].append({"name": "adapter-sync", "image": "moe-runtime:1"})
    engine, sidecar = Container(), Container()
    for c in (engine, sidecar):
        c.started_process(60)
    assert engine.state is State.RUNNING and engine.ready and sidecar.ready  # no probes: ready once started

    def status():
        return pod_status(two, engine, now=100, start_time=50, pod_ip="10.245.0.3", host_ip="10.245.0.1",
                          container_id="local://1", others=[(sidecar, "local://2")])  # fmt: skip

    assert condition(status(), "Ready") == "True"
    assert [s["name"] for s in status()["containerStatuses"]] == ["runtime", "adapter-sync"]
    sidecar.exited(1, 90)
    not_ready = next(c for c in status()["conditions"] if c["type"] == "Ready")
    assert not_ready["status"] == "False" and "adapter-sync" in not_ready["message"]
    assert status()["phase"] == "Running", "the serving container decides the phase"
    (entry,) = sidecar_sd([(two, "adapter-sync", 41001)])
    assert entry == {
        "targets": ["127.0.0.1:41001"],
        "labels": {"namespace": "ns", "model_deployment": "md-1", "revision": "r1", "pod": "md-1-abc",
                   "container": "adapter-sync"},
    }  # fmt: skip
