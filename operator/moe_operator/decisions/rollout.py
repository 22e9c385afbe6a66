"""Which revision the stable Deployment runs, whether a canary runs beside it, and what was rejected. Pure.

A spec that makes a new revision first runs it as a canary beside the untouched stable Deployment (strategy
Canary). The canary starts, its pods turn Ready, it is analysed against the SLO, and then:
- passes: it is promoted. The stable Deployment rolls to its revision; the canary stays until that is done.
- fails (or never turns Ready within the startup timeout): it is rolled back. The canary goes; the stable
  Deployment never changed. The revision is rejected and not deployed again until the spec changes to another
  revision or the user asks for a retry (the retry annotation with a new value). A canary whose pods the
  cluster has no room for is not failing: it waits for capacity (reason WaitingForCapacity), and its startup
  timeout runs from when its pods were placed.
- is inconclusive or cannot be measured past the limits: it is held. The canary keeps running; status says why.
- breaks its pods (a restart, OOMKilled, CrashLoopBackOff, not Ready after having been Ready) or fails to
  load an adapter the stable track serves: it is rolled back at once, whatever the analysis says.
When the stable Deployment's new pods find no room while it rolls to a promoted revision (the canary holds the
spare GPUs), the canary's capacity is handed over: its Deployment goes, and the stable track takes its place.
After a promotion the revision bakes (`spec.slo.bakeSeconds`): it keeps being judged, against the figures its
predecessor had during the canary, and a breach rolls the stable Deployment back to the predecessor (its
immutable ConfigMap is still there) and rejects the revision as a failed canary would be.
Strategy RollingUpdate moves the stable Deployment at once, with no analysis. The first revision of a
ModelDeployment has nothing to be compared with or rolled back to: it is stable from the start.

All of it is kept in the status (`to_status`), never in memory, so a restarted operator resumes where it was.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from moe_operator.decisions.analysis import CONTINUE, Verdict
from moe_operator.decisions.events import Event
from moe_operator.decisions.status import Problem
from moe_operator.timestamps import from_time, to_time

ROLLING_UPDATE = "RollingUpdate"  # spec.rollout.strategy; the other one is "Canary"
STARTING, ANALYZING, HOLDING, PROMOTING, BAKING = "Starting", "Analyzing", "Holding", "Promoting", "Baking"
PHASES = (STARTING, ANALYZING, HOLDING, PROMOTING, BAKING)
REJECTED_KEPT = 5
WAITING_FOR_CAPACITY = "WaitingForCapacity"


@dataclass(frozen=True)
class Rejected:
    revision: str
    reason: str  # SLOBreached, ProgressDeadlineExceeded, AnalysisInconclusive, CanaryUnhealthy, ...
    message: str
    at: float
    measurements: tuple[Mapping[str, Any], ...] = ()

    def to_status(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "reason": self.reason,
            "message": self.message,
            "time": to_time(self.at),
            "measurements": [dict(m) for m in self.measurements],
        }

    @classmethod
    def from_status(cls, raw: Mapping[str, Any]) -> Rejected | None:
        if not isinstance(raw, Mapping) or not raw.get("revision"):
            return None
        return cls(
            revision=str(raw["revision"]),
            reason=str(raw.get("reason") or "Rejected"),
            message=str(raw.get("message") or ""),
            at=from_time(raw.get("time")) or 0.0,
            measurements=tuple(m for m in raw.get("measurements") or () if isinstance(m, Mapping)),
        )


@dataclass(frozen=True)
class Canary:
    revision: str
    phase: str
    started_at: float
    baseline_replicas: int  # the stable Deployment's replicas when the canary started: its floor meanwhile
    previous: str | None = None  # the stable revision when the canary started: what a failed bake restores
    ready_at: float | None = None
    promoted_at: float | None = None  # when the stable track finished rolling to it (the bake's start)
    placed_at: float | None = None  # when its pods found room after waiting for capacity
    handed_over: bool = False  # promoted, its pods gave their capacity to the stable track's new pods
    reason: str = ""  # why it is held, while it is
    message: str = ""
    analysis: Mapping[str, Any] | None = None  # the analysis module's state, as it stores it

    def to_status(self) -> dict[str, Any]:
        status = {
            "revision": self.revision,
            "phase": self.phase,
            "startTime": to_time(self.started_at),
            "baselineReplicas": self.baseline_replicas,
            "message": self.message,
        }
        if self.reason:
            status["reason"] = self.reason
        if self.previous:
            status["previousRevision"] = self.previous
        if self.ready_at is not None:
            status["readyTime"] = to_time(self.ready_at)
        if self.promoted_at is not None:
            status["promotedTime"] = to_time(self.promoted_at)
        if self.placed_at is not None:
            status["placedTime"] = to_time(self.placed_at)
        if self.handed_over:
            status["capacityHandedOver"] = True
        if self.analysis is not None:
            status["analysis"] = dict(self.analysis)
        return status

    @classmethod
    def from_status(cls, raw: Any) -> Canary | None:
        if not isinstance(raw, Mapping) or not raw.get("revision"):
            return None
        phase = raw.get("phase")
        started = from_time(raw.get("startTime"))
        if phase not in PHASES or started is None:
            return None
        analysis = raw.get("analysis")
        return cls(
            revision=str(raw["revision"]),
            phase=phase,
            started_at=started,
            baseline_replicas=int(raw.get("baselineReplicas") or 0),
            previous=str(raw["previousRevision"]) if raw.get("previousRevision") else None,
            ready_at=from_time(raw.get("readyTime")),
            promoted_at=from_time(raw.get("promotedTime")),
            placed_at=from_time(raw.get("placedTime")),
            handed_over=raw.get("capacityHandedOver") is True,
            reason=str(raw.get("reason") or ""),
            message=str(raw.get("message") or ""),
            analysis=dict(analysis) if isinstance(analysis, Mapping) else None,
        )


@dataclass(frozen=True)
class RolloutState:
    stable: str | None = None
    canary: Canary | None = None
    rejected: tuple[Rejected, ...] = ()
    last_handled_retry: str | None = None

    def is_rejected(self, revision: str) -> Rejected | None:
        return next((r for r in self.rejected if r.revision == revision), None)

    def to_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {"rejectedRevisions": [r.to_status() for r in self.rejected]}
        if self.stable:
            status["stableRevision"] = self.stable
        if self.canary:
            status["canary"] = self.canary.to_status()
        if self.last_handled_retry is not None:
            status["lastHandledRetry"] = self.last_handled_retry
        return status

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> RolloutState:
        rejected = (Rejected.from_status(r) for r in status.get("rejectedRevisions") or ())
        return cls(
            stable=status.get("stableRevision") or None,
            canary=Canary.from_status(status.get("canary")),
            rejected=tuple(r for r in rejected if r is not None),
            last_handled_retry=status.get("lastHandledRetry"),
        )


@dataclass(frozen=True)
class RolloutInputs:
    target: str  # the revision the spec describes now
    strategy: str
    now: float
    stable_replicas: int  # the stable Deployment's replicas now
    canary_replicas: int
    canary_ready: int  # Ready pods of the canary Deployment at the canary's revision
    stable_done: bool  # every pod of the stable Deployment runs the stable revision and is available
    startup_timeout_s: float
    analysed: bool  # the spec has an SLO; without one a canary passes once its pods are Ready
    verdict: Verdict = CONTINUE  # of the analysis running now: the canary's, or the bake's
    retry_token: str | None = None
    bake: bool = False  # a promoted revision bakes before the rollout is over
    unhealthy: Problem | None = None  # what is wrong with the pods of the revision under analysis or bake
    canary_unschedulable: Problem | None = None  # a canary pod the cluster has no room for
    stable_unschedulable: Problem | None = None  # a stable pod at the stable revision with no room
    # a stable Deployment exists: without one nothing serves, so there is no traffic for a canary to protect and
    # no track to judge it against (a first Deployment the API server refused, or one deleted by hand)
    stable_exists: bool = True


@dataclass(frozen=True)
class RolloutPlan:
    state: RolloutState
    events: tuple[Event, ...]

    @property
    def stable_revision(self) -> str:
        assert self.state.stable is not None
        return self.state.stable

    @property
    def canary_revision(self) -> str | None:
        """The revision the canary Deployment runs; None: there is no canary Deployment."""
        canary = self.state.canary
        return canary.revision if canary and canary.phase != BAKING and not canary.handed_over else None


def plan_rollout(state: RolloutState, inputs: RolloutInputs) -> RolloutPlan:
    events: list[Event] = []
    state = _consume_retry(state, inputs, events)
    if state.stable is None or not inputs.stable_exists:
        return RolloutPlan(replace(state, stable=inputs.target, canary=None), tuple(events))
    canary = state.canary
    if canary is not None and canary.phase == PROMOTING:
        if not inputs.stable_done:
            return _promoting(state, inputs, events)
        baking = inputs.bake and inputs.analysed and canary.previous is not None
        events.append(
            Event(
                "Normal",
                "PromotionComplete",
                f"revision {canary.revision} runs on every stable pod" + ("; baking it" if baking else ""),
            )
        )
        canary = (
            replace(canary, phase=BAKING, promoted_at=inputs.now, analysis=None, message="baking")
            if baking
            else None
        )
        state = replace(state, canary=canary)
    if canary is not None and canary.phase == BAKING:
        if canary.revision == state.stable and canary.revision == inputs.target:
            return _bake(state, inputs, events)
        state = replace(state, canary=None)  # the spec moved on: the bake is over
        canary = None
    if canary is not None and (
        canary.revision != inputs.target
        or canary.revision == state.stable
        or state.is_rejected(canary.revision)
    ):
        events.append(
            Event(
                "Normal",
                "CanaryAborted",
                f"stopped the canary of revision {canary.revision}: the spec now describes revision {inputs.target}",
            )
        )
        state = replace(state, canary=None)
        canary = None
    if inputs.target == state.stable or state.is_rejected(inputs.target):
        return RolloutPlan(state, tuple(events))
    if inputs.strategy == ROLLING_UPDATE:
        events.append(
            Event("Normal", "RolloutStarted", f"rolling out revision {inputs.target} (was {state.stable})")
        )
        return RolloutPlan(replace(state, stable=inputs.target), tuple(events))
    if canary is None:
        canary = Canary(
            inputs.target,
            STARTING,
            inputs.now,
            inputs.stable_replicas,
            previous=state.stable,
            message="starting the canary",
        )
        events.append(
            Event(
                "Normal",
                "CanaryStarted",
                f"running revision {inputs.target} as a canary of {inputs.canary_replicas} pod(s) beside "
                f"revision {state.stable}",
            )
        )
    return _advance(replace(state, canary=canary), inputs, events)


def _consume_retry(state: RolloutState, inputs: RolloutInputs, events: list[Event]) -> RolloutState:
    token = inputs.retry_token
    if token is None or token == state.last_handled_retry:
        return state
    rejected = state.is_rejected(inputs.target)
    if rejected is not None:
        events.append(
            Event(
                "Normal", "RetryRequested", f"analysing the rejected revision {inputs.target} again, as asked"
            )
        )
    kept = tuple(r for r in state.rejected if r is not rejected)
    return replace(state, rejected=kept, last_handled_retry=token)


def _advance(state: RolloutState, inputs: RolloutInputs, events: list[Event]) -> RolloutPlan:
    canary = state.canary
    assert canary is not None
    if inputs.unhealthy is not None:
        verdict = Verdict("Rollback", inputs.unhealthy.reason, inputs.unhealthy.message)
        return _reject(state, verdict, inputs, events)
    if canary.phase == STARTING:
        if inputs.canary_ready >= inputs.canary_replicas:
            canary = replace(
                canary, phase=ANALYZING, ready_at=inputs.now, reason="", message="analysing the canary"
            )
            state = replace(state, canary=canary)
            if inputs.analysed:
                return RolloutPlan(state, tuple(events))
        elif inputs.canary_unschedulable is not None:
            return _wait_for_capacity(state, inputs.canary_unschedulable, events)
        else:
            return _starting(state, inputs, events)
    verdict = (
        inputs.verdict if inputs.analysed else Verdict("Promote", "Ready", "the canary's pods are Ready")
    )
    if verdict.action == "Promote":
        events.append(
            Event(
                "Normal",
                "Promoted",
                f"revision {canary.revision} passed ({verdict.message or verdict.reason}): rolling it out to the "
                f"stable Deployment",
            )
        )
        promoted = replace(canary, phase=PROMOTING, message=f"promoted: {verdict.message or verdict.reason}")
        return RolloutPlan(replace(state, stable=canary.revision, canary=promoted), tuple(events))
    if verdict.action == "Rollback":
        return _reject(state, verdict, inputs, events)
    if verdict.action == "Hold":
        if canary.phase != HOLDING or canary.reason != verdict.reason:  # news, not every new count
            events.append(
                Event(
                    "Warning", verdict.reason, f"holding the canary of {canary.revision}: {verdict.message}"
                )
            )
        return RolloutPlan(
            replace(
                state, canary=replace(canary, phase=HOLDING, reason=verdict.reason, message=verdict.message)
            ),
            tuple(events),
        )
    analysing = replace(canary, phase=ANALYZING, message=verdict.message or "analysing the canary")
    return RolloutPlan(replace(state, canary=analysing), tuple(events))


def _starting(state: RolloutState, inputs: RolloutInputs, events: list[Event]) -> RolloutPlan:
    """A canary whose pods are placed and not all Ready: rejected once past its startup timeout."""
    canary = state.canary
    assert canary is not None
    if canary.reason == WAITING_FOR_CAPACITY:
        # its pods were placed only now: its startup timeout runs from now
        canary = replace(canary, reason="", message="starting the canary", placed_at=inputs.now)
        state = replace(state, canary=canary)
    if inputs.now - startup_clock(canary) > inputs.startup_timeout_s:
        message = (
            f"the canary's pods were not Ready within {math.ceil(inputs.startup_timeout_s)}s "
            f"({inputs.canary_ready}/{inputs.canary_replicas} Ready)"
        )
        return _reject(state, Verdict("Rollback", "ProgressDeadlineExceeded", message), inputs, events)
    return RolloutPlan(state, tuple(events))


def startup_clock(canary: Canary) -> float:
    """When the canary's startup timeout began: its start, or when its pods found room after waiting for it."""
    return canary.placed_at or canary.started_at


