"""What to read from Prometheus for a ModelDeployment, and when: the reads the measurement loop (measure/)
takes off the reconcile pass, decided from the spec and the status. Pure.

- the queue depth per pod, every `autoscaling.intervalSeconds` while autoscaling is on;
- every pod's adapter states, every adapters.READ_INTERVAL_S while the spec has adapters;
- what the routers report (held and running requests, the last request's time), with spec.routing and either
  scale to zero or autoscaling: every ROUTERS_AT_ZERO_S while the ModelDeployment runs no pod (a held request
  waits for this read, then a scrape, to wake the pods), every ROUTERS_INTERVAL_S otherwise;
- the analysis windows that have become measurable, for the revision under analysis (a canary beside the stable
  track) or baking (a promoted revision against the figures its predecessor had during the canary).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from moe_operator.decisions import slo as slo_settings
from moe_operator.decisions.adapters import READ_INTERVAL_S
from moe_operator.decisions.analysis import AnalysisPolicy, AnalysisState, due_windows
from moe_operator.decisions.promql import SLOQueries
from moe_operator.decisions.rollout import ANALYZING, BAKING, HOLDING, Canary
from moe_operator.decisions.spec import ModelDeploymentSpec

# How often the routers are read: at zero a held request waits for the read (the measurer's tick is 0.5 s);
# otherwise for the idle time, and the held requests the autoscaler counts with the pods' queues.
ROUTERS_AT_ZERO_S = 0.5
ROUTERS_INTERVAL_S = 5.0


@dataclass(frozen=True)
class Subject:
    """The analysis running now: whom it judges against whom, from when, by which counting rules."""

    kind: Literal["canary", "bake"]
    candidate: str
    baseline: (
        str | None
    )  # compared with: the stable track (live), or while baking the predecessor (over `recorded`)
    recorded: tuple[float, float] | None  # while baking: the predecessor's span during the canary
    state: AnalysisState
    policy: AnalysisPolicy


def subject(spec: ModelDeploymentSpec, status: Mapping[str, Any]) -> Subject | None:
    canary = Canary.from_status(status.get("canary"))
    if canary is None or spec.slo is None:
        return None
    if canary.phase in (ANALYZING, HOLDING):
        started = canary.ready_at or canary.started_at
        state = AnalysisState.from_status(canary.analysis, started_at=started)
        baseline = status.get("stableRevision") or None
        return Subject("canary", canary.revision, baseline, None, state, slo_settings.analysis_policy(spec))
    if canary.phase == BAKING and canary.promoted_at is not None and canary.previous:
        state = AnalysisState.from_status(canary.analysis, started_at=canary.promoted_at)
        recorded = (canary.ready_at or canary.started_at, canary.promoted_at)
        return Subject(
            "bake", canary.revision, canary.previous, recorded, state, slo_settings.bake_policy(spec)
        )
    return None


@dataclass(frozen=True)
class QueueDepthRead:
    window_s: float
    template: str | None
    engine: str


@dataclass(frozen=True)
class AdapterStatesRead:
    pass


@dataclass(frozen=True)
class RouterDemandRead:
    pass


@dataclass(frozen=True)
class WindowRead:
    """Window `index` of the analysis of `candidate`: (end - interval, end], and the analysis so far."""

    candidate: str
    baseline: str | None
    recorded: tuple[float, float] | None
    index: int
    end: float
    interval_s: float
    started_at: float
    engine: str
    overrides: SLOQueries

    @property
    def key(self) -> tuple[str, int]:
        return (self.candidate, self.index)


Read = QueueDepthRead | AdapterStatesRead | RouterDemandRead | WindowRead


@dataclass(frozen=True)
class LastReads:
    """When the measurement loop last took each periodic read of a ModelDeployment (None: never)."""

    queue_depth: float | None = None
    adapter_states: float | None = None
    router_demand: float | None = None


def due_reads(
    spec: ModelDeploymentSpec,
    status: Mapping[str, Any],
    now: float,
    last: LastReads,
    measured: frozenset[tuple[str, int]],
) -> list[Read]:
    """What falls due by `now`; `measured`: the (revision, window) pairs read already."""
    reads: list[Read] = []
    auto = spec.autoscaling
    if auto.enabled and (last.queue_depth is None or now >= last.queue_depth + auto.interval_seconds):
        reads.append(QueueDepthRead(auto.metric_window_seconds, auto.query, spec.runtime.engine))
    if spec.adapters and (last.adapter_states is None or now >= last.adapter_states + READ_INTERVAL_S):
        reads.append(AdapterStatesRead())
    if _router_read_due(spec, status, now, last.router_demand):
        reads.append(RouterDemandRead())
    running = subject(spec, status)
    if running is not None:
        assert spec.slo is not None
        overrides = SLOQueries(spec.slo.p99_latency_query, spec.slo.error_ratio_query)
        for window in due_windows(running.state, running.policy, now):
            if (running.candidate, window.index) in measured:
                continue
            reads.append(
                WindowRead(
                    running.candidate,
                    running.baseline,
                    running.recorded,
                    window.index,
                    window.end,
                    running.policy.interval_s,
                    running.state.started_at,
                    spec.runtime.engine,
                    overrides,
                )
            )
    return reads


def at_zero(status: Mapping[str, Any]) -> bool:
    """The last pass decided to run no pod."""
    return status.get("desiredReplicas") == 0


def _router_read_due(
    spec: ModelDeploymentSpec, status: Mapping[str, Any], now: float, last: float | None
) -> bool:
    routing = spec.routing
    if routing is None or (routing.scale_to_zero is None and not spec.autoscaling.enabled):
        return False
    interval = ROUTERS_AT_ZERO_S if at_zero(status) else ROUTERS_INTERVAL_S
    return last is None or now >= last + interval
