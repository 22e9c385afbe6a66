"""The pod status a kubelet reports, from the container's life. Pure."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from localkubelet.lifecycle import Container, Exit, State

OWN_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")


def timestamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def pod_status(
    pod: Mapping[str, Any],
    container: Container,
    *,
    now: float,
    start_time: float,
    pod_ip: str,
    host_ip: str,
    container_id: str,
    others: Sequence[tuple[Container, str]] = (),
) -> dict[str, Any]:
    """status.phase, conditions, containerStatuses and IPs of a pod whose containers run locally: `container`
    is the first (the serving one, which decides the phase), `others` the rest in order, with their ids. The pod
    is Ready when every container is."""
    specs = pod["spec"]["containers"]
    lives = [(container, container_id), *others]
    statuses = [_container_status(spec, life, cid) for spec, (life, cid) in zip(specs, lives, strict=False)]
    ready = all(life.ready for life, _ in lives)
    phase = "Pending" if container.state is State.WAITING and container.last_exit is None else "Running"
    if container.state is State.TERMINATED:
        phase = "Succeeded" if container.last_exit and container.last_exit.exit_code == 0 else "Failed"
    unready = [status["name"] for status in statuses if not status["ready"]]
    wanted = {
        "PodReadyToStartContainers": True,
        "Initialized": True,
        "ContainersReady": ready,
        "Ready": ready,
    }
    return {
        "phase": phase,
        "conditions": conditions(pod.get("status", {}).get("conditions") or [], wanted, now, unready=unready),
        "containerStatuses": statuses,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": timestamp(start_time),
    }


def _container_status(spec: Mapping[str, Any], container: Container, container_id: str) -> dict[str, Any]:
    status: dict[str, Any] = {
        "name": spec["name"],
        "image": spec.get("image", ""),
        "imageID": "",
        "ready": container.ready,
        "started": container.running and container.started,
        "restartCount": container.restart_count,
        "state": _state(container, container_id),
        "lastState": {"terminated": _terminated(container.last_exit)} if _show_last(container) else {},
    }
    if container.running or container.last_exit is not None:
        status["containerID"] = container_id
    return status


def conditions(
    current: list[dict[str, Any]], wanted: Mapping[str, bool], now: float, unready: list[str] = ()
) -> list[dict[str, Any]]:
    """`current` with the conditions in `wanted` set; lastTransitionTime moves only when a status changes."""
    by_type = {c["type"]: c for c in current}
    merged = [c for c in current if c["type"] not in wanted]
    for kind, value in wanted.items():
        status = "True" if value else "False"
        previous = by_type.get(kind)
        if previous is not None and previous.get("status") == status:
            merged.append(previous)
            continue
        condition = {
            "type": kind,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": timestamp(now),
        }
        if not value and kind in ("Ready", "ContainersReady"):
            condition["reason"] = "ContainersNotReady"
            condition["message"] = f"containers with unready status: [{' '.join(unready)}]"
        merged.append(condition)
    return merged


def _show_last(container: Container) -> bool:
    # the last termination shows beside a newer state; a terminated container shows it as its state
    return container.last_exit is not None and container.state is not State.TERMINATED


def _state(container: Container, container_id: str) -> dict[str, Any]:
    if container.state is State.RUNNING:
        assert container.started_at is not None
        return {"running": {"startedAt": timestamp(container.started_at)}}
    if container.state is State.TERMINATED:
        return {"terminated": {**_terminated(container.last_exit), "containerID": container_id}}
    waiting = {"reason": container.waiting_reason}
    if container.waiting_message:
        waiting["message"] = container.waiting_message
    return {"waiting": waiting}


def _terminated(exit: Exit | None) -> dict[str, Any]:
    assert exit is not None
    return {
        "exitCode": exit.exit_code,
        "reason": exit.reason,
        "startedAt": timestamp(exit.started_at),
        "finishedAt": timestamp(exit.finished_at),
    }


def placeholder_status(pod: Mapping[str, Any], *, now: float, pod_ip: str, host_ip: str) -> dict[str, Any]:
    """Running and Ready without running anything: what KWOK reports, for pods that are not ModelDeployments'."""
    statuses = [
        {
            "name": c["name"],
            "image": c.get("image", ""),
            "imageID": "",
            "ready": True,
            "started": True,
            "restartCount": 0,
            "state": {"running": {"startedAt": timestamp(now)}},
        }
        for c in pod["spec"]["containers"]
    ]
    wanted = dict.fromkeys(OWN_CONDITIONS, True)
    return {
        "phase": "Running",
        "conditions": conditions(pod.get("status", {}).get("conditions") or [], wanted, now),
        "containerStatuses": statuses,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": timestamp(now),
    }
