"""What a vLLM or SGLang pod has that one of our runtime does not. Pure.

The pod is rendered as for our runtime (render.py: volumes, security, resources, placement), then:
- the serving container runs the engine's own command line (vllm_args.py, sglang_args.py) in the engine's image,
  probed on /health (vLLM binds its port only once it serves, so a refused connection means "still loading"),
  with no MOE_RUNTIME_* ConfigMap;
- /dev/shm is always a memory-backed emptyDir: the engines' processes talk through shared-memory queues created
  at full size (vLLM: 400 MiB at TP=1, more per GPU), more than a container runtime's 64 MiB default;
- a checkpoint in object storage is downloaded by an init container running our downloader
  (`python -m moe_runtime download`, resumable, ETag-checked, shared by the pods of a node through a hostPath
  cache) into the volume the engine reads; the engines' own S3 loaders would stream on every start and share
  nothing between pods;
- with adapters, a sidecar (`python -m moe_runtime adapter-sync`) watches the adapter list every pod mounts and
  loads and unloads them through the engine's adapter API, exporting the same per-adapter series our runtime
  does, so status.adapters reads the same. It is Ready only once the listed adapters are loaded (or failed), so
  a new pod takes no traffic for an adapter it lacks; it reloads them when the engine restarts. A sidecar in
  the pod, rather than the operator calling every pod: no operator-to-pod traffic, a restarted engine is caught
  within a second, and adding a pod needs nothing from the operator.
Helper containers run our runtime's image (the chart's moe-runtime image), which holds both commands.
"""

from __future__ import annotations

import math
from typing import Any

from moe_operator.decisions.engine_args import DOWNLOADED_MODEL_LINK
from moe_operator.decisions.engine_metrics import SGLANG, VLLM
from moe_operator.decisions.probes import STARTUP_PROBE_PERIOD_SECONDS, http_probe, liveness_probe
from moe_operator.decisions.runtime_config import (
    ADAPTER_LIST_KEY,
    ADAPTER_LIST_MOUNT_PATH,
    ADAPTER_LIST_VOLUME,
    DOWNLOAD_MOUNT_PATH,
    RUNTIME_PORT,
)
from moe_operator.decisions.sglang_args import COMMAND as SGLANG_COMMAND
from moe_operator.decisions.sglang_args import sglang_args
from moe_operator.decisions.spec import ModelDeploymentSpec, UriSource
from moe_operator.decisions.vllm_args import vllm_args

ADAPTER_SYNC = "adapter-sync"
ADAPTER_SYNC_PORT = 8001
DOWNLOAD = "download"
# vLLM exits some seconds after its drain (workers, then the engine core: 6.5 s measured): room for it
TEARDOWN_SECONDS = 15
# vLLM's runtime adapter API exists only with this set (it warns that it is for trusted clients: the pod's
# port is reached through the Service, so the sidecar in the pod is the only caller that knows the paths)
VLLM_RUNTIME_LORA = {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"}


def engine_command(spec: ModelDeploymentSpec, md_name: str) -> tuple[list[str], list[str]]:
    if spec.runtime.engine == VLLM:
        return ["vllm", "serve"], vllm_args(spec, md_name)
    if spec.runtime.engine == SGLANG:
        return list(SGLANG_COMMAND), sglang_args(spec, md_name)
    raise ValueError(f"engine {spec.runtime.engine!r} has no command of its own")


def engine_container(spec: ModelDeploymentSpec, md_name: str, base: dict[str, Any]) -> dict[str, Any]:
    """The serving container of our runtime's pod (`base`), turned into the engine's."""
    command, args = engine_command(spec, md_name)
    # object-storage credentials are the download's (the CRD keeps AWS_* out of spec.runtime.env)
    env = [var for var in base["env"] if not var["name"].startswith("AWS_")]
    if spec.runtime.engine == VLLM and spec.adapters:
        env.insert(1, VLLM_RUNTIME_LORA)
    startup = spec.runtime.startup_timeout_seconds
    container = {
        **base,
        "command": command,
        "args": args,
        "env": env,
        "startupProbe": http_probe(
            "/health",
            failures=math.ceil(startup / STARTUP_PROBE_PERIOD_SECONDS),
            period=STARTUP_PROBE_PERIOD_SECONDS,
        ),
        "livenessProbe": liveness_probe(),
        "readinessProbe": http_probe("/health", failures=2, period=5),
    }
    del container["envFrom"]  # the revision ConfigMap's MOE_RUNTIME_* settings are our runtime's
    # the adapter list is the sidecar's to read; the adapters' own volumes stay: the engine loads from them
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != ADAPTER_LIST_VOLUME]
    return container


def shm_size(spec: ModelDeploymentSpec) -> str:
    """spec.runtime.shmSize, else 1Gi and 1Gi more per GPU (the engines' queues grow with the workers)."""
    return spec.runtime.shm_size or f"{1 + spec.runtime.resources.gpu}Gi"


def adapter_sync_container(spec: ModelDeploymentSpec, image: str, security: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": ADAPTER_SYNC,
        "image": image,
        "command": ["python", "-m", "moe_runtime", ADAPTER_SYNC],
        "args": [
            "--engine",
            spec.runtime.engine,
            "--engine-url",
            f"http://127.0.0.1:{RUNTIME_PORT}",
            "--lora-list",
            f"{ADAPTER_LIST_MOUNT_PATH}/{ADAPTER_LIST_KEY}",
        ],  # fmt: skip
        "env": [{"name": "MOE_RUNTIME_PORT", "value": str(ADAPTER_SYNC_PORT)}],
        "ports": [{"name": ADAPTER_SYNC, "containerPort": ADAPTER_SYNC_PORT, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        # Ready once every listed adapter was loaded into the running engine (or failed to): the pod joins
        # the Service only then
        "readinessProbe": http_probe("/ready", failures=1, period=2, port=ADAPTER_SYNC),
        "livenessProbe": liveness_probe(port=ADAPTER_SYNC),
        "securityContext": security,
        "volumeMounts": [
            {"name": ADAPTER_LIST_VOLUME, "mountPath": ADAPTER_LIST_MOUNT_PATH, "readOnly": True}
        ],
    }


def download_container(
    spec: ModelDeploymentSpec, image: str, env: list[dict[str, Any]], security: dict[str, Any]
) -> dict[str, Any] | None:
    """The init container that downloads an s3:// checkpoint (None for other sources). `env`: the object
    storage's endpoint, region and credentials, as our runtime's container gets them."""
    source = spec.model.source
    if not isinstance(source, UriSource):
        return None
    return {
        "name": DOWNLOAD,
        "image": image,
        "command": ["python", "-m", "moe_runtime", DOWNLOAD],
        "args": [
            "--model",
            source.uri,
            "--download-dir",
            DOWNLOAD_MOUNT_PATH,
            "--link",
            DOWNLOADED_MODEL_LINK,
        ],
        "env": [{"name": "HOME", "value": "/tmp"}, *env],
        "securityContext": security,
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "model-cache", "mountPath": DOWNLOAD_MOUNT_PATH},
        ],
    }
