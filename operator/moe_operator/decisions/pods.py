"""What a ModelDeployment's pods say: which are Ready, which are still starting, and why any cannot start.
Pure.

A pod that cannot pull its image, is refused its configuration, crash-loops or cannot be scheduled says so in
its own status within seconds; the Deployment only notices after its progress deadline (minutes). Reading the
pods surfaces the reason in the ModelDeployment's conditions at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from moe_operator.decisions.naming import REVISION_LABEL, TRACK_LABEL
from moe_operator.decisions.status import Problem
from moe_operator.timestamps import from_time

# Waiting reasons that mean the container will not start until something changes.
FAILING_WAITING_REASONS = (
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
)


def is_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def is_terminating(pod: Mapping[str, Any]) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


@dataclass(frozen=True)
class PodCounts:
    ready: frozenset[str]  # names of Ready pods
    starting: int  # pods that exist, are not terminating and are not Ready yet


def ready_since(pod: Mapping[str, Any]) -> float | None:
    conditions = (pod.get("status") or {}).get("conditions") or ()
    ready = next((c for c in conditions if c.get("type") == "Ready" and c.get("status") == "True"), None)
    return from_time(ready.get("lastTransitionTime")) if ready else None


def count_pods(
    pods: Iterable[Mapping[str, Any]], track: str | None = None, settle_s: float = 0, now: float = 0
) -> PodCounts:
    """A pod Ready for less than `settle_s` counts as starting: its metrics have not been scraped yet."""
    live = [
        p
        for p in pods
        if not is_terminating(p)
        and (track is None or (p["metadata"].get("labels") or {}).get(TRACK_LABEL) == track)
    ]
    ready = frozenset(
        p["metadata"]["name"]
        for p in live
        if is_ready(p) and (not settle_s or (ready_since(p) or 0) <= now - settle_s)
    )
    return PodCounts(ready=ready, starting=len(live) - len(ready))


def pod_problem(pods: Iterable[Mapping[str, Any]]) -> Problem | None:
    """The first reason a pod of the ModelDeployment cannot start, naming the pod; None when there is none."""
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        if is_terminating(pod):
            continue
        problem = _problem_of(pod)
        if problem is not None:
            return problem
    return None


def unschedulable(pods: Iterable[Mapping[str, Any]], track: str, revision: str) -> Problem | None:
    """Why the first pod of this track and revision that the cluster has no room for cannot be scheduled."""
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        labels = pod["metadata"].get("labels") or {}
        if (
            labels.get(TRACK_LABEL) == track
            and labels.get(REVISION_LABEL) == revision
            and not is_terminating(pod)
        ):
            problem = why_unschedulable(pod)
            if problem is not None:
                return problem
    return None


def why_unschedulable(pod: Mapping[str, Any]) -> Problem | None:
    for condition in (pod.get("status") or {}).get("conditions") or ():
        if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
            message = f"pod {pod['metadata']['name']} cannot be scheduled: {condition.get('message', '')}"
            return Problem("Unschedulable", message.strip())
    return None


def _problem_of(pod: Mapping[str, Any]) -> Problem | None:
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    unplaced = why_unschedulable(pod)
    if unplaced is not None:
        return unplaced
    for container in status.get("containerStatuses") or ():
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason not in FAILING_WAITING_REASONS:
            continue
        message = f"pod {name}: {reason}"
        if waiting.get("message"):
            message += f": {waiting['message']}"
        last = (container.get("lastState") or {}).get("terminated")
        if reason == "CrashLoopBackOff" and last:
            message += (
                f" (last exit code {last.get('exitCode')}"
                f"{', ' + last['reason'] if last.get('reason') else ''}"
                f", {container.get('restartCount', 0)} restarts)"
            )
        return Problem(reason, message)
    return None


def unhealthy(
    pods: Iterable[Mapping[str, Any]], revision: str, ready_at: float | None, grace_s: float, now: float
) -> Problem | None:
    """Why the pods of `revision` cannot be trusted with traffic, naming the pod; None when nothing is wrong:
    any restart (the liveness probe, a crash, OOMKilled), a container waiting in CrashLoopBackOff, or a pod that
    existed when all of them were Ready (`ready_at`) and has not been Ready for longer than `grace_s` (about a
    probe period). A pod that never was Ready is the startup deadline's business, not this."""
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        meta = pod["metadata"]
        if is_terminating(pod) or (meta.get("labels") or {}).get(REVISION_LABEL) != revision:
            continue
        name, status = meta["name"], pod.get("status") or {}
        for container in status.get("containerStatuses") or ():
            last = (container.get("lastState") or {}).get("terminated") or {}
            restarts = container.get("restartCount") or 0
            waiting = ((container.get("state") or {}).get("waiting") or {}).get("reason")
            if restarts or waiting == "CrashLoopBackOff":
                why = last.get("reason") or waiting or "restarted"
                exit_code = f", exit code {last['exitCode']}" if last.get("exitCode") is not None else ""
                return Problem(
                    "CanaryUnhealthy", f"pod {name} restarted {restarts} time(s) ({why}{exit_code})"
                )
        created = from_time(meta.get("creationTimestamp"))
        if ready_at is None or created is None or created > ready_at or is_ready(pod):
            continue
        ready = next((c for c in status.get("conditions") or () if c.get("type") == "Ready"), {})
        since = from_time(ready.get("lastTransitionTime")) or ready_at
        if now - max(since, ready_at) > grace_s:
            return Problem(
                "CanaryUnhealthy", f"pod {name} has not been Ready for {now - since:.0f}s after it was"
            )
    return None