def _wait_for_capacity(state: RolloutState, problem: Problem, events: list[Event]) -> RolloutPlan:
    canary = state.canary
    assert canary is not None
    if canary.reason != WAITING_FOR_CAPACITY:
        events.append(
            Event(
                "Warning",
                WAITING_FOR_CAPACITY,
                f"the canary of revision {canary.revision} waits for room in the cluster ({problem.message}); "
                f"revision {state.stable} keeps all the traffic",
            )
        )
    # nothing in it changes from pass to pass while it waits (no time): a status written once, not every pass
    waiting = replace(canary, reason=WAITING_FOR_CAPACITY, message=f"waiting for capacity: {problem.message}")
    return RolloutPlan(replace(state, canary=waiting), tuple(events))


def _promoting(state: RolloutState, inputs: RolloutInputs, events: list[Event]) -> RolloutPlan:
    """The stable Deployment is rolling to the promoted revision. A new pod of it that finds no room gets the
    canary's: the canary runs the same revision, so its pods are capacity the stable track can take over."""
    canary = state.canary
    assert canary is not None
    if inputs.stable_unschedulable is None or canary.handed_over:
        return RolloutPlan(state, tuple(events))
    events.append(
        Event(
            "Normal",
            "CapacityHandedOver",
            f"no room for the stable Deployment's new pods ({inputs.stable_unschedulable.message}): the "
            f"canary's pods give theirs to the stable track",
        )
    )
    handed = replace(
        canary, handed_over=True, message="promoted: the canary's capacity went to the stable track"
    )
    return RolloutPlan(replace(state, canary=handed), tuple(events))


