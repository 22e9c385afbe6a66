"""How many pods a ModelDeployment should run, from its per-pod queue depth. Pure.

The Kubernetes HPA's algorithm is the anchor (replica calculator, stabilization windows, scaling policies):

1. Only Ready pods count. Their mean queue is the metric; the raw recommendation is
   `ceil(ready × metric / target)`, the total queue over the target per pod. A Ready pod without a sample
   counts as 0 when scaling up and as exactly on target when scaling down, and the recommendation is
   dropped when filling them in reverses the direction or lands in the tolerance band (HPA's rules).
2. Within the tolerance band (|metric/target - 1| <= tolerance) the recommendation is the current count.
3. Pods still starting (weights can take minutes to load) are capacity on its way: when the Ready and
   starting pods already reach the recommendation, it is the current count, so a queue that has not
   drained yet does not scale up again and again while they load.
4. Stabilization: scaling up goes to the lowest recommendation of the scale-up window, scaling down to
   the highest of the scale-down window (window 0: the current recommendation alone).
5. Step limits: at most `max_pods` added (removed) within any `period_s`, counting earlier scale events.
6. Bounds: `[max(min_replicas, floor), max_replicas]`, last and always (max wins if they cross).

Missing data (NoData, or no sample from any Ready pod) and zero Ready pods hold the current count (within
the bounds): the autoscaler never scales in on missing data. Each such hold counts as a recommendation of the
held count, so that after an outage the windows refill with real reads before they allow a change: with no
history left, the first read after an outage longer than the scale-down window would decide a scale-in alone
(as in HPA, which keeps nothing while blind). What must survive an operator restart (the
recommendations the windows still need, the scale events the periods still need) is `AutoscaleState`, which
the caller keeps in the ModelDeployment's status (`to_status()` / `from_status()`).

Requests a router holds (no Ready pod to send them to) count with the pods' queues (`Observation.held`).

Scale to zero (`scale_to_zero`, with spec.routing.scaleToZero): a ModelDeployment whose routers have seen no
request for `idle_seconds`, and hold and answer none, goes to 0 pods; at 0, one held request wakes it to
`wake_to` pods (1 with autoscaling, which then takes over; spec.replicas without). It overrides the autoscaler
only then: otherwise the autoscaler decides, never below 1. What the routers report comes as `RouterDemand`
(summed over their replicas) or NoData: blind, it changes nothing (at 0 it stays there, above 0 it never
scales to zero).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from moe_operator.decisions.promdata import NO_SERIES, NoData, PodSamples
from moe_operator.decisions.statusfields import count, finite_number, mappings

Direction = Literal["up", "down", "none"]

# Float quotients at a boundary (ceil(3.0000000000000004), |4.4 / 4 - 1| against 0.1) count as on it.
_EPSILON = 1e-9


@dataclass(frozen=True)
class ScaleRule:
    """At most `max_pods` added (scale-up rule) or removed (scale-down rule) within any `period_s`."""

    stabilization_window_s: float
    max_pods: int
    period_s: float

    def __post_init__(self) -> None:
        if self.stabilization_window_s < 0 or self.max_pods < 1 or self.period_s < 0:
            raise ValueError(f"invalid scale rule {self}: window and period >= 0, max_pods >= 1")


@dataclass(frozen=True)
class AutoscalePolicy:
    min_replicas: int
    max_replicas: int
    target_queue_depth: float
    tolerance: float = 0.1
    up: ScaleRule = ScaleRule(stabilization_window_s=0, max_pods=4, period_s=15)
    down: ScaleRule = ScaleRule(stabilization_window_s=300, max_pods=1, period_s=60)

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(
                f"need 0 <= min_replicas <= max_replicas, got {self.min_replicas}, {self.max_replicas}"
            )
        if not self.target_queue_depth > 0 or not 0 <= self.tolerance < 1:
            raise ValueError(f"need target_queue_depth > 0 and 0 <= tolerance < 1 in {self}")


@dataclass(frozen=True)
class Observation:
    """The pods the decision sizes, and their queue.

    current: the replica count the autoscaler set last (the stable Deployment's spec.replicas);
    ready_pods: names of its Ready pods; starting: its pods that exist but are not Ready yet (not
    terminating ones); samples: queue per pod, or why there is none. Samples of pods not in `ready_pods`
    are ignored, so during a canary the canary pods' samples can stay in and only the stable pods count.
    """

    current: int
    ready_pods: frozenset[str]
    starting: int
    samples: PodSamples | NoData
    held: int = 0  # requests the routers hold for want of a Ready pod: queued like the pods' own

    def __post_init__(self) -> None:
        object.__setattr__(self, "ready_pods", frozenset(self.ready_pods))


@dataclass(frozen=True)
class Recommendation:
    at: float
    replicas: int


@dataclass(frozen=True)
class ScaleEvent:
    at: float
    from_replicas: int
    to_replicas: int

    @property
    def change(self) -> int:
        return self.to_replicas - self.from_replicas


@dataclass(frozen=True)
class AutoscaleState:
    """Recommendations the stabilization windows still need and scale events the step periods still need."""

    recommendations: tuple[Recommendation, ...] = ()
    events: tuple[ScaleEvent, ...] = ()

    def to_status(self) -> dict[str, Any]:
        return {
            "recommendations": [{"at": r.at, "replicas": r.replicas} for r in self.recommendations],
            "events": [{"at": e.at, "from": e.from_replicas, "to": e.to_replicas} for e in self.events],
        }

    @classmethod
    def from_status(cls, raw: Any) -> AutoscaleState:
        """The state `to_status()` wrote; entries that are missing or garbled are left out."""
        if not isinstance(raw, Mapping):
            return cls()
        recommendations = []
        for item in mappings(raw.get("recommendations")):
            at, replicas = finite_number(item.get("at")), count(item.get("replicas"))
            if at is not None and replicas is not None:
                recommendations.append(Recommendation(at, replicas))
        events = []
        for item in mappings(raw.get("events")):
            at, before, after = finite_number(item.get("at")), count(item.get("from")), count(item.get("to"))
            if at is not None and before is not None and after is not None:
                events.append(ScaleEvent(at, before, after))
        return cls(
            tuple(sorted(recommendations, key=lambda r: r.at)), tuple(sorted(events, key=lambda e: e.at))
        )


@dataclass(frozen=True)
class Decision:
    """replicas: what the Deployment should run; recommendation: what the metric asked for this time,
    before stabilization, step limits and bounds; metric: mean queue per Ready pod with a sample (None
    without data); no_data: set when the decision held for want of data (a MetricsAvailable=False
    condition); state: to keep in status for the next decision."""

    replicas: int
    direction: Direction
    reason: str
    metric: float | None
    recommendation: int
    state: AutoscaleState
    no_data: NoData | None = None


@dataclass(frozen=True)
class _Raw:
    replicas: int
    metric: float
    notes: tuple[str, ...]


def decide(
    obs: Observation, policy: AutoscalePolicy, state: AutoscaleState, now: float, floor: int = 0
) -> Decision:
    """The replicas to run now. `floor`: a lower bound on top of min_replicas (during a canary analysis,
    what the stable Deployment had when the analysis began)."""
    current = obs.current
    state = _forget(state, policy, now)
    lowest = min(max(policy.min_replicas, floor), policy.max_replicas)
    bounds_note = _bounds_note(policy, floor, lowest)
    no_data = _missing_data(obs)
    if no_data is not None or not obs.ready_pods:
        if no_data is not None:
            why = f"no queue data ({no_data.reason}: {no_data.message})"
        else:
            why = f"no Ready pod to measure ({obs.starting} starting)"
        target = _clamp(current, lowest, policy.max_replicas)
        reason = f"{why}: keep {current}" + _bounded(current, target, bounds_note)
        state = _remember(state, Recommendation(now, target), policy, now)
        return _decision(current, target, reason, None, current, state, now, no_data)

    raw = _raw_recommendation(obs, policy)
    notes, recommendation = list(raw.notes), raw.replicas
    ready, starting = len(obs.ready_pods), obs.starting
    if recommendation > current and ready + starting >= recommendation:
        notes.append(f"{ready} ready + {starting} starting already cover {recommendation}")
        recommendation = current

    stabilized, window_note = _stabilize(current, recommendation, state, policy, now)
    # stored capped at max_replicas (the final bound caps anyway), which bounds how many are kept; and raised
    # to the floor, so that the scale-down window still holds it for a while after the floor is gone (a canary
    # that drew the traffic away leaves the stable pods' queues reading low until their clients come back)
    kept = min(max(recommendation, floor), policy.max_replicas)
    state = _remember(state, Recommendation(now, kept), policy, now)
    limited, step_note = _limit_step(current, stabilized, state, policy, now)
    target = _clamp(limited, lowest, policy.max_replicas)

    changed = recommendation != current
    reason = ", ".join(notes) + (f": {current} -> {recommendation}" if changed else f": keep {current}")
    reason += "".join(f", {note}" for note in (window_note, step_note) if note)
    reason += _bounded(limited, target, bounds_note)
    if target != recommendation:
        reason += f": {target}" if target != current else f": keep {current}"
    return _decision(current, target, reason, raw.metric, recommendation, state, now, None)


def _missing_data(obs: Observation) -> NoData | None:
    if isinstance(obs.samples, NoData):
        return obs.samples
    if obs.ready_pods and not obs.ready_pods & obs.samples.values.keys():
        return NoData(NO_SERIES, f"none of the {len(obs.ready_pods)} Ready pods has a queue sample")
    return None


def _raw_recommendation(obs: Observation, policy: AutoscalePolicy) -> _Raw:
    """HPA's replica calculator over the Ready pods (replica_calculator.go), with queue as the metric."""
    assert isinstance(obs.samples, PodSamples)
    current, target, tolerance = obs.current, policy.target_queue_depth, policy.tolerance
    measured = {pod: value for pod, value in obs.samples.values.items() if pod in obs.ready_pods}
    ready, missing = len(obs.ready_pods), len(obs.ready_pods) - len(measured)
    total = sum(measured.values()) + obs.held
    metric = total / len(measured)
    ratio = metric / target
    pods = f"{ready} ready" + (f", {obs.starting} starting" if obs.starting else "")
    if abs(ratio - 1) <= tolerance + _EPSILON:
        return _Raw(
            current, metric, (f"queue {metric:.1f}/pod within {tolerance:.0%} of target {target:g} ({pods})",)
        )
    notes = [f"queue {metric:.1f}/pod {'over' if ratio > 1 else 'under'} target {target:g} ({pods})"]
    if missing:
        # a pod without a sample may hide anything: assume what argues least for the change
        notes.append(f"{missing} without a sample counted {'as 0' if ratio > 1 else 'on target'}")
        filled = total if ratio > 1 else total + missing * target
        filled_ratio = filled / ready / target
        if abs(filled_ratio - 1) <= tolerance + _EPSILON or (ratio > 1) != (filled_ratio > 1):
            return _Raw(current, metric, (*notes, "which leaves no clear need"))
        ratio = filled_ratio
    replicas = math.ceil(ratio * ready - _EPSILON)
    if (ratio > 1 and replicas < current) or (ratio < 1 and replicas > current):
        # fewer Ready pods than replicas: the count would move against the metric
        return _Raw(current, metric, tuple(notes))
    return _Raw(replicas, metric, tuple(notes))


def _stabilize(
    current: int, recommendation: int, state: AutoscaleState, policy: AutoscalePolicy, now: float
) -> tuple[int, str]:
    """HPA's stabilizeRecommendationWithBehaviors: clamp current between the lowest recommendation of the
    scale-up window and the highest of the scale-down window."""
    up_cutoff, down_cutoff = now - policy.up.stabilization_window_s, now - policy.down.stabilization_window_s
    up_to = min([recommendation, *(r.replicas for r in state.recommendations if r.at > up_cutoff)])
    down_to = max([recommendation, *(r.replicas for r in state.recommendations if r.at > down_cutoff)])
    stabilized = min(max(current, up_to), down_to)
    if recommendation > current and stabilized < recommendation:
        return (
            stabilized,
            f"held at {stabilized} by the {policy.up.stabilization_window_s:g}s scale-up window",
        )
    if recommendation < current and stabilized > recommendation:
        return (
            stabilized,
            f"held at {stabilized} by the {policy.down.stabilization_window_s:g}s scale-down window",
        )
    return stabilized, ""


def _limit_step(
    current: int, desired: int, state: AutoscaleState, policy: AutoscalePolicy, now: float
) -> tuple[int, str]:
    """HPA's Pods scaling policies: the count at the start of the period plus (minus) max_pods."""
    if desired == current:
        return desired, ""
    rule = policy.up if desired > current else policy.down
    # only the chain that led to the current count; the others stay kept, as the count may come back to them
    recent = [e for e in _taken(state.events, current) if e.at > now - rule.period_s]
    added = sum(e.change for e in recent if e.change > 0)
    removed = -sum(e.change for e in recent if e.change < 0)
    period_start = current - added + removed
    if desired > current:
        limit = max(period_start + rule.max_pods, current)
        if desired > limit:
            return limit, f"limited to +{rule.max_pods} per {rule.period_s:g}s"
    else:
        limit = min(period_start - rule.max_pods, current)
        if desired < limit:
            return limit, f"limited to -{rule.max_pods} per {rule.period_s:g}s"
    return desired, ""


def _clamp(replicas: int, lowest: int, highest: int) -> int:
    return min(max(replicas, lowest), highest)


def _bounds_note(policy: AutoscalePolicy, floor: int, lowest: int) -> dict[str, str]:
    if floor > policy.min_replicas and lowest == floor:
        low = f"raised to the floor of {lowest} while a canary is analysed"
    else:
        low = f"raised to minReplicas {lowest}"
    return {"low": low, "high": f"capped at maxReplicas {policy.max_replicas}"}


def _bounded(before: int, after: int, notes: Mapping[str, str]) -> str:
    if after > before:
        return f", {notes['low']}"
    if after < before:
        return f", {notes['high']}"
    return ""


def _decision(
    current: int,
    target: int,
    reason: str,
    metric: float | None,
    recommendation: int,
    state: AutoscaleState,
    now: float,
    no_data: NoData | None,
) -> Decision:
    direction: Direction = "up" if target > current else "down" if target < current else "none"
    if direction != "none":
        state = replace(state, events=(*state.events, ScaleEvent(now, current, target)))
    return Decision(target, direction, reason, metric, recommendation, state, no_data)


def _taken(events: tuple[ScaleEvent, ...], current: int) -> tuple[ScaleEvent, ...]:
    """The events that led to the current count: a chain back from `current`, newest first. A decision is
    recorded before the Deployment is written (so that a retried pass finds it made); one whose write failed,
    and whatever another client changed since, is not in the chain and counts for no step limit (HPA records
    an event only once its scale succeeded)."""
    chain, expected = [], current
    for event in reversed(events):
        if event.to_replicas == expected:
            chain.append(event)
            expected = event.from_replicas
    return tuple(reversed(chain))


def _forget(state: AutoscaleState, policy: AutoscalePolicy, now: float) -> AutoscaleState:
    """Drops what no window or period reaches any more. Entries dated in the future (a clock that went
    back) count as made now, so that they expire too."""
    window = max(policy.up.stabilization_window_s, policy.down.stabilization_window_s)
    period = max(policy.up.period_s, policy.down.period_s)
    return AutoscaleState(
        tuple(replace(r, at=min(r.at, now)) for r in state.recommendations if r.at > now - window),
        tuple(replace(e, at=min(e.at, now)) for e in state.events if e.at > now - period),
    )


def _remember(
    state: AutoscaleState, new: Recommendation, policy: AutoscalePolicy, now: float
) -> AutoscaleState:
    """Adds `new` and keeps only recommendations that can still decide a window: for the scale-down window
    (a maximum), one that a later, higher or equal one outlives never will; for the scale-up window (a
    minimum), one that a later, lower or equal one outlives never will. What is left is small."""
    kept: list[Recommendation] = []
    later_max, later_min = new.replicas, new.replicas
    for r in reversed(state.recommendations):
        for_down = r.at > now - policy.down.stabilization_window_s and r.replicas > later_max
        for_up = r.at > now - policy.up.stabilization_window_s and r.replicas < later_min
        if for_down or for_up:
            kept.append(r)
        later_max, later_min = max(later_max, r.replicas), min(later_min, r.replicas)
    return replace(state, recommendations=(*reversed(kept), new))


@dataclass(frozen=True)
class RouterDemand:
    """What a ModelDeployment's routers report, summed over their replicas."""

    held: int  # requests waiting for a Ready pod
    in_flight: int  # requests accepted and not answered yet (held ones included)
    idle_s: float  # seconds since the last request arrived at any router (a router's start counts as one)


@dataclass(frozen=True)
class ZeroDecision:
    """replicas: the count to run, overriding the autoscaler; None: the autoscaler (or spec.replicas) decides,
    at least 1."""

    replicas: int | None
    reason: str


def scale_to_zero(
    current: int, demand: RouterDemand | NoData, idle_seconds: float, wake_to: int
) -> ZeroDecision:
    if wake_to < 1:
        raise ValueError(f"waking up to {wake_to} pods serves nothing")
    if isinstance(demand, NoData):
        if current == 0:
            return ZeroDecision(0, f"at zero, the routers cannot be read ({demand.reason}: {demand.message})")
        return ZeroDecision(None, "")
    if current == 0:
        if demand.held > 0:
            return ZeroDecision(
                wake_to, f"{demand.held} request(s) held at the router: waking up to {wake_to}"
            )
        # no figure that changes from read to read: at zero the pass runs on every read, and writes the status
        # only when it changed
        return ZeroDecision(0, "no request held at the router: staying at zero")
    if demand.held == 0 and demand.in_flight == 0 and demand.idle_s >= idle_seconds:
        return ZeroDecision(
            0,
            f"no request for {demand.idle_s:.0f}s (scaleToZero.idleSeconds {idle_seconds:g}): scaling to zero",
        )
    return ZeroDecision(None, "")
