"""A ModelDeployment's whole status, computed in one place from everything one reconcile pass decided and
observed. Pure.

One writer computes every field (conditions included) and replaces the status as a whole, with the
resourceVersion it read, so two parts of the operator can never flip each other's fields back and forth.

Conditions follow the Kubernetes conventions (and kstatus):
- `Ready`: the stable Deployment serves with all its desired pods Ready.
- `Progressing`: pods are being replaced, scaled or started, or a canary is being analysed.
- `Degraded`: something failed and needs attention: a refusal (policy, name conflict, the API server), pods that
  cannot start (image pulls, scheduling, crash loops), a rollout past its deadline, or a rejected revision
  that the spec still asks for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from moe_operator.decisions.naming import REVISION_LABEL


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
    desired: int = 0

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
            desired=deployment["spec"].get("replicas", 0),
        )

    def settled_at(self, revision: str) -> bool:
        """Runs `revision` on exactly its desired pods, all of them Ready."""
        return (
            self.observed_generation >= self.generation
            and self.revision == revision
            and self.updated_replicas == self.desired == self.replicas
            and self.ready_replicas >= self.desired
        )


@dataclass(frozen=True)
class Condition:
    """A condition of the status: whether it holds, why (CamelCase), and a message for people."""

    status: bool
    reason: str
    message: str


@dataclass(frozen=True)
class Problem:
    reason: str  # CamelCase, the Degraded condition's reason and the Warning Event's
    message: str


@dataclass(frozen=True)
class StatusInputs:
    generation: int
    selector: str
    target_revision: str  # what the spec describes
    stable_revision: str | None
    desired_replicas: int  # of the stable Deployment
    stable: DeploymentState | None
    canary: DeploymentState | None = None
    rollout: Mapping[str, Any] = field(default_factory=dict)  # RolloutState.to_status()
    canary_phase: str | None = None
    refusal: Problem | None = None  # nothing could be applied: policy, name conflict, API refusal
    pod_problem: Problem | None = None
    rejected_target: Problem | None = None  # the spec's revision was rejected and stays so
    extra: Mapping[str, Any] = field(default_factory=dict)  # autoscaling, adapters, url, model
    extra_conditions: Sequence[tuple[str, Condition]] = ()


@dataclass(frozen=True)
class Assessment:
    phase: str
    ready: Condition
    progressing: Condition
    degraded: Condition


NO_FAILURE = Condition(False, "AsExpected", "no failure observed")


def assess(i: StatusInputs) -> Assessment:
    stable, desired = i.stable, i.desired_replicas
    if stable is None:
        message = i.refusal.message if i.refusal else "creating the Deployment"
        reason = i.refusal.reason if i.refusal else "DeploymentMissing"
        return Assessment(
            phase="Degraded" if i.refusal else "Pending",
            ready=Condition(False, reason, message),
            progressing=Condition(i.refusal is None, i.refusal.reason if i.refusal else "Creating", message),
            degraded=Condition(True, i.refusal.reason, i.refusal.message) if i.refusal else NO_FAILURE,
        )
    revision = i.stable_revision or i.target_revision
    current = stable.observed_generation >= stable.generation and stable.revision == revision
    updated = stable.updated_replicas if current else 0
    counts = f"{stable.ready_replicas}/{desired} ready, {updated}/{desired} at revision {revision}"
    if not current or stable.replicas > updated:
        progress = Condition(True, "RolloutInProgress", f"rolling out revision {revision}: {counts}")
    elif updated != desired:
        progress = Condition(True, "Scaling", f"scaling to {desired}: {counts}")
    elif stable.ready_replicas < desired:
        progress = Condition(True, "WaitingForReady", f"waiting for pods to become ready: {counts}")
    elif i.canary_phase is not None:
        canary = f"canary of revision {i.target_revision}: {i.canary_phase}"
        progress = Condition(True, f"Canary{i.canary_phase}", f"{canary}; stable: {counts}")
    else:
        progress = Condition(False, "RolloutComplete", f"revision {revision} is running: {counts}")

    if i.refusal is not None:
        degraded = Condition(True, i.refusal.reason, i.refusal.message)
    elif i.pod_problem is not None:
        degraded = Condition(True, i.pod_problem.reason, i.pod_problem.message)
    elif current and stable.deadline_exceeded:
        degraded = Condition(
            True, "ProgressDeadlineExceeded", f"the rollout made no progress in time: {counts}"
        )
        progress = Condition(False, "ProgressDeadlineExceeded", degraded.message)
    elif stable.replica_failure is not None:
        degraded = Condition(True, "ReplicaFailure", stable.replica_failure)
    elif i.rejected_target is not None:
        degraded = Condition(True, i.rejected_target.reason, i.rejected_target.message)
    else:
        degraded = NO_FAILURE

    serving = current and updated == desired and stable.ready_replicas >= desired
    not_ready = Condition(False, "ReplicasNotReady" if current else progress.reason, counts)
    ready = Condition(True, "AllReplicasReady", counts) if serving else not_ready
    phase = (
        "Degraded"
        if degraded.status
        else "Progressing"
        if progress.status
        else "Ready"
        if serving
        else "Pending"
    )
    return Assessment(phase=phase, ready=ready, progressing=progress, degraded=degraded)


def compute_status(i: StatusInputs, previous: Mapping[str, Any], now: str) -> dict[str, Any]:
    verdicts = assess(i)
    earlier = previous.get("conditions") or ()
    stable, canary = i.stable, i.canary
    kinds = [
        ("Ready", verdicts.ready),
        ("Progressing", verdicts.progressing),
        ("Degraded", verdicts.degraded),
        *i.extra_conditions,
    ]
    return {
        "observedGeneration": i.generation,
        "replicas": (stable.replicas if stable else 0) + (canary.replicas if canary else 0),
        "readyReplicas": (stable.ready_replicas if stable else 0) + (canary.ready_replicas if canary else 0),
        "desiredReplicas": i.desired_replicas,
        "updatedReplicas": stable.updated_replicas if stable and stable.revision == i.target_revision else 0,
        "currentRevision": i.target_revision,
        "selector": i.selector,
        "phase": verdicts.phase,
        **i.rollout,
        **i.extra,
        "conditions": [condition(kind, verdict, earlier, i.generation, now) for kind, verdict in kinds],
    }


def condition(
    kind: str, verdict: Condition, earlier: Sequence[Mapping[str, Any]], generation: int, now: str
) -> dict[str, Any]:
    """A condition whose lastTransitionTime moves only when its status flips."""
    status = "True" if verdict.status else "False"
    before = next((c for c in earlier if c.get("type") == kind), None)
    unchanged = before is not None and before.get("status") == status and before.get("lastTransitionTime")
    return {
        "type": kind,
        "status": status,
        "reason": verdict.reason,
        "message": verdict.message[:1024],
        "lastTransitionTime": before["lastTransitionTime"] if unchanged else now,
        "observedGeneration": generation,
    }
