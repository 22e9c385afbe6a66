"""Names DESIGN.md fixes: the API coordinates of ModelDeployment, its children's names and labels."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GROUP = "moedeploy.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"

FIELD_MANAGER = "moe-operator"

NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MODEL_DEPLOYMENT_LABEL = "moedeploy.dev/model-deployment"
REVISION_LABEL = "moedeploy.dev/revision"
# Which Deployment a pod belongs to: the stable one or the canary (their selectors must not overlap).
TRACK_LABEL = "moedeploy.dev/track"
STABLE, CANARY = "stable", "canary"
# What a pod does for its ModelDeployment: serve the model (the engine) or route requests to those that do.
COMPONENT_LABEL = "app.kubernetes.io/component"
ENGINE, ROUTER = "engine", "router"
# The pod template of a revision, kept on its ConfigMap so that the revision can be recreated exactly.
POD_TEMPLATE_ANNOTATION = "moedeploy.dev/pod-template"
# A user's request to analyse a rejected revision again: any new value (e.g. a timestamp) is one request.
RETRY_ANNOTATION = "moedeploy.dev/retry"

APP_NAME = "moe-runtime"
MANAGED_BY = "moe-operator"


@dataclass(frozen=True)
class Owner:
    """The ModelDeployment that its children point back to."""

    name: str
    namespace: str
    uid: str

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Owner:
        meta = body["metadata"]
        return cls(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def child_labels(md_name: str) -> dict[str, str]:
    return {
        NAME_LABEL: APP_NAME,
        INSTANCE_LABEL: md_name,
        MANAGED_BY_LABEL: MANAGED_BY,
        MODEL_DEPLOYMENT_LABEL: md_name,
    }


def selector_labels(md_name: str) -> dict[str, str]:
    """The pods of one ModelDeployment, at every revision and in both tracks (what the Service selects)."""
    return {NAME_LABEL: APP_NAME, MODEL_DEPLOYMENT_LABEL: md_name}


def track_selector_labels(md_name: str, track: str) -> dict[str, str]:
    """The pods of one of its Deployments (immutable once the Deployment exists)."""
    return {**selector_labels(md_name), TRACK_LABEL: track}


def selector_string(md_name: str) -> str:
    """The runtime pods of both tracks (status.selector, what the scale subresource hands an HPA): not the
    router's pods, which carry the ModelDeployment's labels too. `notin`, not `!=`: the scale subresource's
    selector is parsed into a LabelSelector (kubectl scale, the HPA), which has no `!=`."""
    plain = ",".join(f"{key}={value}" for key, value in selector_labels(md_name).items())
    return f"{plain},{COMPONENT_LABEL} notin ({ROUTER})"


def is_router_pod(pod: Mapping[str, Any]) -> bool:
    return ((pod.get("metadata") or {}).get("labels") or {}).get(COMPONENT_LABEL) == ROUTER


def deployment_name(md_name: str, track: str = STABLE) -> str:
    return md_name if track == STABLE else f"{md_name}-canary"


def service_name(md_name: str) -> str:
    return md_name


def router_name(md_name: str) -> str:
    """The router's Deployment, ServiceAccount, Role and RoleBinding."""
    return f"{md_name}-router"


def track_service_name(md_name: str, track: str) -> str:
    """The headless Service selecting one track's pods, whose EndpointSlices the router watches."""
    return f"{md_name}-{track}"


def revision_config_map_name(md_name: str, revision: str) -> str:
    return f"{md_name}-{revision}"


def adapters_config_map_name(md_name: str) -> str:
    return f"{md_name}-adapters"


def controlling_owner(obj: Mapping[str, Any]) -> str | None:
    """Name of the ModelDeployment that controls `obj`, if one does."""
    for ref in obj.get("metadata", {}).get("ownerReferences") or ():
        if (
            ref.get("controller")
            and ref.get("kind") == KIND
            and ref.get("apiVersion", "").startswith(f"{GROUP}/")
        ):
            return ref["name"]
    return None


def controller_of(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for ref in obj.get("metadata", {}).get("ownerReferences") or ():
        if ref.get("controller"):
            return ref
    return None


def is_ours(obj: Mapping[str, Any], uid: str) -> bool:
    """An object is ours only when its controlling ownerReference carries the ModelDeployment's uid."""
    owner = controller_of(obj)
    return owner is not None and owner.get("uid") == uid


def conflict_message(obj: Mapping[str, Any]) -> str:
    """Why a child's name cannot be used: it is taken by `obj`, which the ModelDeployment does not control."""
    meta = obj.get("metadata", {})
    owner = controller_of(obj)
    holder = (
        f"{owner['kind']} {owner['name']}" if owner else "no controller (made by hand or by another tool)"
    )
    return f"{obj.get('kind', 'object')} {meta.get('namespace')}/{meta.get('name')} already exists and belongs to {holder}; nothing was changed"
