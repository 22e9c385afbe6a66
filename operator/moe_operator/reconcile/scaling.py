"""How many pods the stable Deployment runs: spec.replicas, or the queue-depth autoscaler's decision.

With autoscaling on, each ModelDeployment is evaluated every `intervalSeconds` (one Prometheus query); in
between, passes keep the last decision. Everything the autoscaler must remember (its recommendations and
scale events, for the stabilization windows and step limits) lives in status.autoscaling, so a restarted
operator keeps its windows. spec.replicas is then only the starting count: a `kubectl scale` meanwhile is
reported in an Event and otherwise left to the autoscaler.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from moe_operator.decisions.autoscale import (
    AutoscalePolicy,
    AutoscaleState,
    Observation,
    ScaleRule,
    decide,
    scale_to_zero,
)
from moe_operator.decisions.events import Event
from moe_operator.decisions.pods import PodCounts
from moe_operator.decisions.promdata import PROMETHEUS_UNAVAILABLE, NoData
from moe_operator.decisions.spec import ModelDeploymentSpec
from moe_operator.decisions.status import Condition
from moe_operator.io.metrics import OperatorMetrics
from moe_operator.timestamps import from_time, to_time

METRICS_AVAILABLE = "MetricsAvailable"
# spec.routing.scaleToZero: how often the routers are read while at zero (a held request waits for it), and
# while running (for the idle time).
ZERO_POLL_S = 1.0
IDLE_CHECK_S = 5.0


@dataclass(frozen=True)
class Scaling:
    """How many pods the stable Deployment runs, and what the autoscaler has to say about it."""

    replicas: int
    reason: str | None = None  # why the count changed, for the Scaled event
    status: Mapping[str, Any] = field(default_factory=dict)  # merged into the ModelDeployment's status
    conditions: tuple[tuple[str, Condition], ...] = ()
    events: tuple[Event, ...] = ()
    next_due: float | None = None  # epoch seconds of the next evaluation


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


class Scaler:
    def __init__(self, prometheus=None, metrics: OperatorMetrics | None = None) -> None:
        self._prometheus = prometheus
        self._metrics = metrics or OperatorMetrics()

    def scale(
        self,
        md: Mapping[str, Any],
        spec: ModelDeploymentSpec,
        stable_pods: PodCounts,
        current: int | None,
        floor: int,
        now: float,
    ) -> Scaling:
        meta = md["metadata"]
        zero = spec.routing.scale_to_zero if spec.routing is not None else None
        if zero is not None:
            overridden = self._scale_to_zero(md, spec, current, zero.idle_seconds, now)
            if overridden is not None:
                return overridden
            floor = max(floor, 1)  # only the scale-to-zero decision goes to zero
        if not spec.autoscaling.enabled:
            return Scaling(replicas=spec.replicas, next_due=now + IDLE_CHECK_S if zero else None)
        before = (md.get("status") or {}).get("autoscaling") or {}
        current = current if current is not None else spec.replicas
        events = self._manual_scale(spec, before, current)
        last = from_time(before.get("lastEvaluationTime"))
        interval = spec.autoscaling.interval_seconds
        if last is not None and now < last + interval and "desiredReplicas" in before:
            # between two evaluations: the last decision stands (raised to a floor that appeared meanwhile)
            replicas = max(int(before["desiredReplicas"]), floor) if floor else int(before["desiredReplicas"])
            status = {**before, "observedSpecReplicas": spec.replicas}
            return Scaling(
                replicas,
                None,
                {"autoscaling": status},
                _carried_condition(md),
                tuple(events),
                last + interval,
            )
        samples = (
            self._prometheus.queue_depth(
                meta["namespace"],
                meta["name"],
                spec.autoscaling.metric_window_seconds,
                spec.autoscaling.query,
                now,
            )
            if self._prometheus is not None
            else NoData(PROMETHEUS_UNAVAILABLE, "the operator runs without --prometheus-url")
        )
        decision = decide(
            Observation(current, stable_pods.ready, stable_pods.starting, samples, self._held(md, spec, now)),
            policy_of(spec),
            AutoscaleState.from_status(before.get("memory")),
            now,
            floor,
        )
        self._metrics.autoscaler_decisions.labels(decision.direction).inc()
        self._metrics.desired_replicas.labels(meta["namespace"], meta["name"]).set(decision.replicas)
        self._metrics.current_replicas.labels(meta["namespace"], meta["name"]).set(current)
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
        return Scaling(
            replicas=decision.replicas,
            reason=decision.reason if changed else None,
            status={"autoscaling": {k: v for k, v in status.items() if v is not None}},
            conditions=(_metrics_condition(decision.no_data),),
            events=tuple(events),
            next_due=now + interval,
        )

    def _held(self, md: Mapping[str, Any], spec: ModelDeploymentSpec, now: float) -> int:
        """Requests the routers hold for want of a Ready pod (0 without routing or without data)."""
        if spec.routing is None or self._prometheus is None:
            return 0
        demand = self._prometheus.router_demand(md["metadata"]["namespace"], md["metadata"]["name"], now)
        return 0 if isinstance(demand, NoData) else demand.held

    def _scale_to_zero(
        self, md: Mapping[str, Any], spec: ModelDeploymentSpec, current: int | None, idle_s: float, now: float
    ) -> Scaling | None:
        """The scale-to-zero decision when it overrides the autoscaler (to zero, at zero, back from zero)."""
        meta = md["metadata"]
        current = current if current is not None else spec.replicas
        demand = (
            self._prometheus.router_demand(meta["namespace"], meta["name"], now)
            if self._prometheus is not None
            else NoData(PROMETHEUS_UNAVAILABLE, "the operator runs without --prometheus-url")
        )
        wake_to = 1 if spec.autoscaling.enabled else max(1, spec.replicas)
        verdict = scale_to_zero(current, demand, idle_s, wake_to)
        if verdict.replicas is None:
            return None
        before = dict((md.get("status") or {}).get("autoscaling") or {})
        status = {"autoscaling": {**before, "desiredReplicas": verdict.replicas, "reason": verdict.reason}}
        changed = verdict.replicas != current
        next_due = now + (ZERO_POLL_S if verdict.replicas == 0 else IDLE_CHECK_S)
        return Scaling(verdict.replicas, verdict.reason if changed else None, status, (), (), next_due)

    @staticmethod
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


def _carried_condition(md: Mapping[str, Any]) -> tuple[tuple[str, Condition], ...]:
    for condition in (md.get("status") or {}).get("conditions") or ():
        if condition.get("type") == METRICS_AVAILABLE:
            verdict = Condition(
                condition.get("status") == "True", condition.get("reason", ""), condition.get("message", "")
            )
            return ((METRICS_AVAILABLE, verdict),)
    return ()
