"""The desired children of a ModelDeployment (ConfigMap, Service, Deployment) as plain dicts. Pure."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from moe_operator.config import MODEL_MOUNT_PATH, RUNTIME_PORT, model_path, runtime_config
from moe_operator.naming import (
    REVISION_LABEL,
    Owner,
    child_labels,
    config_map_name,
    deployment_name,
    selector_labels,
    service_name,
)
from moe_operator.revision import revision_hash
from moe_operator.spec import HostPathSource, ModelDeploymentSpec, PvcSource

SERVICE_PORT = 80
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
RUNTIME_USER = 1000
PROBE_PERIOD_SECONDS = 10
# Pause before SIGTERM so that Services stop sending new requests before the runtime starts draining.
DRAIN_DELAY_SECONDS = 10
# A rollout may wait this long beyond weight loading (scheduling, image pull) before it counts as stuck.
PROGRESS_MARGIN_SECONDS = 600
REVISION_HISTORY = 5


@dataclass(frozen=True)
class Children:
    revision: str
    config_map: dict[str, Any]
    service: dict[str, Any]
    deployment: dict[str, Any]


def render(owner: Owner, spec: ModelDeploymentSpec) -> Children:
    config = runtime_config(spec, owner.name)
    template = pod_template(owner.name, spec)
    revision = revision_hash(template, config)
    return Children(
        revision=revision,
        config_map=_object("v1", "ConfigMap", config_map_name(owner.name), owner, data=config),
        service=_object("v1", "Service", service_name(owner.name), owner, spec=_service_spec(owner.name)),
        deployment=_object(
            "apps/v1",
            "Deployment",
            deployment_name(owner.name),
            owner,
            spec=_deployment_spec(owner.name, spec, _with_revision(template, revision)),
        ),
    )


def _object(api_version: str, kind: str, name: str, owner: Owner, **body: Any) -> dict[str, Any]:
    metadata = {
        "name": name,
        "namespace": owner.namespace,
        "labels": child_labels(owner.name),
        "ownerReferences": [owner.reference()],
    }
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, **body}


def _service_spec(md_name: str) -> dict[str, Any]:
    return {
        "type": "ClusterIP",
        "selector": selector_labels(md_name),
        "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
    }


def _deployment_spec(md_name: str, spec: ModelDeploymentSpec, template: dict[str, Any]) -> dict[str, Any]:
    return {
        "replicas": spec.replicas,
        "selector": {"matchLabels": selector_labels(md_name)},
        "revisionHistoryLimit": REVISION_HISTORY,
        "progressDeadlineSeconds": spec.runtime.startup_timeout_seconds + PROGRESS_MARGIN_SECONDS,
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {
                "maxSurge": spec.rollout.max_surge,
                "maxUnavailable": spec.rollout.max_unavailable,
            },
        },
        "template": template,
    }


def _with_revision(template: dict[str, Any], revision: str) -> dict[str, Any]:
    metadata = template["metadata"]
    return {**template, "metadata": {**metadata, "labels": {**metadata["labels"], REVISION_LABEL: revision}}}


def pod_template(md_name: str, spec: ModelDeploymentSpec) -> dict[str, Any]:
    """The pod template without its revision label (the revision is a hash of this)."""
    runtime = spec.runtime
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        # hundreds of Services in a namespace would otherwise become environment variables
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": runtime.batching.request_timeout_seconds + DRAIN_DELAY_SECONDS,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUNTIME_USER,
            "runAsGroup": RUNTIME_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(md_name, spec)],
        "volumes": _volumes(spec),
    }
    if tolerations := _tolerations(spec):
        pod_spec["tolerations"] = tolerations
    if node_selector := _node_selector(spec):
        pod_spec["nodeSelector"] = node_selector
    return {
        "metadata": {
            "labels": child_labels(md_name),
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(RUNTIME_PORT),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": pod_spec,
    }


def _container(md_name: str, spec: ModelDeploymentSpec) -> dict[str, Any]:
    runtime = spec.runtime
    container: dict[str, Any] = {
        "name": "runtime",
        "image": runtime.image,
        "command": ["python", "-m", "moe_runtime", "serve"],
        "args": ["--model", model_path(spec), *runtime.args],
        "ports": [{"name": "http", "containerPort": RUNTIME_PORT, "protocol": "TCP"}],
        "envFrom": [{"configMapRef": {"name": config_map_name(md_name)}}],
        # the root filesystem is read-only: caches (torch, tokenizers) go to the /tmp volume
        "env": [{"name": "HOME", "value": "/tmp"}, *_cpu_threads_env(spec), *runtime.env],
        "resources": _resources(spec),
        # /ready turns 200 once the weights are loaded: liveness checks start only then, and a load that
        # outlasts startupTimeoutSeconds restarts the container
        "startupProbe": _http_probe(
            "/ready", failures=math.ceil(runtime.startup_timeout_seconds / PROBE_PERIOD_SECONDS)
        ),
        "livenessProbe": _http_probe("/health", failures=3),
        "readinessProbe": _http_probe("/ready", failures=2, period=5),
        "lifecycle": {"preStop": {"sleep": {"seconds": DRAIN_DELAY_SECONDS}}},
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": _volume_mounts(spec),
    }
    if runtime.image_pull_policy:
        container["imagePullPolicy"] = runtime.image_pull_policy
    return container


def _cpu_threads_env(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    """torch sizes its CPU thread pool by the node's cores, not the pod's share of them; oversubscribed
    threads slow every CPU op many times over. The downward API hands the pod its CPU request, rounded up."""
    if spec.runtime.resources.cpu is None:
        return []
    cpu_request = {"containerName": "runtime", "resource": "requests.cpu", "divisor": "1"}
    return [{"name": "OMP_NUM_THREADS", "valueFrom": {"resourceFieldRef": cpu_request}}]


def _http_probe(path: str, failures: int, period: int = PROBE_PERIOD_SECONDS) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _resources(spec: ModelDeploymentSpec) -> dict[str, Any]:
    wanted = spec.runtime.resources
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if wanted.cpu is not None:
        requests["cpu"] = wanted.cpu
    if wanted.memory is not None:
        requests["memory"] = limits["memory"] = wanted.memory
    if wanted.gpu:
        limits[GPU_RESOURCE] = wanted.gpu
    return {key: value for key, value in (("requests", requests), ("limits", limits)) if value}


def _tolerations(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    tolerations = [dict(t) for t in spec.runtime.tolerations]
    gpu_taint = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
    if spec.runtime.resources.gpu and gpu_taint not in tolerations:
        tolerations.append(gpu_taint)
    return tolerations


def _node_selector(spec: ModelDeploymentSpec) -> dict[str, str]:
    selector = dict(spec.runtime.node_selector)
    if spec.runtime.resources.gpu_type:
        selector[GPU_PRODUCT_LABEL] = spec.runtime.resources.gpu_type
    return selector


def _volumes(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    match spec.model.source:
        case PvcSource(claim_name=claim):
            volumes.append({"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        case HostPathSource(path=path):
            volumes.append({"name": "model", "hostPath": {"path": path, "type": "Directory"}})
    return volumes


def _volume_mounts(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    mounts = [{"name": "tmp", "mountPath": "/tmp"}]
    if isinstance(spec.model.source, PvcSource | HostPathSource):
        mounts.append({"name": "model", "mountPath": MODEL_MOUNT_PATH, "readOnly": True})
    return mounts
