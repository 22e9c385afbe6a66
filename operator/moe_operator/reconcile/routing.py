"""Keeps the children of spec.routing in step: creates what is missing, applies what differs, and deletes the
router's objects once spec.routing is gone (the Service named like the ModelDeployment then selects the
runtime pods again, reconciler._ensure_service)."""

from __future__ import annotations

from moe_operator.decisions.events import Event
from moe_operator.decisions.naming import CANARY, STABLE, Owner, router_name, track_service_name
from moe_operator.decisions.plan import in_step, plan_deployment
from moe_operator.decisions.routing import routing_children
from moe_operator.decisions.spec import ModelDeploymentSpec
from moe_operator.io.children import Writer, is_ours
from moe_operator.machinery.cache import ObjectCache


def routing_names(md_name: str) -> list[tuple[str, str]]:
    """(kind, name) of every object spec.routing may add."""
    router = router_name(md_name)
    return [
        ("ServiceAccount", router),
        ("Role", router),
        ("RoleBinding", router),
        *(("Service", track_service_name(md_name, track)) for track in (STABLE, CANARY)),
        ("Deployment", router),
    ]


def ensure_routing(
    writer: Writer, cache: ObjectCache, owner: Owner, spec: ModelDeploymentSpec
) -> list[Event]:
    events = []
    desired = routing_children(owner, spec) if spec.routing is not None else []
    for obj in desired:
        kind, name = obj["kind"], obj["metadata"]["name"]
        observed = cache.get(kind, owner.namespace, name)
        writer.check(observed)
        if observed is None:
            writer.create(obj)
            if kind == "Deployment":
                message = f"created the router ({spec.routing.strategy}, {spec.routing.replicas} replicas)"
                events.append(Event("Normal", "RouterCreated", message))
        elif kind == "Deployment":
            if plan_deployment(obj, observed).action != "keep":
                writer.apply(obj, observed)
        elif not in_step(obj, observed):
            writer.apply(obj, observed)
    wanted = {(obj["kind"], obj["metadata"]["name"]) for obj in desired}
    for kind, name in reversed(routing_names(owner.name)):
        observed = cache.get(kind, owner.namespace, name)
        if (kind, name) not in wanted and observed is not None and is_ours(observed, owner.uid):
            writer.delete(observed)
            if kind == "Deployment":
                events.append(Event("Normal", "RouterRemoved", "removed the router: spec.routing is unset"))
    return events
