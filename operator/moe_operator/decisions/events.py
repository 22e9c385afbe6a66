"""The Kubernetes Events a reconcile pass reports, decided from plain data. Pure.

Events tell the story `kubectl describe md` shows: what the operator did (created, scaled, rolled out) and
every flip of the conditions a person would want to know about (Ready, Degraded with its reason).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str  # CamelCase
    message: str


def find_condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    """The condition of that type, or an empty mapping."""
    return next((c for c in status.get("conditions") or () if c.get("type") == kind), {})


def condition_flips(previous: Mapping[str, Any], status: Mapping[str, Any]) -> list[Event]:
    flips = []
    ready, was_ready = find_condition(status, "Ready"), find_condition(previous, "Ready")
    if ready.get("status") == "True" and was_ready.get("status") != "True":
        flips.append(Event("Normal", "Ready", ready["message"]))
    degraded, was_degraded = find_condition(status, "Degraded"), find_condition(previous, "Degraded")
    before = (was_degraded.get("status"), was_degraded.get("reason"), was_degraded.get("message"))
    if degraded.get("status") == "True" and before != ("True", degraded["reason"], degraded["message"]):
        flips.append(Event("Warning", degraded["reason"], degraded["message"]))
    if degraded.get("status") == "False" and was_degraded.get("status") == "True":
        flips.append(
            Event("Normal", "Recovered", f"no longer degraded ({was_degraded.get('reason')} is over)")
        )
    metrics, had_metrics = (
        find_condition(status, "MetricsAvailable"),
        find_condition(previous, "MetricsAvailable"),
    )
    # One Warning per stretch without data, whatever reasons it goes through: a Prometheus that comes back
    # reads NoSeries or StaleSeries until it has scraped again, which is the same outage, not news.
    if metrics.get("status") == "False" and had_metrics.get("status") != "False":
        flips.append(
            Event("Warning", metrics["reason"], f"cannot read the queue depth: {metrics['message']}")
        )
    if metrics.get("status") == "True" and had_metrics.get("status") == "False":
        flips.append(Event("Normal", "MetricsAvailable", "the queue depth can be read again"))
    return flips
