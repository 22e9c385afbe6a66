"""How many pods the stable Deployment runs: spec.replicas, or the queue-depth autoscaler's decision. Pure.

With autoscaling on, the queue depth is read every `intervalSeconds`, off the reconcile pass (measure/); the
first pass after a read evaluates it, the others keep the last decision. Everything the autoscaler must remember (its recommendations and
scale events, for the stabilization windows and step limits) lives in status.autoscaling, so a restarted
operator keeps its windows. spec.replicas is then only the starting count: a `kubectl scale` meanwhile is
reported in an Event and otherwise left to the autoscaler.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from moe_operator.decisions.autoscale import AutoscalePolicy, AutoscaleState, Observation, ScaleRule, decide
from moe_operator.decisions.events import Event
from moe_operator.decisions.pods import PodCounts
from moe_operator.decisions.promdata import NO_SERIES, PROMETHEUS_UNAVAILABLE, NoData, PodSamples
from moe_operator.decisions.spec import ModelDeploymentSpec
from moe_operator.decisions.status import Condition
from moe_operator.timestamps import from_time, to_time

METRICS_AVAILABLE = "MetricsAvailable"


@dataclass(frozen=True)
class Scaling:
    """How many pods the stable Deployment runs, and what the autoscaler has to say about it."""

    replicas: int
    reason: str | None = None  # why the count changed, for the Scaled event
    status: Mapping[str, Any] = field(default_factory=dict)  # merged into the ModelDeployment's status
    conditions: tuple[tuple[str, Condition], ...] = ()
    events: tuple[Event, ...] = ()
    next_due: float | None = None  # epoch seconds of the next evaluation (without measurements off the pass)
    direction: str | None = None  # up, down or none, when this pass evaluated a read
    current: int | None = None  # the stable Deployment's replicas when it did


def policy_of(spec: ModelDeploymentSpec) -> AutoscalePolicy:
    auto = spec.autoscaling
    return AutoscalePolicy(
        min_replicas=spec.min_replicas,
        max_replicas=spec.max_replicas,
        target_queue_depth=auto.target_queue_depth,
        tolerance=auto.tolerance,
        up=ScaleRule(
            auto.scale_up.stabilization_window_seconds, auto.scale_up.max_pods, auto.scale_up.period_seconds
        ),
        down=ScaleRule(
            auto.scale_down.stabilization_window_seconds,
            auto.scale_down.max_pods,
            auto.scale_down.period_seconds,
        ),
    )


@dataclass(frozen=True)
class QueueRead:
    """The newest read of the queue depth per pod, and when it was taken."""

    at: float
    samples: PodSamples | NoData


def scale(
    spec: ModelDeploymentSpec,
    status_before: Mapping[str, Any],
    stable_pods: PodCounts,
    current: int | None,
    floor: int,
    now: float,
    read: QueueRead | None,
    measuring: bool,
) -> Scaling:
    """`status_before`: the status the last pass left; `read`: the newest queue read (None before the first);
    `measuring`: whether the operator has a Prometheus to read."""
    if not spec.autoscaling.enabled:
        return Scaling(replicas=spec.replicas)
    before = status_before.get("autoscaling") or {}
    current = current if current is not None else spec.replicas
    events = _manual_scale(spec, before, current)
    last = from_time(before.get("lastEvaluationTime"))
    interval = spec.autoscaling.interval_seconds
    fresh = read is not None and (last is None or read.at > last)
    if measuring and not fresh:
        if "desiredReplicas" not in before:  # nothing read yet: hold what runs
            return Scaling(
                current, None, {"autoscaling": {"observedSpecReplicas": spec.replicas}}, (), tuple(events)
            )
        # between two reads: the last decision stands (raised to a floor that appeared meanwhile)
        replicas = max(int(before["desiredReplicas"]), floor) if floor else int(before["desiredReplicas"])
        status = {**before, "observedSpecReplicas": spec.replicas}
        return Scaling(
            replicas, None, {"autoscaling": status}, _carried_condition(status_before), tuple(events)
        )
    if not measuring and last is not None and now < last + interval and "desiredReplicas" in before:
        status = {**before, "observedSpecReplicas": spec.replicas}
        return Scaling(
            int(before["desiredReplicas"]),
            None,
            {"autoscaling": status},
            _carried_condition(status_before),
            tuple(events),
        )
    samples = (
        read.samples
        if read is not None
        else NoData(PROMETHEUS_UNAVAILABLE, "the operator runs without --prometheus-url")
    )
    decision = decide(
        Observation(current, stable_pods.ready, stable_pods.starting, samples),
        policy_of(spec),
        AutoscaleState.from_status(before.get("memory")),
        now,
        floor,
    )
    changed = decision.replicas != current
    status = {
        "desiredReplicas": decision.replicas,
        "currentMetric": decision.metric,
        "targetQueueDepth": spec.autoscaling.target_queue_depth,
        "recommendation": decision.recommendation,
        "reason": decision.reason,
        "lastEvaluationTime": to_time(now),
        "lastScaleTime": to_time(now) if changed else before.get("lastScaleTime"),
        "observedSpecReplicas": spec.replicas,
        "memory": decision.state.to_status(),
    }
    # no series yet while no pod has served long enough to be scraped is the normal start, not an outage
    first_scrape = isinstance(samples, NoData) and samples.reason == NO_SERIES and not stable_pods.ready
    return Scaling(
        replicas=decision.replicas,
        reason=decision.reason if changed else None,
        status={"autoscaling": {k: v for k, v in status.items() if v is not None}},
        conditions=_carried_condition(status_before)
        if first_scrape
        else (_metrics_condition(decision.no_data),),
        events=tuple(events),
        next_due=None if measuring else now + interval,
        direction=decision.direction,
        current=current,
    )


def _manual_scale(spec: ModelDeploymentSpec, before: Mapping[str, Any], current: int) -> list[Event]:
    seen = before.get("observedSpecReplicas")
    if seen is None or seen == spec.replicas:
        return []
    message = (
        f"spec.replicas changed from {seen} to {spec.replicas} while autoscaling is on: the autoscaler "
        f"decides the replicas between {spec.min_replicas} and {spec.max_replicas} (now {current}); turn "
        f"spec.autoscaling.enabled off to scale by hand"
    )
    return [Event("Normal", "ManualScaleIgnored", message)]


def _metrics_condition(no_data: NoData | None) -> tuple[str, Condition]:
    if no_data is None:
        return METRICS_AVAILABLE, Condition(
            True, "QueueDepthRead", "the queue depth of every Ready pod was read"
        )
    held = f"{no_data.message}; holding the replicas (never scaling in on missing data)"
    return METRICS_AVAILABLE, Condition(False, no_data.reason, held)


def _carried_condition(status: Mapping[str, Any]) -> tuple[tuple[str, Condition], ...]:
    """The MetricsAvailable condition the last evaluation set."""
    for condition in status.get("conditions") or ():
        if isinstance(condition, Mapping) and condition.get("type") == METRICS_AVAILABLE:
            verdict = Condition(
                condition.get("status") == "True", condition.get("reason", ""), condition.get("message", "")
            )
            return ((METRICS_AVAILABLE, verdict),)
    return ()
