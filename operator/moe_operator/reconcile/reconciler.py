"""One reconcile pass over a ModelDeployment: observe, decide, record, act.

    observe   the ModelDeployment and its children from the watch cache, the newest measurements from the
              measurement loop (never Prometheus itself: a pass does not wait on it)
    decide    decisions/converge.py, pure: the status, the child writes, the Events
    record    the status, written first: a 409 means someone changed the ModelDeployment since it was read,
              and the pass starts again from fresh reads with nothing done
    act       the child writes, then the Events; a write that fails leaves the decision recorded, so the retried
              pass carries it out instead of deciding again (a scale-in is never repeated, a promotion never
              undone)

The pass returns when to look again (the startup deadline, a resync); measurements wake it themselves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from kubernetes.client.exceptions import ApiException

from moe_operator.decisions.converge import Decision, Observed, decide
from moe_operator.decisions.events import condition_flips
from moe_operator.decisions.images import DEFAULT as DEFAULT_IMAGES
from moe_operator.decisions.images import EngineImages
from moe_operator.decisions.measurements import subject
from moe_operator.decisions.naming import (
    CANARY,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    STABLE,
    Owner,
    deployment_name,
    is_router_pod,
    selector_labels,
    service_name,
)
from moe_operator.decisions.policy import Policy
from moe_operator.decisions.routing import routing_names
from moe_operator.decisions.spec import InvalidSpec, parse_spec
from moe_operator.decisions.status import Problem
from moe_operator.io.children import NameConflict, Writer, WriteRefused
from moe_operator.io.metrics import OperatorMetrics
from moe_operator.machinery.cache import ObjectCache
from moe_operator.machinery.errors import StaleRead
from moe_operator.measure.store import Measurements

log = logging.getLogger(__name__)


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
        measurements: Measurements | None = None,
        measuring: bool = False,
        clock: Callable[[], float] = time.time,
        metrics: OperatorMetrics | None = None,
        images: EngineImages = DEFAULT_IMAGES,
    ) -> None:
        """`measurements`: what the measurement loop read; `measuring`: whether there is a loop (a Prometheus)."""
        self._kube, self._cache, self._recorder = kube, cache, recorder
        self._policy = policy
        self._measurements = measurements or Measurements()
        self._measuring = measuring
        self._clock = clock
        self._metrics = metrics or OperatorMetrics()
        # (namespace, name) -> (generation, why): a retried pass keeps saying so instead of flapping back to
        # what it would be had the writes gone through
        self._refused: dict[tuple[str, str], tuple[int, Problem]] = {}
        self._images = images

    def reconcile(self, namespace: str, name: str) -> Result:
        md = self._cache.get("ModelDeployment", namespace, name)
        if md is None or md["metadata"].get("deletionTimestamp"):
            self._refused.pop((namespace, name), None)
            return Result()  # the garbage collector removes the children
        observed = self._observe(md)
        decision = decide(observed)
        updated = self._record(md, decision)
        try:
            self._act(md, decision)
        except (NameConflict, WriteRefused) as failed:
            problem = failed.problem if isinstance(failed, WriteRefused) else _name_conflict(failed)
            self._refused[(namespace, name)] = (_generation(md), problem)
            refusal = decide(replace(observed, md=updated or md, write_refused=problem))
            self._record(updated or md, refusal)
            self._post(md, replace(refusal, events=()))  # what was decided did not happen: only the flips
            if isinstance(failed, WriteRefused):
                raise
            return Result()
        if observed.write_refused is not None:  # the writes went through this time
            self._refused.pop((namespace, name), None)
            decision = decide(replace(observed, md=updated or md, write_refused=None))
            self._record(updated or md, decision)
        self._count(md, decision)
        self._post(md, decision)
        return Result(decision.requeue_after)

    def _post(self, md: Mapping[str, Any], decision: Decision) -> None:
        """The decision's Events, and one per condition that flipped since the pass began."""
        for event in [*decision.events, *condition_flips(md.get("status") or {}, decision.status)]:
            self._recorder.post(md, event)

    def _observe(self, md: Mapping[str, Any]) -> Observed:
        meta = md["metadata"]
        ns, name = meta["namespace"], meta["name"]
        key = (ns, name)
        windows: Mapping[int, Any] = {}
        try:
            running = subject(parse_spec(md.get("spec") or {}), md.get("status") or {})
        except (InvalidSpec, KeyError, TypeError, ValueError):
            running = None
        if running is not None:
            windows = self._measurements.windows(key, running.candidate)
        cache = self._cache
        pods = cache.select("Pod", ns, selector_labels(name))
        return Observed(
            md=md,
            now=self._clock(),
            policy=self._policy(),
            stable=cache.get("Deployment", ns, deployment_name(name, STABLE)),
            canary=cache.get("Deployment", ns, deployment_name(name, CANARY)),
            service=cache.get("Service", ns, service_name(name)),
            pods=[p for p in pods if not is_router_pod(p)],
            router_pods=[p for p in pods if is_router_pod(p)],
            routing={
                (kind, child): found
                for kind, child in routing_names(name)
                if (found := cache.get(kind, ns, child)) is not None
            },
            config_maps=[
                cm
                for cm in cache.select("ConfigMap", ns, {MANAGED_BY_LABEL: MANAGED_BY})
                if cm["metadata"]["name"].startswith(f"{name}-")
            ],
            budgets=[
                budget
                for track in (STABLE, CANARY)
                if (budget := cache.get("PodDisruptionBudget", ns, deployment_name(name, track))) is not None
            ],
            queue=self._measurements.queue(key),
            adapters=self._measurements.adapters(key),
            routers=self._measurements.routers(key),
            windows=windows,
            measuring=self._measuring,
            write_refused=self._still_refused(key, md),
            images=self._images,
        )

    def _still_refused(self, key: tuple[str, str], md: Mapping[str, Any]) -> Problem | None:
        generation, problem = self._refused.get(key, (None, None))
        return problem if generation == _generation(md) else None

    def _record(self, md: Mapping[str, Any], decision: Decision) -> dict[str, Any] | None:
        """Writes the status when it changed; the ModelDeployment as the API server returned it."""
        if decision.status == (md.get("status") or {}):
            return None
        try:
            updated = self._kube.replace_status(md, decision.status)
        except ApiException as err:
            if err.status == 409:
                raise StaleRead("the ModelDeployment changed since it was read") from err
            if err.status == 404:
                return None
            raise
        self._cache.put(updated)
        status = decision.status
        log.info(
            "%s/%s: phase %s, revision %s (stable %s)",
            md["metadata"]["namespace"], md["metadata"]["name"], status.get("phase"),
            status.get("currentRevision"), status.get("stableRevision"),
        )  # fmt: skip
        return updated

    def _act(self, md: Mapping[str, Any], decision: Decision) -> None:
        writer = Writer(self._kube, self._cache, Owner.of(md).uid)
        for write in decision.writes:
            if write.action == "create":
                writer.create(write.desired)
            elif write.action == "apply":
                writer.apply(write.desired, write.observed)
            else:
                writer.delete(write.observed)

    def _count(self, md: Mapping[str, Any], decision: Decision) -> None:
        metrics, meta = self._metrics, md["metadata"]
        for kind, new in decision.outcomes.items():
            if new > 0:
                metrics.canary_outcomes.labels(kind).inc(new)
        if decision.rollout is not None:
            for event in decision.rollout.events:
                if event.reason == "RolledBack":
                    metrics.rollbacks.labels(decision.rollout.state.rejected[-1].reason).inc()
                elif event.reason == "Promoted":
                    metrics.promotions.inc()
        scaling = decision.scaling
        if scaling is not None and scaling.direction is not None:
            metrics.autoscaler_decisions.labels(scaling.direction).inc()
            metrics.desired_replicas.labels(meta["namespace"], meta["name"]).set(scaling.replicas)
            metrics.current_replicas.labels(meta["namespace"], meta["name"]).set(scaling.current)


def _generation(md: Mapping[str, Any]) -> int:
    return md["metadata"].get("generation", 0)


def _name_conflict(conflict: NameConflict) -> Problem:
    return Problem("NameConflict", str(conflict))
