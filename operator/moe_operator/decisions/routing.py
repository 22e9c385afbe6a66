"""The children of spec.routing: the router's Deployment and its identity, and one headless Service per track
whose EndpointSlices tell the router which pods are Ready in which track. Pure.

One router per ModelDeployment, not one per namespace: it scales, fails and rolls with the model it serves,
its settings (strategy, hold timeout, canary state) are that model's alone, and it is garbage-collected with
it through its ownerReference. The cost is a small pod (no torch, tens of MB) per ModelDeployment.

The router reads the API as its own ServiceAccount `<md>-router`, bound to a Role of the same name that lets
it list and watch the namespace's EndpointSlices and get, list and watch its own ModelDeployment only (by
name): the canary's state comes from the ModelDeployment's status the moment the operator writes it.
"""

from __future__ import annotations

import copy
from typing import Any

from moe_operator.decisions.naming import (
    CANARY,
    COMPONENT_LABEL,
    GROUP,
    PLURAL,
    ROUTER,
    STABLE,
    TRACK_LABEL,
    Owner,
    child_labels,
    router_name,
    selector_labels,
    track_selector_labels,
    track_service_name,
)
from moe_operator.decisions.render import RESTRICTED_CONTAINER, RUNTIME_USER, child_object
from moe_operator.decisions.runtime_config import RUNTIME_PORT
from moe_operator.decisions.spec import ModelDeploymentSpec

ROUTER_CONTAINER = "router"
ROUTER_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}
# A pod's answer may pause this much longer than its request timeout allows before the router gives up.
READ_TIMEOUT_MARGIN_S = 60
EXIT_MARGIN_S = 5


def router_labels(md_name: str) -> dict[str, str]:
    return {**child_labels(md_name), COMPONENT_LABEL: ROUTER}


def router_selector(md_name: str) -> dict[str, str]:
    return {**selector_labels(md_name), COMPONENT_LABEL: ROUTER}


def track_services(owner: Owner) -> list[dict[str, Any]]:
    """Headless (no cluster IP, nothing for kube-proxy to do): only their EndpointSlices matter."""
    services = []
    for track in (STABLE, CANARY):
        spec = {
            "clusterIP": "None",
            "selector": track_selector_labels(owner.name, track),
            "ports": [{"name": "http", "port": RUNTIME_PORT, "targetPort": "http", "protocol": "TCP"}],
        }
        service = child_object("v1", "Service", track_service_name(owner.name, track), owner, spec=spec)
        service["metadata"]["labels"][TRACK_LABEL] = track
        services.append(service)
    return services


def router_service_account(owner: Owner) -> dict[str, Any]:
    return child_object("v1", "ServiceAccount", router_name(owner.name), owner)


def router_role(owner: Owner) -> dict[str, Any]:
    rules = [
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
        {
            "apiGroups": [GROUP],
            "resources": [PLURAL],
            "verbs": ["get", "list", "watch"],
            "resourceNames": [owner.name],
        },
    ]
    return child_object("rbac.authorization.k8s.io/v1", "Role", router_name(owner.name), owner, rules=rules)


def router_role_binding(owner: Owner) -> dict[str, Any]:
    name = router_name(owner.name)
    return child_object(
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
        name,
        owner,
        roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        subjects=[{"kind": "ServiceAccount", "name": name, "namespace": owner.namespace}],
    )


def router_grace_seconds(spec: ModelDeploymentSpec) -> int:
    """A stopping router answers what it accepted, held requests included: after the preStop sleep, a request
    accepted last may wait out the hold timeout and then run its whole request timeout."""
    assert spec.routing is not None
    runtime = spec.runtime
    hold, timeout = spec.routing.hold_timeout_seconds, runtime.batching.request_timeout_seconds
    return runtime.drain_delay_seconds + hold + timeout + READ_TIMEOUT_MARGIN_S + EXIT_MARGIN_S


def router_deployment(owner: Owner, spec: ModelDeploymentSpec) -> dict[str, Any]:
    routing, runtime = spec.routing, spec.runtime
    assert routing is not None
    env = [
        {"name": "MOE_RUNTIME_ROUTER_MODEL_DEPLOYMENT", "value": owner.name},
        {
            "name": "MOE_RUNTIME_ROUTER_NAMESPACE",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        },
        {"name": "MOE_RUNTIME_ROUTER_STRATEGY", "value": routing.strategy},
        {"name": "MOE_RUNTIME_ROUTER_HOLD_TIMEOUT", "value": str(routing.hold_timeout_seconds)},
        {
            "name": "MOE_RUNTIME_ROUTER_READ_TIMEOUT",
            "value": str(runtime.batching.request_timeout_seconds + READ_TIMEOUT_MARGIN_S),
        },
        {"name": "MOE_RUNTIME_SERVED_MODEL_NAME", "value": spec.model.name or owner.name},
        {"name": "MOE_RUNTIME_LOG_FORMAT", "value": runtime.log_format},
        {"name": "HOME", "value": "/tmp"},
    ]
    probe = {"periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 3}
    container: dict[str, Any] = {
        "name": ROUTER_CONTAINER,
        "image": runtime.image,
        "command": ["python", "-m", "moe_runtime", "router"],
        "ports": [{"name": "http", "containerPort": RUNTIME_PORT, "protocol": "TCP"}],
        "env": env,
        "resources": ROUTER_RESOURCES,
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, **probe},
        "livenessProbe": {"httpGet": {"path": "/health", "port": "http"}, **probe, "periodSeconds": 10},
        "securityContext": copy.deepcopy(RESTRICTED_CONTAINER),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if runtime.drain_delay_seconds:
        # the router Service stops sending new requests before the router starts draining
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": runtime.drain_delay_seconds}}}
    if runtime.image_pull_policy:
        container["imagePullPolicy"] = runtime.image_pull_policy
    pod_spec: dict[str, Any] = {
        "serviceAccountName": router_name(owner.name),
        "automountServiceAccountToken": True,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": router_grace_seconds(spec),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUNTIME_USER,
            "runAsGroup": RUNTIME_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if runtime.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in runtime.image_pull_secrets]
    if routing.node_selector:
        pod_spec["nodeSelector"] = dict(routing.node_selector)
    if routing.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in routing.tolerations]
    body = {
        "replicas": routing.replicas,
        "selector": {"matchLabels": router_selector(owner.name)},
        "revisionHistoryLimit": 2,
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": {"metadata": {"labels": router_labels(owner.name)}, "spec": pod_spec},
    }
    deployment = child_object("apps/v1", "Deployment", router_name(owner.name), owner, spec=body)
    deployment["metadata"]["labels"][COMPONENT_LABEL] = ROUTER
    return deployment


def routing_children(owner: Owner, spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    """Everything spec.routing adds, in the order to create it (the identity before the pods that use it)."""
    return [
        router_service_account(owner),
        router_role(owner),
        router_role_binding(owner),
        *track_services(owner),
        router_deployment(owner, spec),
    ]


def routing_names(md_name: str) -> list[tuple[str, str]]:
    """(kind, name) of every object spec.routing may add, in the order routing_children creates them."""
    router = router_name(md_name)
    return [
        ("ServiceAccount", router),
        ("Role", router),
        ("RoleBinding", router),
        *(("Service", track_service_name(md_name, track)) for track in (STABLE, CANARY)),
        ("Deployment", router),
    ]
