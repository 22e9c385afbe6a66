"""The desired children of a ModelDeployment as plain dicts. Pure.

A revision is everything that defines a pod: its template and its runtime settings, hashed together. Each
revision's settings live in their own immutable ConfigMap, named by the hash, which also keeps the revision's
pod template, so that the pods of any revision still on record can be recreated exactly (a rollback needs the
stable revision while the spec already describes another one). The stable Deployment and the canary
Deployment run revisions; one Service selects the pods of both.

LoRA adapters are not part of a revision: their list lives in the ConfigMap <md>-adapters, which the pods of
every revision mount at the same place and the runtime watches, so adding or removing one changes no pod. Only
the volumes the adapters come from are part of the pod template (one per PVC claim or hostPath folder): an
adapter on a volume no pod mounts yet makes a new revision.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from moe_operator.decisions.engine_metrics import MOE_RUNTIME
from moe_operator.decisions.engine_pod import (
    TEARDOWN_SECONDS,
    adapter_sync_container,
    download_container,
    engine_container,
    shm_size,
)
from moe_operator.decisions.images import DEFAULT as DEFAULT_IMAGES
from moe_operator.decisions.images import EngineImages
from moe_operator.decisions.naming import (
    CANARY,
    COMPONENT_LABEL,
    ENGINE,
    POD_TEMPLATE_ANNOTATION,
    REVISION_LABEL,
    ROUTER,
    TRACK_LABEL,
    Owner,
    adapters_config_map_name,
    child_labels,
    deployment_name,
    revision_config_map_name,
    selector_labels,
    service_name,
    track_selector_labels,
)
from moe_operator.decisions.probes import STARTUP_PROBE_PERIOD_SECONDS, http_probe, liveness_probe
from moe_operator.decisions.revision import revision_hash
from moe_operator.decisions.runtime_config import (
    ADAPTER_LIST_KEY,
    ADAPTER_LIST_MOUNT_PATH,
    ADAPTER_LIST_VOLUME,
    DOWNLOAD_MOUNT_PATH,
    MODEL_MOUNT_PATH,
    RUNTIME_PORT,
    SHM_MOUNT_PATH,
    TMP_MOUNT_PATH,
    adapter_path,
    adapter_volumes,
    model_path,
    runtime_config,
)
from moe_operator.decisions.spec import HostPathSource, ModelDeploymentSpec, PvcSource, UriSource

SERVICE_PORT = 80
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
# The runtime image's user (images/runtime.Dockerfile): files on volumes must be readable by it.
RUNTIME_USER = 10001
# A rollout may wait this long beyond weight loading (scheduling, image pull) before it counts as stuck.
PROGRESS_MARGIN_SECONDS = 600
# After the last answer: the process writes its last events and exits.
EXIT_MARGIN_SECONDS = 5
# the Pod Security Standards' "restricted" profile, for every container the operator renders
RESTRICTED_CONTAINER = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
# Revisions live in the ConfigMaps; a Deployment's own ReplicaSet history is only for its rolling update.
REPLICA_SET_HISTORY = 2
# Environment variables the operator sets itself; the CRD refuses them in spec.runtime.env, since a
# duplicate name makes the API server refuse the whole Deployment.
OWNED_ENV = (
    "HOME",
    "OMP_NUM_THREADS",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING",  # vLLM pods with adapters (engine_pod.py)
)
_CONFIG_PLACEHOLDER = "$(revision-config)"


@dataclass(frozen=True)
class Revision:
    hash: str
    config: dict[str, str]  # the revision ConfigMap's data: MOE_RUNTIME_* settings
    template: dict[str, Any]  # pod template with its revision label, reading the revision ConfigMap


def render_revision(
    md_name: str, spec: ModelDeploymentSpec, images: EngineImages = DEFAULT_IMAGES
) -> Revision:
    # the MOE_RUNTIME_* settings are our runtime's; other engines take theirs on the command line
    config = runtime_config(spec, md_name) if spec.runtime.engine == MOE_RUNTIME else {}
    template = pod_template(md_name, spec, images)
    digest = revision_hash(template, config)
    # the ConfigMap's name holds the hash, so it is filled in after hashing
    text = json.dumps(template).replace(_CONFIG_PLACEHOLDER, revision_config_map_name(md_name, digest))
    final = json.loads(text)
    final["metadata"]["labels"][REVISION_LABEL] = digest
    return Revision(digest, config, final)


def revision_config_map(owner: Owner, revision: Revision) -> dict[str, Any]:
    body = _object("v1", "ConfigMap", revision_config_map_name(owner.name, revision.hash), owner)
    body["metadata"]["labels"][REVISION_LABEL] = revision.hash
    body["metadata"]["annotations"] = {POD_TEMPLATE_ANNOTATION: json.dumps(revision.template, sort_keys=True)}
    return {**body, "immutable": True, "data": revision.config}


def revision_from_config_map(config_map: Mapping[str, Any]) -> Revision | None:
    """The revision a ConfigMap written by `revision_config_map` keeps; None when it is not one."""
    meta = config_map.get("metadata") or {}
    digest = (meta.get("labels") or {}).get(REVISION_LABEL)
    try:
        template = json.loads((meta.get("annotations") or {})[POD_TEMPLATE_ANNOTATION])
    except (KeyError, TypeError, ValueError):
        return None
    if digest is None or template.get("metadata", {}).get("labels", {}).get(REVISION_LABEL) != digest:
        return None
    return Revision(digest, dict(config_map.get("data") or {}), template)


def adapters_config_map(owner: Owner, spec: ModelDeploymentSpec) -> dict[str, Any]:
    """The adapter list every pod watches (`--lora-list`): [{"name", "path"}] with the paths in the pods."""
    listed = [{"name": a.name, "path": adapter_path(spec, a)} for a in spec.adapters]
    body = _object("v1", "ConfigMap", adapters_config_map_name(owner.name), owner)
    return {**body, "data": {ADAPTER_LIST_KEY: json.dumps(listed, indent=1)}}


def service(owner: Owner, routed: bool = False) -> dict[str, Any]:
    """The Service clients use (status.url): the router's pods with spec.routing, else the runtime pods of
    both tracks (kube-proxy then picks a pod per connection)."""
    selector = selector_labels(owner.name)
    if routed:
        selector[COMPONENT_LABEL] = ROUTER
    spec = {
        "type": "ClusterIP",
        "selector": selector,
        "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
    }
    return _object("v1", "Service", service_name(owner.name), owner, spec=spec)


def deployment(
    owner: Owner, spec: ModelDeploymentSpec, revision: Revision, track: str, replicas: int
) -> dict[str, Any]:
    template = json.loads(json.dumps(revision.template))
    # outside the revision's hash: labels that say where a pod runs, not what it runs
    template["metadata"]["labels"][TRACK_LABEL] = track
    template["metadata"]["labels"][COMPONENT_LABEL] = ENGINE
    body = {
        "replicas": replicas,
        "selector": {"matchLabels": track_selector_labels(owner.name, track)},
        "revisionHistoryLimit": REPLICA_SET_HISTORY,
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
    obj = _object("apps/v1", "Deployment", deployment_name(owner.name, track), owner, spec=body)
    obj["metadata"]["labels"][TRACK_LABEL] = track
    return obj


def disruption_budget(owner: Owner, spec: ModelDeploymentSpec, track: str) -> dict[str, Any] | None:
    """The PodDisruptionBudget of a track, so that a node drain or a cluster-autoscaler scale-down cannot evict
    all its pods at once (a replacement loads its weights for up to startupTimeoutSeconds). None for a track
    of one pod, unless spec.rollout.disruptionBudget asks for one."""
    asked = spec.rollout.disruption_budget
    most = spec.rollout.canary_replicas if track == CANARY else _most_stable_replicas(spec)
    if asked is None and most <= 1:
        return None
    unavailable = asked.max_unavailable if asked is not None else None
    if unavailable is None:
        # the rolling update's own maxUnavailable, but never 0: a budget of 0 blocks every drain for good
        unavailable = spec.rollout.max_unavailable
        if str(unavailable).rstrip("%") == "0":
            unavailable = 1
    body = {
        "maxUnavailable": unavailable,
        "selector": {"matchLabels": track_selector_labels(owner.name, track)},
        # a pod that is not Ready (loading, crash-looping) serves nothing: evicting it must not wait
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }
    obj = _object("policy/v1", "PodDisruptionBudget", deployment_name(owner.name, track), owner, spec=body)
    obj["metadata"]["labels"][TRACK_LABEL] = track
    return obj


def _most_stable_replicas(spec: ModelDeploymentSpec) -> int:
    return spec.max_replicas if spec.autoscaling.enabled else spec.replicas


def child_object(api_version: str, kind: str, name: str, owner: Owner, **body: Any) -> dict[str, Any]:
    """A child of the ModelDeployment: its name, namespace, labels and controlling ownerReference."""
    return _object(api_version, kind, name, owner, **body)


def _object(api_version: str, kind: str, name: str, owner: Owner, **body: Any) -> dict[str, Any]:
    metadata = {
        "name": name,
        "namespace": owner.namespace,
        "labels": child_labels(owner.name),
        "ownerReferences": [owner.reference()],
    }
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, **body}


def pod_template(
    md_name: str, spec: ModelDeploymentSpec, images: EngineImages = DEFAULT_IMAGES
) -> dict[str, Any]:
    """The pod template of the spec's revision, before its revision is known."""
    runtime = spec.runtime
    containers, init_containers = [_container(spec, images.of(spec))], []
    if runtime.engine != MOE_RUNTIME:
        security = containers[0]["securityContext"]
        containers = [engine_container(spec, md_name, containers[0])]
        if spec.adapters:
            containers.append(adapter_sync_container(spec, images.helper, security))
        download = download_container(spec, images.helper, _object_storage_env(spec), security)
        init_containers = [download] if download else []
    pod_spec: dict[str, Any] = {
        # no API access unless the author runs the pods as a ServiceAccount on purpose (cloud identities)
        "automountServiceAccountToken": runtime.service_account_name is not None,
        # hundreds of Services in a namespace would otherwise become environment variables
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": termination_grace_seconds(spec),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUNTIME_USER,
            "runAsGroup": RUNTIME_USER,
            "fsGroup": RUNTIME_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": containers,
        "volumes": _volumes(md_name, spec),
    }
    optional = {
        "serviceAccountName": runtime.service_account_name,
        "runtimeClassName": runtime.runtime_class_name,
        "priorityClassName": runtime.priority_class_name,
        "imagePullSecrets": [{"name": name} for name in runtime.image_pull_secrets] or None,
        "tolerations": _tolerations(spec) or None,
        "nodeSelector": _node_selector(spec) or None,
        "affinity": dict(runtime.affinity) if runtime.affinity else None,
        "initContainers": init_containers or None,
    }
    pod_spec.update({key: value for key, value in optional.items() if value is not None})
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


