"""What one reconcile pass decides, from everything it observed: the status to record, the writes that bring
the children in line with it, and the Events to post. Pure.

Level-triggered: every pass recomputes everything from the ModelDeployment, its children as the watch cache
holds them, and the newest measurements (taken off the pass by measure/). Every decision that must outlive the
pass (the stable revision, the canary and its analysis, the autoscaler's windows) is in the status the pass
records before it writes any child, so a pass retried after a failed write finds its decision made and carries
it out, never decides it again (reconcile/reconciler.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from moe_operator.decisions import adapters as adapter_status
from moe_operator.decisions import slo as slo_settings
from moe_operator.decisions.adapters import AdapterRead
from moe_operator.decisions.analysis import CONTINUE, Verdict, analyse, bake_verdict
from moe_operator.decisions.analysis import verdict as verdict_of
from moe_operator.decisions.events import Event
from moe_operator.decisions.images import DEFAULT as DEFAULT_IMAGES
from moe_operator.decisions.images import EngineImages
from moe_operator.decisions.measurements import subject
from moe_operator.decisions.naming import (
    CANARY,
    RETRY_ANNOTATION,
    REVISION_LABEL,
    STABLE,
    TRACK_LABEL,
    Owner,
    conflict_message,
    is_ours,
    selector_string,
    service_name,
)
from moe_operator.decisions.plan import in_step, plan_deployment
from moe_operator.decisions.pods import count_pods, pod_problem, unhealthy, unschedulable, why_unschedulable
from moe_operator.decisions.policy import Policy, violations
from moe_operator.decisions.promdata import Measurement, NoData
from moe_operator.decisions.render import (
    Revision,
    adapters_config_map,
    deployment,
    disruption_budget,
    render_revision,
    revision_config_map,
    revision_from_config_map,
    service,
)
from moe_operator.decisions.rollout import (
    BAKING,
    PROMOTING,
    WAITING_FOR_CAPACITY,
    RolloutInputs,
    RolloutPlan,
    RolloutState,
    plan_rollout,
    startup_clock,
)
from moe_operator.decisions.routing import routing_children, routing_names
from moe_operator.decisions.scaling import QueueRead, RouterRead, Scaling, scale
from moe_operator.decisions.spec import InvalidSpec, ModelDeploymentSpec, parse_spec
from moe_operator.decisions.status import DeploymentState, Problem, StatusInputs, compute_status
from moe_operator.timestamps import to_time

RESYNC_SECONDS = 60.0
SERVICE_DOMAIN = "svc.cluster.local"
UNHEALTHY_GRACE_S = 15.0  # a pod not Ready for longer than about three probe periods


@dataclass(frozen=True)
class Observed:
    md: Mapping[str, Any]
    now: float
    policy: Policy
    stable: Mapping[str, Any] | None = None
    canary: Mapping[str, Any] | None = None
    service: Mapping[str, Any] | None = None
    pods: Sequence[Mapping[str, Any]] = ()  # the runtime pods of both tracks
    router_pods: Sequence[Mapping[str, Any]] = ()  # spec.routing's router pods
    routing: Mapping[tuple[str, str], Mapping[str, Any]] = field(
        default_factory=dict
    )  # the objects of decisions/routing.routing_names that exist, by (kind, name)
    config_maps: Sequence[Mapping[str, Any]] = ()  # the operator's ConfigMaps in the namespace
    budgets: Sequence[Mapping[str, Any]] = ()  # the PodDisruptionBudgets named after its tracks
    queue: QueueRead | None = None
    adapters: AdapterRead | None = None
    routers: RouterRead | None = None  # what the routers report (spec.routing)
    windows: Mapping[int, Measurement | NoData] = field(default_factory=dict)  # of the analysis running now
    measuring: bool = True  # the operator has a Prometheus to read
    write_refused: Problem | None = None  # the API server refused this generation's writes on the last try
    images: EngineImages = DEFAULT_IMAGES  # each engine's image when a spec names none


@dataclass(frozen=True)
class Write:
    action: Literal["create", "apply", "delete"]
    desired: Mapping[str, Any] | None  # None for delete
    observed: Mapping[str, Any] | None  # None for create


@dataclass(frozen=True)
class Decision:
    status: dict[str, Any]
    writes: tuple[Write, ...] = ()
    events: tuple[Event, ...] = ()
    requeue_after: float | None = None
    scaling: Scaling | None = None
    rollout: RolloutPlan | None = None
    outcomes: Mapping[str, int] = field(
        default_factory=dict
    )  # analysis windows counted in this pass, by kind


def decide(o: Observed) -> Decision:
    try:
        spec = parse_spec(o.md["spec"])
    except InvalidSpec as err:
        return refuse(o, Problem("InvalidSpec", str(err)))
    problems = violations(spec, o.policy)
    if problems:
        return refuse(o, Problem("PolicyViolation", "the operator policy refuses: " + "; ".join(problems)))
    return _Pass(o, spec).run()


def refuse(o: Observed, problem: Problem) -> Decision:
    """Nothing is applied; the status says why, and keeps what the analysis and the autoscaler remember."""
    owner, status_in = Owner.of(o.md), o.md.get("status") or {}
    stable = o.stable if o.stable and is_ours(o.stable, owner.uid) else None
    inputs = StatusInputs(
        generation=o.md["metadata"].get("generation", 0),
        selector=selector_string(owner.name),
        target_revision=status_in.get("currentRevision") or "",
        stable_revision=status_in.get("stableRevision"),
        desired_replicas=(stable or {}).get("spec", {}).get("replicas", 0),
        stable=DeploymentState.of(stable) if stable else None,
        rollout=RolloutState.from_status(status_in).to_status(),
        refusal=problem,
        extra={k: status_in[k] for k in ("autoscaling", "adapters", "url", "model") if k in status_in},
    )
    return Decision(compute_status(inputs, status_in, to_time(o.now)))


class _Pass:
    def __init__(self, o: Observed, spec: ModelDeploymentSpec) -> None:
        self.o, self.spec = o, spec
        self.owner = Owner.of(o.md)
        self.status_in: Mapping[str, Any] = o.md.get("status") or {}
        self.events: list[Event] = []
        self.writes: list[Write] = []

    def run(self) -> Decision:
        o, spec = self.o, self.spec
        routing = routing_children(self.owner, spec) if spec.routing is not None else []
        taken = [o.routing.get((obj["kind"], obj["metadata"]["name"])) for obj in routing]
        for observed in (o.stable, o.canary, o.service, *taken):
            if observed is not None and not is_ours(observed, self.owner.uid):
                return refuse(o, _conflict(observed))
        target = render_revision(self.owner.name, spec, o.images)
        revisions = self._known_revisions(target)
        state = RolloutState.from_status(self.status_in)
        if state.stable is not None and state.stable not in revisions:
            self.events.append(
                Event(
                    "Warning",
                    "StableRevisionLost",
                    f"revision {state.stable} cannot be restored: using {target.hash}",
                )
            )
            state = replace(state, stable=None, canary=None)
        state, verdict, unhealthy_pods, counted = self._analyse(state)
        plan = self._plan_rollout(state, target, verdict, unhealthy_pods)
        scaling = self._scale(plan)
        adapters = adapter_status.report(spec, self.status_in, o.pods, o.adapters, o.measuring)
        self.events.extend([*plan.events, *scaling.events, *adapters.events])

        stable_revision = revisions[plan.stable_revision]
        canary_revision = revisions[plan.canary_revision] if plan.canary_revision else None
        for revision in {r.hash: r for r in (stable_revision, canary_revision) if r}.values():
            self._config_map(revision)
        self._adapters_config_map()
        self._service()
        self._routing(routing)
        self._deployment(stable_revision, STABLE, o.stable, scaling.replicas, scaling.reason)
        if canary_revision is not None:
            self._deployment(canary_revision, CANARY, o.canary, spec.rollout.canary_replicas)
        elif o.canary is not None:
            self.writes.append(Write("delete", None, o.canary))
        conflict = self._disruption_budgets([STABLE, *([CANARY] if canary_revision is not None else [])])
        if conflict is not None:
            return refuse(o, _conflict(conflict))
        keep = {stable_revision.hash, target.hash, *([canary_revision.hash] if canary_revision else [])}
        if plan.state.canary is not None and plan.state.canary.previous:
            keep.add(plan.state.canary.previous)  # what a failed bake restores
        self._prune_config_maps(keep)

        rejected = plan.state.is_rejected(target.hash)
        inputs = StatusInputs(
            generation=o.md["metadata"].get("generation", 0),
            selector=selector_string(self.owner.name),
            target_revision=target.hash,
            stable_revision=plan.stable_revision,
            desired_replicas=scaling.replicas,
            stable=DeploymentState.of(o.stable) if o.stable else None,
            canary=DeploymentState.of(o.canary) if o.canary and canary_revision else None,
            rollout=plan.state.to_status(),
            canary_phase=plan.state.canary.phase if plan.state.canary else None,
            pod_problem=pod_problem([*self._pods_not_waiting_for_capacity(plan.state), *o.router_pods]),
            rejected_target=Problem(
                rejected.reason,
                f"revision {rejected.revision} was rolled back: {rejected.message}; change the spec, or annotate "
                f"the ModelDeployment with {RETRY_ANNOTATION}=<any new value> to analyse it again",
            )
            if rejected
            else None,
            refusal=o.write_refused,
            extra={**scaling.status, **adapters.status, **self._address()},
            extra_conditions=(*scaling.conditions, *adapters.conditions),
        )
        status = compute_status(inputs, self.status_in, to_time(o.now))
        return Decision(
            status=status,
            writes=tuple(self.writes),
            events=tuple(self.events),
            requeue_after=self._next_look(plan.state, scaling.next_due),
            scaling=scaling,
            rollout=plan,
            outcomes=counted,
        )

    # ---- analysis and rollout ------------------------------------------------------------------------

    def _analyse(self, state: RolloutState):
        """The running analysis, advanced by the windows measured since the last pass; what is wrong with the
        pods it judges; the kinds of the windows counted now."""
        running = subject(self.spec, self.status_in)
        if running is None or state.canary is None or state.canary.revision != running.candidate:
            return state, CONTINUE, None, {}
        assert self.spec.slo is not None
        objectives = slo_settings.objectives(self.spec.slo)
        conclude = bake_verdict if running.kind == "bake" else verdict_of
        after, verdict = analyse(
            running.state, running.policy, objectives, self.o.now, self.o.windows, conclude=conclude
        )
        counted = {
            kind: getattr(after, kind.lower()) - getattr(running.state, kind.lower())
            for kind in ("Passed", "Failed", "Inconclusive", "Errored")
        }
        what = "canary" if running.kind == "canary" else "baking revision"
        for failure in after.failures[len(after.failures) - counted["Failed"] :] if counted["Failed"] else ():
            self.events.append(
                Event(
                    "Warning",
                    "AnalysisWindowFailed",
                    f"{what} {running.candidate}: {failure.get('message', '')}",
                )
            )
        canary = replace(state.canary, analysis=after.to_status())
        ready_at = canary.promoted_at if running.kind == "bake" else canary.ready_at
        problem = unhealthy(self.o.pods, running.candidate, ready_at, UNHEALTHY_GRACE_S, self.o.now)
        if problem is None and running.kind == "canary":
            regression = adapter_status.regression(
                self.o.adapters, self.o.pods, running.candidate, running.baseline
            )
            if regression:
                problem = Problem("AdapterLoadFailed", regression)
        return replace(state, canary=canary), verdict, problem, counted

    def _plan_rollout(
        self, state: RolloutState, target: Revision, verdict: Verdict, problem: Problem | None
    ) -> RolloutPlan:
        o, spec = self.o, self.spec
        stable_state = DeploymentState.of(o.stable) if o.stable else None
        canary_state = DeploymentState.of(o.canary) if o.canary else None
        canary_ready = (
            canary_state.ready_replicas
            if canary_state and state.canary and canary_state.revision == state.canary.revision
            else 0
        )
        if state.canary is not None and state.canary.phase == "Starting" and problem is None:
            problem = unhealthy(o.pods, state.canary.revision, None, UNHEALTHY_GRACE_S, o.now)
        if problem is None and not o.measuring and spec.slo is not None:
            verdict = Verdict("Hold", "AnalysisUnavailable", "the operator runs without --prometheus-url")
        return plan_rollout(
            state,
            RolloutInputs(
                target=target.hash,
                strategy=spec.rollout.strategy,
                now=o.now,
                stable_replicas=stable_state.desired if stable_state else spec.replicas,
                canary_replicas=spec.rollout.canary_replicas,
                canary_ready=canary_ready,
                stable_done=stable_state is not None
                and state.stable is not None
                and stable_state.settled_at(state.stable),
                startup_timeout_s=spec.runtime.startup_timeout_seconds,
                analysed=spec.slo is not None,
                verdict=verdict,
                retry_token=(o.md["metadata"].get("annotations") or {}).get(RETRY_ANNOTATION),
                bake=spec.slo is not None and slo_settings.bake_seconds(spec.slo) > 0,
                unhealthy=problem,
                canary_unschedulable=unschedulable(o.pods, CANARY, state.canary.revision)
                if state.canary
                else None,
                stable_unschedulable=unschedulable(o.pods, STABLE, state.stable) if state.stable else None,
                stable_exists=o.stable is not None,
            ),
        )

    def _pods_not_waiting_for_capacity(self, state: RolloutState) -> list[Mapping[str, Any]]:
        """The pods whose problems make the ModelDeployment Degraded: not those of a canary waiting for room, nor
        the stable track's new pods while the canary hands its room over (status.canary says so)."""
        canary = state.canary
        waiting: set[str] = set()
        if canary is not None and canary.reason == WAITING_FOR_CAPACITY:
            waiting.add(CANARY)
        if canary is not None and canary.phase == PROMOTING and canary.handed_over:
            waiting.add(STABLE)
        return [
            pod
            for pod in self.o.pods
            if (pod["metadata"].get("labels") or {}).get(TRACK_LABEL) not in waiting
            or why_unschedulable(pod) is None
        ]

    def _scale(self, plan: RolloutPlan) -> Scaling:
        o, spec = self.o, self.spec
        # while a canary runs, promoted or not, the stable track keeps at least what it had when it began: the
        # canary takes part of the traffic, so the stable pods' queues read low
        canary = plan.state.canary
        floor = canary.baseline_replicas if canary and canary.phase != BAKING else 0
        settle = spec.autoscaling.metric_window_seconds  # a pod Ready for less has no queue samples yet
        stable_state = DeploymentState.of(o.stable) if o.stable else None
        return scale(
            spec,
            self.status_in,
            count_pods(o.pods, STABLE, settle_s=settle, now=o.now),
            stable_state.desired if stable_state else None,
            floor,
            o.now,
            o.queue,
            o.measuring,
            o.routers,
        )

    # ---- children ------------------------------------------------------------------------------------

    def _known_revisions(self, target: Revision) -> dict[str, Revision]:
        """Every revision this ModelDeployment can still run: those its ConfigMaps keep, and the spec's."""
        revisions = {}
        for config_map in self._revision_config_maps():
            if revision := revision_from_config_map(config_map):
                revisions[revision.hash] = revision
        revisions[target.hash] = target
        return revisions

    def _revision_config_maps(self) -> list[Mapping[str, Any]]:
        return [
            cm
            for cm in self.o.config_maps
            if is_ours(cm, self.owner.uid) and REVISION_LABEL in (cm["metadata"].get("labels") or {})
        ]

    def _named(self, name: str) -> Mapping[str, Any] | None:
        return next((cm for cm in self.o.config_maps if cm["metadata"]["name"] == name), None)

    def _config_map(self, revision: Revision) -> None:
        desired = revision_config_map(self.owner, revision)
        if self._named(desired["metadata"]["name"]) is None:
            self.writes.append(Write("create", desired, None))
        # immutable: an existing one holds exactly this revision's settings (its name is their hash)

    def _adapters_config_map(self) -> None:
        """The adapter list the pods watch: not part of any revision, so it changes in place."""
        desired = adapters_config_map(self.owner, self.spec)
        observed = self._named(desired["metadata"]["name"])
        if observed is None:
            self.writes.append(Write("create", desired, None))
        elif not in_step(desired, observed):
            self.writes.append(Write("apply", desired, observed))

    def _service(self) -> None:
        routed = self.spec.routing is not None
        desired, observed = service(self.owner, routed=routed), self.o.service
        if observed is None:
            self.writes.append(Write("create", desired, None))
            return
        # a selector must match exactly: one key too many selects nothing the operator means
        selector = observed["spec"].get("selector")
        retarget = selector == service(self.owner, routed=not routed)["spec"]["selector"]
        if retarget or selector != desired["spec"]["selector"] or not in_step(desired, observed):
            self.writes.append(Write("apply", desired, observed))
            if retarget:
                pods = "the router's pods" if routed else "the runtime pods"
                self.events.append(Event("Normal", "ServiceRetargeted", f"the Service now selects {pods}"))
            else:
                self.events.append(
                    Event("Normal", "DriftRepaired", "put back Service fields changed outside the operator")
                )

    def _routing(self, desired: Sequence[Mapping[str, Any]]) -> None:
        """spec.routing's children in step; once it is unset, the router's objects deleted (the Service
        named like the ModelDeployment then selects the runtime pods again)."""
        routing = self.spec.routing
        for obj in desired:
            kind = obj["kind"]
            observed = self.o.routing.get((kind, obj["metadata"]["name"]))
            if observed is None:
                self.writes.append(Write("create", obj, None))
                if kind == "Deployment" and routing is not None:
                    message = f"created the router ({routing.strategy}, {routing.replicas} replicas)"
                    self.events.append(Event("Normal", "RouterCreated", message))
            elif kind == "Deployment":
                if plan_deployment(obj, observed).action != "keep":
                    self.writes.append(Write("apply", obj, observed))
            elif not in_step(obj, observed):
                self.writes.append(Write("apply", obj, observed))
        wanted = {(obj["kind"], obj["metadata"]["name"]) for obj in desired}
        for key in reversed(routing_names(self.owner.name)):
            observed = self.o.routing.get(key)
            if key not in wanted and observed is not None and is_ours(observed, self.owner.uid):
                self.writes.append(Write("delete", None, observed))
                if key[0] == "Deployment":
                    self.events.append(
                        Event("Normal", "RouterRemoved", "removed the router: spec.routing is unset")
                    )

    def _deployment(
        self,
        revision: Revision,
        track: str,
        observed: Mapping[str, Any] | None,
        replicas: int,
        scaling_reason: str | None = None,
    ) -> None:
        desired = deployment(self.owner, self.spec, revision, track, replicas)
        plan = plan_deployment(desired, observed)
        what = "canary Deployment" if track == CANARY else "Deployment"
        if plan.action == "create":
            self.writes.append(Write("create", desired, None))
            if track == STABLE:
                self.events.append(
                    Event(
                        "Normal",
                        "Created",
                        f"created the {what} at revision {revision.hash} with {replicas} replicas",
                    )
                )
            return
        if plan.action == "keep":
            return
        if plan.scale and track == STABLE:
            why = f": {scaling_reason}" if scaling_reason else ""
            self.events.append(
                Event("Normal", "Scaled", f"scaled from {plan.previous_replicas} to {replicas} replicas{why}")
            )
        if plan.drift:
            self.events.append(
                Event("Normal", "DriftRepaired", f"put back {what} fields changed outside the operator")
            )
        self.writes.append(Write("apply", desired, observed))

    def _disruption_budgets(self, tracks: Sequence[str]) -> Mapping[str, Any] | None:
        """A budget for each of the running tracks that needs one (render.disruption_budget), kept in step; ours
        deleted once its track needs none. A namesake of someone else where a budget is wanted: returned."""
        wanted = {
            budget["metadata"]["name"]: budget
            for track in tracks
            if (budget := disruption_budget(self.owner, self.spec, track)) is not None
        }
        observed = {budget["metadata"]["name"]: budget for budget in self.o.budgets}
        for name, desired in wanted.items():
            found = observed.get(name)
            if found is None:
                self.writes.append(Write("create", desired, None))
            elif not is_ours(found, self.owner.uid):
                return found
            elif not in_step(desired, found):
                self.writes.append(Write("apply", desired, found))
        for name, found in observed.items():
            if name not in wanted and is_ours(found, self.owner.uid):
                self.writes.append(Write("delete", None, found))
        return None

    def _prune_config_maps(self, keep: set[str]) -> None:
        history = sorted(
            (
                cm
                for cm in self._revision_config_maps()
                if cm["metadata"]["labels"][REVISION_LABEL] not in keep
            ),
            key=lambda cm: cm["metadata"].get("creationTimestamp") or "",
            reverse=True,
        )
        for config_map in history[self.spec.rollout.revision_history_limit :]:
            self.writes.append(Write("delete", None, config_map))

    # ---- status --------------------------------------------------------------------------------------

    def _address(self) -> dict[str, Any]:
        host = f"{service_name(self.owner.name)}.{self.owner.namespace}.{SERVICE_DOMAIN}"
        return {"url": f"http://{host}", "model": self.spec.model.name or self.owner.name}

    def _next_look(self, state: RolloutState, *due: float | None) -> float:
        now = self.o.now
        times = [t - now for t in due if t is not None]
        canary = state.canary
        if canary is not None and canary.phase == "Starting" and canary.reason != WAITING_FOR_CAPACITY:
            # (a canary waiting for room has no deadline: its pods' events wake the pass once they are placed)
            times.append(startup_clock(canary) + self.spec.runtime.startup_timeout_seconds + 1 - now)
        if canary is not None and canary.phase in ("Analyzing", "Holding", BAKING):
            times.append(UNHEALTHY_GRACE_S)  # pods' health; measurements wake the pass themselves
        return max(0.0, min([RESYNC_SECONDS, *times]))


def _conflict(obj: Mapping[str, Any]) -> Problem:
    return Problem("NameConflict", conflict_message(obj))