def _bake(state: RolloutState, inputs: RolloutInputs, events: list[Event]) -> RolloutPlan:
    canary = state.canary
    assert canary is not None and canary.previous is not None
    verdict = inputs.verdict
    if inputs.unhealthy is not None:
        verdict = Verdict("Rollback", inputs.unhealthy.reason, inputs.unhealthy.message)
    if verdict.action == "Rollback":
        rejected = Rejected(
            canary.revision, verdict.reason, verdict.message, inputs.now, verdict.measurements
        )
        events.append(
            Event(
                "Warning",
                "RolledBack",
                f"revision {canary.revision} broke its objectives while baking ({verdict.reason}: "
                f"{verdict.message}); rolling the stable Deployment back to revision {canary.previous}",
            )
        )
        kept = (*state.rejected, rejected)[-REJECTED_KEPT:]
        return RolloutPlan(replace(state, stable=canary.previous, canary=None, rejected=kept), tuple(events))
    if verdict.action == "Promote":
        events.append(Event("Normal", "BakeComplete", f"revision {canary.revision} baked: {verdict.message}"))
        return RolloutPlan(replace(state, canary=None), tuple(events))
    message = verdict.message or "baking"
    reason = verdict.reason if verdict.action == "Hold" else ""
    return RolloutPlan(replace(state, canary=replace(canary, reason=reason, message=message)), tuple(events))


def _reject(state: RolloutState, verdict: Verdict, inputs: RolloutInputs, events: list[Event]) -> RolloutPlan:
    canary = state.canary
    assert canary is not None
    rejected = Rejected(canary.revision, verdict.reason, verdict.message, inputs.now, verdict.measurements)
    events.append(
        Event(
            "Warning",
            "RolledBack",
            f"rejected revision {canary.revision} ({verdict.reason}: {verdict.message}); revision {state.stable} "
            f"keeps all the traffic",
        )
    )
    kept = (*state.rejected, rejected)[-REJECTED_KEPT:]
    return RolloutPlan(replace(state, canary=None, rejected=kept), tuple(events))