def termination_grace_seconds(spec: ModelDeploymentSpec) -> int:
    """The grace period counts from the deletion, preStop sleep included, and pods keep taking requests during
    that sleep (the Service may still send them some): a request accepted at its last moment may run its whole
    timeout, plus the runtime's backstop margin for the step in flight (max(2 s, 10%), api/app.py), and the
    process then needs a moment to exit."""
    timeout = spec.runtime.batching.request_timeout_seconds
    if spec.runtime.engine != MOE_RUNTIME:  # vLLM/SGLang drain for --shutdown-timeout, then tear down
        return spec.runtime.drain_delay_seconds + timeout + TEARDOWN_SECONDS
    backstop_margin = max(2, math.ceil(0.1 * timeout))
    return spec.runtime.drain_delay_seconds + timeout + backstop_margin + EXIT_MARGIN_SECONDS


def _container(spec: ModelDeploymentSpec, image: str) -> dict[str, Any]:
    runtime = spec.runtime
    container: dict[str, Any] = {
        "name": "runtime",
        "image": image,
        "command": ["python", "-m", "moe_runtime", "serve"],
        "args": ["--model", model_path(spec), *runtime.args],
        "ports": [{"name": "http", "containerPort": RUNTIME_PORT, "protocol": "TCP"}],
        "envFrom": [{"configMapRef": {"name": _CONFIG_PLACEHOLDER}}],
        # the root filesystem is read-only: caches (torch, tokenizers) go to the /tmp volume
        "env": [
            {"name": "HOME", "value": "/tmp"},
            *_cpu_threads_env(spec),
            *_object_storage_env(spec),
            *(dict(var) for var in runtime.env),
        ],
        "resources": _resources(spec),
        # /ready turns 200 once the weights are loaded: liveness checks start only then, and a load that
        # outlasts startupTimeoutSeconds restarts the container
        "startupProbe": http_probe(
            "/ready",
            failures=math.ceil(runtime.startup_timeout_seconds / STARTUP_PROBE_PERIOD_SECONDS),
            period=STARTUP_PROBE_PERIOD_SECONDS,
        ),
        "livenessProbe": liveness_probe(),
        "readinessProbe": http_probe("/ready", failures=2, period=5),
        "securityContext": copy.deepcopy(RESTRICTED_CONTAINER),
        "volumeMounts": _volume_mounts(spec),
    }
    if runtime.drain_delay_seconds:
        # Services stop sending new requests before the runtime starts draining
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": runtime.drain_delay_seconds}}}
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


