"""One reconcile of a ModelDeployment: read what is there, apply what should be, record the status.

Level-triggered: every pass recomputes the desired children from the ModelDeployment as it is now and
compares them with the cluster, so a restarted operator simply carries on.
"""

from __future__ import annotations

import json
import logging
import threading
import zlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from moe_operator.events import Event, events_for
from moe_operator.kube import Kube
from moe_operator.naming import Owner, selector_string
from moe_operator.plan import DeploymentPlan, in_step, plan_deployment
from moe_operator.render import Children, render
from moe_operator.spec import parse_spec
from moe_operator.status import DeploymentState, compute_status

# Refusals that retrying cannot fix: the status reports them until the spec changes.
REFUSED = (400, 422)
LOCK_STRIPES = 64
MESSAGE_LIMIT = 1024
DEPLOYMENT_OUTCOME = {"create": "created", "update": "updated", "keep": "unchanged"}

logger = logging.getLogger(__name__)

Emit = Callable[[Mapping[str, Any], Event], None]


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Reconciler:
    def __init__(self, kube: Kube, emit: Emit, clock: Callable[[], str] = utc_now) -> None:
        self._kube = kube
        self._emit = emit
        self._clock = clock
        # Serialises the passes over one ModelDeployment (its own handlers and its Deployment's events run
        # concurrently), so that each reads what the previous one wrote; striped so that memory stays
        # bounded however many objects come and go.
        self._locks = [threading.Lock() for _ in range(LOCK_STRIPES)]

    def reconcile(self, namespace: str, name: str, full: bool = True) -> None:
        """One pass over the ModelDeployment as it is now. A partial pass (after a change to the Deployment,
        which is all that can have moved) leaves the ConfigMap and Service to the next full one."""
        with self._locks[zlib.crc32(f"{namespace}/{name}".encode()) % LOCK_STRIPES]:
            md = self._kube.get_model_deployment(namespace, name)
            if md is None or md["metadata"].get("deletionTimestamp"):
                return  # the garbage collector removes the children
            owner = Owner.of(md)
            children = render(owner, parse_spec(md["spec"]))
            observed = self._kube.read(children.deployment)
            plan = plan_deployment(children.deployment, observed)
            try:
                current = self._apply(children, plan, observed, full)
            except ApiException as err:
                if err.status not in REFUSED:
                    raise
                self._record(md, owner, children, DeploymentPlan("keep"), observed, refusal=_refusal(err))
                return
            self._record(md, owner, children, plan, current, refusal=None)

    def _apply(
        self, children: Children, plan: DeploymentPlan, observed: dict[str, Any] | None, full: bool
    ) -> dict[str, Any] | None:
        """Applies what differs from the cluster; returns the Deployment as it is afterwards."""
        settings_and_service = (children.config_map, children.service)
        if plan.action == "create":
            for desired in settings_and_service:
                self._kube.apply(desired)
        elif full:
            for desired in settings_and_service:
                if not in_step(desired, self._kube.read(desired)):
                    self._kube.apply(desired)
        return observed if plan.action == "keep" else self._kube.apply(children.deployment)

    def _record(
        self,
        md: Mapping[str, Any],
        owner: Owner,
        children: Children,
        plan: DeploymentPlan,
        current: Mapping[str, Any] | None,
        refusal: str | None,
    ) -> None:
        previous = md.get("status") or {}
        status = compute_status(
            generation=md["metadata"].get("generation", 0),
            desired_replicas=children.deployment["spec"]["replicas"],
            revision=children.revision,
            selector=selector_string(owner.name),
            deployment=DeploymentState.of(current) if current else None,
            previous=previous,
            now=self._clock(),
            apply_error=refusal,
        )
        status_changed = any(previous.get(key) != value for key, value in status.items())
        if status_changed:
            self._kube.patch_model_deployment_status(owner.namespace, owner.name, status)
        if status_changed or plan.action != "keep":
            logger.info(
                "reconciled %s/%s: phase %s at revision %s (Deployment %s)",
                owner.namespace, owner.name, status["phase"], children.revision, DEPLOYMENT_OUTCOME[plan.action],
            )  # fmt: skip
        for event in events_for(plan, children.deployment, previous, status):
            self._emit(md, event)


def _refusal(err: ApiException) -> str:
    try:
        detail = json.loads(err.body)["message"]
    except (TypeError, ValueError, KeyError):
        detail = err.body or err.reason
    return f"the API server refused a child object ({err.status}): {detail}"[:MESSAGE_LIMIT]
