"""Runtime settings the pods read from their revision's ConfigMap as MOE_RUNTIME_* environment variables.

`RUNTIME_SETTINGS` is the one place that names them: renaming a variable is one edit here.
"""

from __future__ import annotations

from collections.abc import Callable

from moe_operator.spec import HostPathSource, ImageSource, ModelDeploymentSpec, PvcSource, UriSource

RUNTIME_PORT = 8000
MODEL_MOUNT_PATH = "/models"
DOWNLOAD_MOUNT_PATH = "/var/cache/moe-runtime"


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
    # a checkpoint from object storage is downloaded into the pod's cache volume
    (
        "MOE_RUNTIME_DOWNLOAD_DIR",
        lambda spec, _: DOWNLOAD_MOUNT_PATH if isinstance(spec.model.source, UriSource) else None,
    ),
)


def runtime_config(spec: ModelDeploymentSpec, md_name: str) -> dict[str, str]:
    values = ((name, value(spec, md_name)) for name, value in RUNTIME_SETTINGS)
    return {name: str(value) for name, value in values if value is not None}
