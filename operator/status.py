"""A ModelDeployment's status, computed from what is observed of its Deployment. Pure.

Conditions follow the Kubernetes conventions (and kstatus): `Progressing` while pods are being replaced,
scaled or started, `Degraded` only on what the Deployment reports as a failure (progress deadline
exceeded, pods that cannot be created) or an apply the API server refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from moe_operator.naming import REVISION_LABEL


@dataclass(frozen=True)
class DeploymentState:
    revision: str | None
    generation: int
    observed_generation: int
    replicas: int
    ready_replicas: int
    updated_replicas: int
    deadline_exceeded: bool
    replica_failure: str | None

    @classmethod
    def of(cls, deployment: Mapping[str, Any]) -> DeploymentState:
        status = deployment.get("status") or {}
        conditions = {c["type"]: c for c in status.get("conditions") or ()}
        progressing = conditions.get("Progressing", {})
        failure = conditions.get("ReplicaFailure", {})
        labels = deployment["spec"]["template"]["metadata"].get("labels") or {}
        return cls(
            revision=labels.get(REVISION_LABEL),
            generation=deployment["metadata"].get("generation", 0),
            observed_generation=status.get("observedGeneration", 0),
            replicas=status.get("replicas", 0),
            ready_replicas=status.get("readyReplicas", 0),
            updated_replicas=status.get("updatedReplicas", 0),
            deadline_exceeded=progressing.get("reason") == "ProgressDeadlineExceeded",
            replica_failure=failure.get("message", "ReplicaFailure")
            if failure.get("status") == "True"
            else None,
        )


@dataclass(frozen=True)
class Verdict:
    status: bool
    reason: str
    message: str


@dataclass(frozen=True)
class Assessment:
    phase: str
    ready: Verdict
    progressing: Verdict
    degraded: Verdict


def assess(desired: int, revision: str, seen: DeploymentState | None, apply_error: str | None) -> Assessment:
    if apply_error is not None:
        return Assessment(
            phase="Degraded",
            ready=Verdict(False, "ApplyFailed", apply_error),
            progressing=Verdict(False, "ApplyFailed", apply_error),
            degraded=Verdict(True, "ApplyFailed", apply_error),
        )
    if seen is None:
        message = "creating the Deployment"
        return Assessment(
            phase="Pending",
            ready=Verdict(False, "DeploymentMissing", message),
            progressing=Verdict(True, "Creating", message),
            degraded=Verdict(False, "AsExpected", "no failure observed"),
        )
    current = seen.observed_generation >= seen.generation and seen.revision == revision
    updated = seen.updated_replicas if current else 0
    counts = f"{seen.ready_replicas}/{desired} ready, {updated}/{desired} at revision {revision}"
    if not current or seen.replicas > updated:
        progress = Verdict(True, "RolloutInProgress", f"rolling out revision {revision}: {counts}")
    elif updated != desired:
        progress = Verdict(True, "Scaling", f"scaling to {desired}: {counts}")
    elif seen.ready_replicas < desired:
        progress = Verdict(True, "WaitingForReady", f"waiting for pods to become ready: {counts}")
    else:
        progress = Verdict(False, "RolloutComplete", f"revision {revision} is running: {counts}")

    if current and seen.deadline_exceeded:
        degraded = Verdict(
            True, "ProgressDeadlineExceeded", f"the rollout made no progress in time: {counts}"
        )
        progress = Verdict(False, "ProgressDeadlineExceeded", degraded.message)
    elif seen.replica_failure is not None:
        degraded = Verdict(True, "ReplicaFailure", seen.replica_failure)
    else:
        degraded = Verdict(False, "AsExpected", "no failure observed")

    if not progress.status and not degraded.status:
        ready = Verdict(True, "AllReplicasReady", counts)
    else:
        ready = Verdict(False, "ReplicasNotReady" if current else progress.reason, counts)
    phase = "Degraded" if degraded.status else "Ready" if ready.status else "Progressing"
    return Assessment(phase=phase, ready=ready, progressing=progress, degraded=degraded)


def compute_status(
    *,
    generation: int,
    desired_replicas: int,
    revision: str,
    selector: str,
    deployment: DeploymentState | None,
    previous: Mapping[str, Any],
    now: str,
    apply_error: str | None = None,
) -> dict[str, Any]:
    verdicts = assess(desired_replicas, revision, deployment, apply_error)
    earlier = previous.get("conditions") or ()
    current = deployment is not None and deployment.revision == revision
    return {
        "observedGeneration": generation,
        "replicas": deployment.replicas if deployment else 0,
        "readyReplicas": deployment.ready_replicas if deployment else 0,
        "updatedReplicas": deployment.updated_replicas if current else 0,
        "currentRevision": revision,
        "selector": selector,
        "phase": verdicts.phase,
        "conditions": [
            condition(kind, verdict, earlier, generation, now)
            for kind, verdict in (
                ("Ready", verdicts.ready),
                ("Progressing", verdicts.progressing),
                ("Degraded", verdicts.degraded),
            )
        ],
    }


def condition(
    kind: str, verdict: Verdict, earlier: Sequence[Mapping[str, Any]], generation: int, now: str
) -> dict[str, Any]:
    """A condition whose lastTransitionTime moves only when its status flips."""
    status = "True" if verdict.status else "False"
    before = next((c for c in earlier if c.get("type") == kind), None)
    unchanged = before is not None and before.get("status") == status and before.get("lastTransitionTime")
    return {
        "type": kind,
        "status": status,
        "reason": verdict.reason,
        "message": verdict.message,
        "lastTransitionTime": before["lastTransitionTime"] if unchanged else now,
        "observedGeneration": generation,
    }


def find_condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    """The condition of that type, or an empty mapping."""
    return next((c for c in status.get("conditions") or () if c.get("type") == kind), {})
