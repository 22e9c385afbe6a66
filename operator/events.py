"""The Kubernetes Events a reconcile reports on its ModelDeployment. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from moe_operator.plan import DeploymentPlan, template_revision
from moe_operator.status import find_condition


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str


def events_for(
    plan: DeploymentPlan,
    desired: Mapping[str, Any],
    previous_status: Mapping[str, Any],
    status: Mapping[str, Any],
) -> list[Event]:
    events = []
    revision, replicas = template_revision(desired), desired["spec"]["replicas"]
    if plan.action == "create":
        events.append(
            Event(
                "Normal", "Created", f"created the Deployment at revision {revision} with {replicas} replicas"
            )
        )
    if plan.rollout:
        events.append(
            Event(
                "Normal", "RolloutStarted", f"rolling out revision {revision} (was {plan.previous_revision})"
            )
        )
    if plan.scale:
        events.append(
            Event("Normal", "Scaled", f"scaled from {plan.previous_replicas} to {replicas} replicas")
        )
    if plan.drift:
        events.append(
            Event("Normal", "DriftRepaired", "put back Deployment fields changed outside the operator")
        )
    events.extend(_flips(previous_status, status))
    return events


def _flips(previous: Mapping[str, Any], status: Mapping[str, Any]) -> list[Event]:
    flips = []
    ready, was_ready = find_condition(status, "Ready"), find_condition(previous, "Ready")
    if ready["status"] == "True" and was_ready.get("status") != "True":
        flips.append(Event("Normal", "Ready", ready["message"]))
    degraded, was_degraded = find_condition(status, "Degraded"), find_condition(previous, "Degraded")
    degraded_before = (was_degraded.get("status"), was_degraded.get("reason"))
    if degraded["status"] == "True" and degraded_before != ("True", degraded["reason"]):
        flips.append(Event("Warning", degraded["reason"], degraded["message"]))
    return flips
