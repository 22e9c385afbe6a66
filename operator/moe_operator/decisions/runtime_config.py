"""Runtime settings the pods read from their revision's ConfigMap as MOE_RUNTIME_* environment variables.

`RUNTIME_SETTINGS` is the one place that names them: renaming a variable is one edit here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from moe_operator.decisions.spec import (
    Adapter,
    HostPathSource,
    ImageSource,
    ModelDeploymentSpec,
    ModelSource,
    PvcSource,
    UriSource,
)

RUNTIME_PORT = 8000
TMP_MOUNT_PATH = "/tmp"
SHM_MOUNT_PATH = "/dev/shm"
MODEL_MOUNT_PATH = "/models"
DOWNLOAD_MOUNT_PATH = "/var/cache/moe-runtime"
# LoRA adapters: the list the runtime watches (the ConfigMap <md>-adapters, mounted by every pod of every
# revision), and one volume per PVC claim or node folder the adapters come from, each under ADAPTER_ROOT.
ADAPTER_LIST_VOLUME = "adapters"
ADAPTER_LIST_MOUNT_PATH = "/etc/moe-runtime/adapters"
ADAPTER_LIST_KEY = "adapters.json"
ADAPTER_ROOT = "/adapters"
# Where the operator mounts its own volumes: spec.runtime.volumeMounts may not mount over them or inside them.
OPERATOR_MOUNT_PATHS = (
    TMP_MOUNT_PATH,
    SHM_MOUNT_PATH,
    MODEL_MOUNT_PATH,
    DOWNLOAD_MOUNT_PATH,
    ADAPTER_LIST_MOUNT_PATH,
    ADAPTER_ROOT,
)


def model_path(spec: ModelDeploymentSpec) -> str:
    """Where the pod finds the checkpoint: a folder, or the object-storage URI it downloads from."""
    match spec.model.source:
        case PvcSource(path=path):
            return f"{MODEL_MOUNT_PATH}/{path}".rstrip("/")
        case HostPathSource():
            return MODEL_MOUNT_PATH
        case ImageSource(path=path):
            return path
        case UriSource(uri=uri):
            return uri


@dataclass(frozen=True)
class AdapterVolume:
    name: str  # adapter-pvc-<hash> or adapter-host-<hash>: stable whatever else the spec holds
    source: dict[str, Any]  # the volume's source field (persistentVolumeClaim or hostPath)
    mount_path: str


def adapter_volume(spec: ModelDeploymentSpec, source: ModelSource) -> AdapterVolume | None:
    """The volume an adapter source needs; None when it needs none of its own (baked into the image, or on
    the model's own claim, which the pods mount already)."""
    match source:
        case PvcSource(claim_name=claim) if not _model_claim(spec, claim):
            name = f"adapter-pvc-{_digest(claim)}"
            return AdapterVolume(
                name,
                {"persistentVolumeClaim": {"claimName": claim, "readOnly": True}},
                f"{ADAPTER_ROOT}/{name}",
            )
        case HostPathSource(path=path):
            folder = adapter_host_folder(path)
            name = f"adapter-host-{_digest(folder)}"
            return AdapterVolume(
                name, {"hostPath": {"path": folder, "type": "Directory"}}, f"{ADAPTER_ROOT}/{name}"
            )
    return None


def adapter_host_folder(path: str) -> str:
    """The node folder a hostPath adapter is mounted through: the folder that holds it, so that adapters side
    by side in one node folder share one volume (adding one there changes no pod); the adapter's own folder
    when it sits right under /."""
    parent = str(PurePosixPath(path).parent)
    return path if parent == "/" else parent


def adapter_volumes(spec: ModelDeploymentSpec) -> list[AdapterVolume]:
    """One volume per distinct claim or folder, sorted by name, so that an adapter on a volume the pods mount
    already changes nothing in the pod template."""
    volumes = {v.name: v for a in spec.adapters if (v := adapter_volume(spec, a.source)) is not None}
    return [volumes[name] for name in sorted(volumes)]


def adapter_path(spec: ModelDeploymentSpec, adapter: Adapter) -> str:
    """Where the pod finds the adapter's folder."""
    volume = adapter_volume(spec, adapter.source)
    match adapter.source:
        case PvcSource(path=path):
            root = volume.mount_path if volume else MODEL_MOUNT_PATH
            return f"{root}/{path}".rstrip("/")
        case HostPathSource(path=path):
            if adapter_host_folder(path) == path:
                return volume.mount_path
            return f"{volume.mount_path}/{PurePosixPath(path).name}"
        case ImageSource(path=path):
            return path
    raise ValueError(f"adapter {adapter.name}: unsupported source {adapter.source!r}")


def _model_claim(spec: ModelDeploymentSpec, claim: str) -> bool:
    return isinstance(spec.model.source, PvcSource) and spec.model.source.claim_name == claim


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _dtype(spec: ModelDeploymentSpec) -> str | None:
    # "auto" is the runtime's own choice (bfloat16 on GPU, float32 on CPU): leave the variable out
    return None if spec.runtime.dtype == "auto" else spec.runtime.dtype


# (variable, value from spec and ModelDeployment name); a value of None leaves the variable out,
# so the runtime keeps its own default (the checkpoint's attention window, for instance).
RUNTIME_SETTINGS: tuple[tuple[str, Callable[[ModelDeploymentSpec, str], object]], ...] = (
    ("MOE_RUNTIME_MODEL", lambda spec, _: model_path(spec)),
    ("MOE_RUNTIME_SERVED_MODEL_NAME", lambda spec, md_name: spec.model.name or md_name),
    ("MOE_RUNTIME_PORT", lambda spec, _: RUNTIME_PORT),
    ("MOE_RUNTIME_MAX_QUEUE", lambda spec, _: spec.runtime.batching.max_queue),
    ("MOE_RUNTIME_MAX_BATCH_SEQS", lambda spec, _: spec.runtime.batching.max_batch_sequences),
    ("MOE_RUNTIME_MAX_BATCH_TOKENS", lambda spec, _: spec.runtime.batching.token_budget),
    ("MOE_RUNTIME_PREFILL_CHUNK", lambda spec, _: spec.runtime.batching.prefill_chunk),
    ("MOE_RUNTIME_REQUEST_TIMEOUT", lambda spec, _: spec.runtime.batching.request_timeout_seconds),
    ("MOE_RUNTIME_WINDOW", lambda spec, _: spec.runtime.attention.window),
    ("MOE_RUNTIME_GLOBAL_TOKENS", lambda spec, _: spec.runtime.attention.global_tokens),
    ("MOE_RUNTIME_QUANTIZE", lambda spec, _: spec.runtime.quantization),
    ("MOE_RUNTIME_DTYPE", lambda spec, _: _dtype(spec)),
    ("MOE_RUNTIME_MAX_KV_TOKENS", lambda spec, _: spec.runtime.kv_cache.max_tokens),
    ("MOE_RUNTIME_KV_CACHE_MEMORY_BYTES", lambda spec, _: spec.runtime.kv_cache.memory_bytes),
    ("MOE_RUNTIME_GPU_MEMORY_UTILIZATION", lambda spec, _: spec.runtime.kv_cache.gpu_memory_utilization),
    ("MOE_RUNTIME_MAX_MODEL_LEN", lambda spec, _: spec.runtime.max_model_len),
    ("MOE_RUNTIME_EXPERT_METRICS", lambda spec, _: spec.runtime.expert_metrics),
    ("MOE_RUNTIME_LOG_FORMAT", lambda spec, _: spec.runtime.log_format),
    # every pod watches the adapter list, adapters or not: adding the first one must not change the pods
    ("MOE_RUNTIME_LORA_LIST", lambda spec, _: f"{ADAPTER_LIST_MOUNT_PATH}/{ADAPTER_LIST_KEY}"),
    ("MOE_RUNTIME_MAX_LORAS", lambda spec, _: spec.runtime.max_loras),
    ("MOE_RUNTIME_MAX_LORA_RANK", lambda spec, _: spec.runtime.max_lora_rank),
    # a checkpoint from object storage is downloaded into the pod's cache volume
    (
        "MOE_RUNTIME_DOWNLOAD_DIR",
        lambda spec, _: DOWNLOAD_MOUNT_PATH if isinstance(spec.model.source, UriSource) else None,
    ),
)


# The runtime's flags (moe_runtime.serve.options) of every variable the operator sets, and --lora-modules,
# whose paths come from spec.adapters under the policy. spec.runtime.args may not name them and spec.runtime.env
# may not set the variables: the last flag wins, and env beats the revision ConfigMap, so either would override
# the operator (--model pointing at any path in the pod, another tenant's download in a shared cache included).
OPERATOR_FLAGS: dict[str, tuple[str, ...]] = {
    "MOE_RUNTIME_MODEL": ("--model",),
    "MOE_RUNTIME_SERVED_MODEL_NAME": ("--served-model-name",),
    "MOE_RUNTIME_PORT": ("--port",),
    "MOE_RUNTIME_MAX_QUEUE": ("--max-queue",),
    "MOE_RUNTIME_MAX_BATCH_SEQS": ("--max-num-seqs", "--max-batch-seqs"),
    "MOE_RUNTIME_MAX_BATCH_TOKENS": ("--max-num-batched-tokens", "--max-batch-tokens"),
    "MOE_RUNTIME_PREFILL_CHUNK": ("--prefill-chunk",),
    "MOE_RUNTIME_REQUEST_TIMEOUT": ("--request-timeout",),
    "MOE_RUNTIME_WINDOW": ("--window",),
    "MOE_RUNTIME_GLOBAL_TOKENS": ("--global-tokens",),
    "MOE_RUNTIME_QUANTIZE": ("--quantize",),
    "MOE_RUNTIME_DTYPE": ("--dtype",),
    "MOE_RUNTIME_MAX_KV_TOKENS": ("--max-kv-tokens",),
    "MOE_RUNTIME_KV_CACHE_MEMORY_BYTES": ("--kv-cache-memory-bytes",),
    "MOE_RUNTIME_GPU_MEMORY_UTILIZATION": ("--gpu-memory-utilization",),
    "MOE_RUNTIME_MAX_MODEL_LEN": ("--max-model-len",),
    "MOE_RUNTIME_EXPERT_METRICS": ("--expert-metrics",),
    "MOE_RUNTIME_LOG_FORMAT": ("--log-format",),
    "MOE_RUNTIME_LORA_LIST": ("--lora-list",),
    "MOE_RUNTIME_LORA_MODULES": ("--lora-modules",),
    "MOE_RUNTIME_MAX_LORAS": ("--max-loras",),
    "MOE_RUNTIME_MAX_LORA_RANK": ("--max-lora-rank",),
    "MOE_RUNTIME_DOWNLOAD_DIR": ("--download-dir",),
}
_FLAGS = tuple(flag for flags in OPERATOR_FLAGS.values() for flag in flags)


def operator_flag(arg: str) -> str | None:
    """The operator's flag that `arg` sets, as `--flag`, `--flag=value` or an abbreviation of it (which
    argparse takes unless told not to, and older runtime images do); None when it sets none of them."""
    name = arg.split("=", 1)[0]
    if not name.startswith("--") or len(name) < 3:
        return None
    return next((flag for flag in _FLAGS if flag.startswith(name)), None)


def runtime_config(spec: ModelDeploymentSpec, md_name: str) -> dict[str, str]:
    values = ((name, value(spec, md_name)) for name, value in RUNTIME_SETTINGS)
    return {name: str(value) for name, value in values if value is not None}
