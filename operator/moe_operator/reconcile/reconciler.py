"""One reconcile pass over a ModelDeployment: observe, decide, write, report.

Level-triggered: every pass recomputes everything from the ModelDeployment and its children as the watch cache
holds them, so a restarted operator simply carries on. The decisions are pure functions (policy, rollout,
autoscaling, analysis, status); this module only gathers their inputs and carries out their outputs. The pass
returns when to look again (autoscaling and analysis intervals, the canary's startup deadline, a resync).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from kubernetes.client.exceptions import ApiException

from moe_operator.decisions.adapters import AdapterReader
from moe_operator.decisions.events import Event, condition_flips
from moe_operator.decisions.naming import (
    CANARY,
    MODEL_DEPLOYMENT_LABEL,
    RETRY_ANNOTATION,
    REVISION_LABEL,
    STABLE,
    Owner,
    deployment_name,
    is_router_pod,
    selector_labels,
    selector_string,
    service_name,
)
from moe_operator.decisions.plan import in_step, plan_deployment
from moe_operator.decisions.pods import count_pods, pod_problem
from moe_operator.decisions.policy import Policy, violations
from moe_operator.decisions.render import (
    Revision,
    adapters_config_map,
    deployment,
    render_revision,
    revision_config_map,
    revision_from_config_map,
    service,
)
from moe_operator.decisions.rollout import CONTINUE, RolloutInputs, RolloutState, plan_rollout
from moe_operator.decisions.spec import InvalidSpec, ModelDeploymentSpec, parse_spec
from moe_operator.decisions.status import DeploymentState, Problem, StatusInputs, compute_status
from moe_operator.io.children import NameConflict, Writer, WriteRefused, is_ours
from moe_operator.io.metrics import OperatorMetrics
from moe_operator.machinery.cache import ObjectCache
from moe_operator.machinery.errors import StaleRead
from moe_operator.reconcile.canary import Analyzer
from moe_operator.reconcile.routing import ensure_routing
from moe_operator.reconcile.scaling import Scaler
from moe_operator.timestamps import now_time

log = logging.getLogger(__name__)

RESYNC_SECONDS = 60.0
SERVICE_DOMAIN = "svc.cluster.local"


@dataclass(frozen=True)
class Result:
    requeue_after: float | None = None


class Reconciler:
    def __init__(
        self,
        kube,
        cache: ObjectCache,
        recorder,
        policy: Callable[[], Policy] = Policy,
        scaler=None,
        analyzer=None,
        clock: Callable[[], float] = time.time,
        adapters=None,
        metrics: OperatorMetrics | None = None,
    ) -> None:
        self._kube, self._cache, self._recorder = kube, cache, recorder
        self._policy = policy
        self._metrics = metrics or OperatorMetrics()
        self._scaler = scaler or Scaler(metrics=self._metrics)
        self._analyzer = analyzer or Analyzer(metrics=self._metrics)
        self._adapters = adapters or AdapterReader()
        self._clock = clock

    def reconcile(self, namespace: str, name: str) -> Result:
        md = self._cache.get("ModelDeployment", namespace, name)
        if md is None or md["metadata"].get("deletionTimestamp"):
            return Result()  # the garbage collector removes the children
        return _Pass(self, md, self._clock()).run()


class _Pass:
    """The state of one pass; `run` does it."""

    def __init__(self, reconciler: Reconciler, md: dict[str, Any], now: float) -> None:
        self.r = reconciler
        self.md = md
        self.now = now
        self.owner = Owner.of(md)
        self.status_in: Mapping[str, Any] = md.get("status") or {}
        self.events: list[Event] = []
        self.writer = Writer(reconciler._kube, reconciler._cache, self.owner.uid)
        ns, md_name = self.owner.namespace, self.owner.name
        cache = reconciler._cache
        self.stable = cache.get("Deployment", ns, deployment_name(md_name, STABLE))
        self.canary = cache.get("Deployment", ns, deployment_name(md_name, CANARY))
        self.service = cache.get("Service", ns, service_name(md_name))
        pods = cache.select("Pod", ns, selector_labels(md_name))
        self.pods = [p for p in pods if not is_router_pod(p)]
        self.router_pods = [p for p in pods if is_router_pod(p)]
        self.config_maps = [
            cm
            for cm in cache.select("ConfigMap", ns, {MODEL_DEPLOYMENT_LABEL: md_name})
            if REVISION_LABEL in (cm["metadata"].get("labels") or {})
        ]

    # ---- the pass ------------------------------------------------------------------------------------

    def run(self) -> Result:
        try:
            spec = parse_spec(self.md["spec"])
        except InvalidSpec as err:
            return self._refuse(Problem("InvalidSpec", str(err)))
        problems = violations(spec, self.r._policy())
        if problems:
            return self._refuse(
                Problem("PolicyViolation", "the operator policy refuses: " + "; ".join(problems))
            )
        try:
            return self._converge(spec)
        except NameConflict as conflict:
            return self._refuse(Problem("NameConflict", str(conflict)))
        except WriteRefused as refused:
            self._refuse(refused.problem)
            raise

    def _converge(self, spec: ModelDeploymentSpec) -> Result:
        target = render_revision(self.owner.name, spec)
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
        for observed in (self.stable, self.canary, self.service):
            self.writer.check(observed)

        stable_state = DeploymentState.of(self.stable) if self.stable else None
        canary_state = DeploymentState.of(self.canary) if self.canary else None
        analysis_due = None
        verdict = CONTINUE
        if (
            state.canary is not None
            and state.canary.phase in ("Analyzing", "Holding")
            and spec.slo is not None
        ):
            canary, verdict, analysis_due = self.r._analyzer.analyse(self.md, spec, state.canary, self.now)
            state = replace(state, canary=canary)
        canary_ready = (
            canary_state.ready_replicas
            if canary_state and state.canary and canary_state.revision == state.canary.revision
            else 0
        )
        plan = plan_rollout(
            state,
            RolloutInputs(
                target=target.hash,
                strategy=spec.rollout.strategy,
                now=self.now,
                stable_replicas=stable_state.desired if stable_state else spec.replicas,
                canary_replicas=spec.rollout.canary_replicas,
                canary_ready=canary_ready,
                stable_done=stable_state is not None
                and state.stable is not None
                and stable_state.settled_at(state.stable),
                startup_timeout_s=spec.runtime.startup_timeout_seconds,
                analysed=spec.slo is not None,
                verdict=verdict,
                retry_token=(self.md["metadata"].get("annotations") or {}).get(RETRY_ANNOTATION),
            ),
        )
        # while a canary runs, promoted or not, the stable track keeps at least what it had when it began: the
        # canary takes part of the traffic, so the stable pods' queues read low
        floor = plan.state.canary.baseline_replicas if plan.state.canary else 0
        settle = spec.autoscaling.metric_window_seconds  # a pod Ready for less has no queue samples yet
        scaling = self.r._scaler.scale(
            self.md,
            spec,
            count_pods(self.pods, STABLE, settle_s=settle, now=self.now),
            stable_state.desired if stable_state else None,
            floor,
            self.now,
        )
        adapters = self.r._adapters.report(self.md, spec, self.pods, self.now)
        self.events.extend(plan.events)
        self.events.extend(scaling.events)
        self.events.extend(adapters.events)
        self._count_decisions(plan)
        stable_revision = revisions[plan.stable_revision]
        canary_revision = revisions[plan.canary_revision] if plan.canary_revision else None

        for revision in {
            stable_revision.hash: stable_revision,
            **({canary_revision.hash: canary_revision} if canary_revision else {}),
        }.values():
            self._ensure_config_map(revision)
        self._ensure_adapters_config_map(spec)
        self._ensure_service(spec)
        self.events.extend(ensure_routing(self.writer, self.r._cache, self.owner, spec))
        stable_now = self._ensure_deployment(
            spec, stable_revision, STABLE, self.stable, scaling.replicas, scaling.reason
        )
        canary_now = None
        if canary_revision is not None:
            canary_now = self._ensure_deployment(
                spec, canary_revision, CANARY, self.canary, spec.rollout.canary_replicas
            )
        elif self.canary is not None:
            self.writer.delete(self.canary)
        self._prune_config_maps(
            spec, {stable_revision.hash, target.hash, *([canary_revision.hash] if canary_revision else [])}
        )

        rejected = plan.state.is_rejected(target.hash)
        inputs = StatusInputs(
            generation=self.md["metadata"].get("generation", 0),
            selector=selector_string(self.owner.name),
            target_revision=target.hash,
            stable_revision=plan.stable_revision,
            desired_replicas=scaling.replicas,
            stable=DeploymentState.of(stable_now) if stable_now else None,
            canary=DeploymentState.of(canary_now) if canary_now else None,
            rollout=plan.state.to_status(),
            canary_phase=plan.state.canary.phase if plan.state.canary else None,
            pod_problem=pod_problem([*self.pods, *self.router_pods]),
            rejected_target=Problem(
                rejected.reason,
                f"revision {rejected.revision} was rolled back: {rejected.message}; change the spec, or annotate "
                f"the ModelDeployment with {RETRY_ANNOTATION}=<any new value> to analyse it again",
            )
            if rejected
            else None,
            extra={**scaling.status, **adapters.status, **self._address(spec)},
            extra_conditions=(*scaling.conditions, *adapters.conditions),
        )
        self._write_status(inputs)
        return Result(self._next_look(spec, plan.state, scaling.next_due, analysis_due, adapters.next_due))

    # ---- children ------------------------------------------------------------------------------------

    def _known_revisions(self, target: Revision) -> dict[str, Revision]:
        """Every revision this ModelDeployment can still run: those its ConfigMaps keep, and the spec's."""
        revisions = {}
        for config_map in self.config_maps:
            if is_ours(config_map, self.owner.uid) and (revision := revision_from_config_map(config_map)):
                revisions[revision.hash] = revision
        revisions[target.hash] = target
        return revisions

    def _ensure_config_map(self, revision: Revision) -> None:
        desired = revision_config_map(self.owner, revision)
        observed = next(
            (cm for cm in self.config_maps if cm["metadata"]["name"] == desired["metadata"]["name"]), None
        )
        if observed is None:
            observed = self.r._cache.get("ConfigMap", self.owner.namespace, desired["metadata"]["name"])
        self.writer.check(observed)
        if observed is None:
            self.writer.create(desired)
        # immutable: an existing one holds exactly this revision's settings (its name is their hash)

    def _ensure_adapters_config_map(self, spec: ModelDeploymentSpec) -> None:
        """The adapter list the pods watch: not part of any revision, so it changes in place."""
        desired = adapters_config_map(self.owner, spec)
        observed = self.r._cache.get("ConfigMap", self.owner.namespace, desired["metadata"]["name"])
        self.writer.check(observed)
        if observed is None:
            self.writer.create(desired)
        elif not in_step(desired, observed):
            self.writer.apply(desired, observed)

    def _ensure_service(self, spec: ModelDeploymentSpec) -> None:
        routed = spec.routing is not None
        desired = service(self.owner, routed=routed)
        if self.service is None:
            self.writer.create(desired)
            return
        # a selector must match exactly: one key too many selects nothing the operator means
        retarget = (
            self.service["spec"].get("selector") == service(self.owner, routed=not routed)["spec"]["selector"]
        )
        if (
            retarget
            or self.service["spec"].get("selector") != desired["spec"]["selector"]
            or not in_step(desired, self.service)
        ):
            self.writer.apply(desired, self.service)
            if retarget:
                pods = "the router's pods" if routed else "the runtime pods"
                self.events.append(Event("Normal", "ServiceRetargeted", f"the Service now selects {pods}"))
            else:
                self.events.append(
                    Event("Normal", "DriftRepaired", "put back Service fields changed outside the operator")
                )

    def _ensure_deployment(
        self,
        spec: ModelDeploymentSpec,
        revision: Revision,
        track: str,
        observed: dict[str, Any] | None,
        replicas: int,
        scaling_reason: str | None = None,
    ) -> dict[str, Any]:
        desired = deployment(self.owner, spec, revision, track, replicas)
        plan = plan_deployment(desired, observed)
        what = "canary Deployment" if track == CANARY else "Deployment"
        if plan.action == "create":
            created = self.writer.create(desired)
            if track == STABLE:
                self.events.append(
                    Event(
                        "Normal",
                        "Created",
                        f"created the {what} at revision {revision.hash} with {replicas} replicas",
                    )
                )
            return created
        if plan.action == "keep":
            return observed
        if plan.scale and track == STABLE:
            why = f": {scaling_reason}" if scaling_reason else ""
            message = f"scaled from {plan.previous_replicas} to {replicas} replicas{why}"
            self.events.append(Event("Normal", "Scaled", message))
        if plan.drift:
            self.events.append(
                Event("Normal", "DriftRepaired", f"put back {what} fields changed outside the operator")
            )
        return self.writer.apply(desired, observed)

    def _prune_config_maps(self, spec: ModelDeploymentSpec, keep: set[str]) -> None:
        ours = [cm for cm in self.config_maps if is_ours(cm, self.owner.uid)]
        history = sorted(
            (cm for cm in ours if cm["metadata"]["labels"][REVISION_LABEL] not in keep),
            key=lambda cm: cm["metadata"].get("creationTimestamp") or "",
            reverse=True,
        )
        for config_map in history[spec.rollout.revision_history_limit :]:
            self.writer.delete(config_map)

    def _count_decisions(self, plan) -> None:
        for event in plan.events:
            if event.reason == "RolledBack":
                self.r._metrics.rollbacks.labels(plan.state.rejected[-1].reason).inc()
            elif event.reason == "Promoted":
                self.r._metrics.promotions.inc()

    # ---- status --------------------------------------------------------------------------------------

    def _address(self, spec: ModelDeploymentSpec) -> dict[str, Any]:
        host = f"{service_name(self.owner.name)}.{self.owner.namespace}.{SERVICE_DOMAIN}"
        return {"url": f"http://{host}", "model": spec.model.name or self.owner.name}

    def _refuse(self, problem: Problem) -> Result:
        """Reports why nothing was applied, leaving the children as they are."""
        spec_revision = self.status_in.get("currentRevision") or ""
        inputs = StatusInputs(
            generation=self.md["metadata"].get("generation", 0),
            selector=selector_string(self.owner.name),
            target_revision=spec_revision,
            stable_revision=self.status_in.get("stableRevision"),
            desired_replicas=(self.stable or {}).get("spec", {}).get("replicas", 0),
            stable=DeploymentState.of(self.stable)
            if self.stable and is_ours(self.stable, self.owner.uid)
            else None,
            rollout=RolloutState.from_status(self.status_in).to_status(),
            refusal=problem,
        )
        self._write_status(inputs)
        return Result()

    def _write_status(self, inputs: StatusInputs) -> None:
        status = compute_status(inputs, self.status_in, now_time())
        if status != self.status_in:
            try:
                updated = self.r._kube.replace_status(self.md, status)
            except ApiException as err:
                if err.status == 409:
                    raise StaleRead("the ModelDeployment changed since it was read") from err
                if err.status == 404:
                    return
                raise
            self.r._cache.put(updated)
            log.info(
                "%s/%s: phase %s, revision %s (stable %s)",
                self.owner.namespace, self.owner.name, status["phase"], inputs.target_revision, inputs.stable_revision,
            )  # fmt: skip
        for event in [*self.events, *condition_flips(self.status_in, status)]:
            self.r._recorder.post(self.md, event)

    def _next_look(self, spec: ModelDeploymentSpec, state: RolloutState, *due: float | None) -> float:
        times = [t - self.now for t in due if t is not None]
        canary = state.canary
        if canary is not None and canary.phase == "Starting":
            times.append(canary.started_at + spec.runtime.startup_timeout_seconds + 1 - self.now)
        return max(0.0, min([RESYNC_SECONDS, *times]))