def _object_storage_env(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    source = spec.model.source
    if not isinstance(source, UriSource):
        return []
    env: list[dict[str, Any]] = []
    if source.endpoint:
        # S3's own variable: AWS_ENDPOINT_URL would redirect STS as well, and a web identity (IRSA, Pod
        # Identity) would then ask the object store for credentials
        env.append({"name": "AWS_ENDPOINT_URL_S3", "value": source.endpoint})
    if source.region:
        env.append({"name": "AWS_REGION", "value": source.region})
    if source.credentials_secret:
        for key, optional in (
            ("AWS_ACCESS_KEY_ID", False),
            ("AWS_SECRET_ACCESS_KEY", False),
            ("AWS_SESSION_TOKEN", True),
        ):
            ref = {"name": source.credentials_secret, "key": key, "optional": optional}
            env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    return env


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
    requests.update(_download_storage_request(spec))
    return {key: value for key, value in (("requests", requests), ("limits", limits)) if value}


def _download_volume(source: UriSource) -> dict[str, Any]:
    """The pod's own download folder: bounded, so that a large checkpoint cannot fill the node's disk (the
    kubelet evicts the pod past its sizeLimit, instead of DiskPressure evicting the node's other pods)."""
    return {"name": "model-cache", "emptyDir": {"sizeLimit": source.cache_size_limit}}


def _download_storage_request(spec: ModelDeploymentSpec) -> dict[str, Any]:
    """The download counts toward the pod's ephemeral storage: the scheduler places the pod where it fits."""
    source = spec.model.source
    if isinstance(source, UriSource) and source.cache_host_path is None:
        return {"ephemeral-storage": source.cache_size_limit}
    return {}


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


def _volumes(md_name: str, spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    match spec.model.source:
        case PvcSource(claim_name=claim):
            volumes.append({"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        case HostPathSource(path=path):
            volumes.append({"name": "model", "hostPath": {"path": path, "type": "Directory"}})
        case UriSource(cache_host_path=None):
            volumes.append(_download_volume(spec.model.source))
        case UriSource(cache_host_path=path):
            volumes.append({"name": "model-cache", "hostPath": {"path": path, "type": "DirectoryOrCreate"}})
    if shm := _shm_size(spec):
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}})
    volumes.append({"name": ADAPTER_LIST_VOLUME, "configMap": {"name": adapters_config_map_name(md_name)}})
    volumes.extend({"name": v.name, **v.source} for v in adapter_volumes(spec))
    volumes.extend(dict(v) for v in spec.runtime.volumes)
    return volumes


def _volume_mounts(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    mounts = [{"name": "tmp", "mountPath": TMP_MOUNT_PATH}]
    if isinstance(spec.model.source, PvcSource | HostPathSource):
        mounts.append({"name": "model", "mountPath": MODEL_MOUNT_PATH, "readOnly": True})
    if isinstance(spec.model.source, UriSource):
        mounts.append({"name": "model-cache", "mountPath": DOWNLOAD_MOUNT_PATH})
    if _shm_size(spec):
        mounts.append({"name": "shm", "mountPath": SHM_MOUNT_PATH})
    mounts.append({"name": ADAPTER_LIST_VOLUME, "mountPath": ADAPTER_LIST_MOUNT_PATH, "readOnly": True})
    mounts.extend(
        {"name": v.name, "mountPath": v.mount_path, "readOnly": True} for v in adapter_volumes(spec)
    )
    mounts.extend(dict(m) for m in spec.runtime.volume_mounts)
    return mounts


def _shm_size(spec: ModelDeploymentSpec) -> str | None:
    return spec.runtime.shm_size if spec.runtime.engine == MOE_RUNTIME else shm_size(spec)
