"""What every engine's command line is made of, read from the spec the same way for each. Pure.

vLLM and SGLang read the checkpoint from a folder: a PVC, a node folder or the image as for our runtime, and a
checkpoint in object storage from the folder an init container downloads it into (engine_pod.py), through
the fixed link `python -m moe_runtime download --link` makes to it (the copies live in a folder per endpoint,
which only the download knows).
"""

from __future__ import annotations

from dataclasses import dataclass

from moe_operator.decisions.runtime_config import DOWNLOAD_MOUNT_PATH, model_path
from moe_operator.decisions.spec import ModelDeploymentSpec, UriSource

DOWNLOADED_MODEL_LINK = f"{DOWNLOAD_MOUNT_PATH}/model"


def served_model_name(spec: ModelDeploymentSpec, md_name: str) -> str:
    return spec.model.name or md_name


def engine_model_path(spec: ModelDeploymentSpec) -> str:
    """The checkpoint folder in the pod; for an s3:// source, where the download init container puts it."""
    if isinstance(spec.model.source, UriSource):
        return DOWNLOADED_MODEL_LINK
    return model_path(spec)


@dataclass(frozen=True)
class ParallelSizes:
    tensor: int  # GPUs each data-parallel rank shards the model over
    data: int  # data-parallel ranks in the pod
    expert: bool  # experts placed whole over the GPUs instead of sharded


def parallel_sizes(spec: ModelDeploymentSpec) -> ParallelSizes:
    """The pod's GPUs (1 on CPU) in `data` groups of `tensor` each. The CRD makes `data` divide the GPUs."""
    parallelism = spec.runtime.parallelism
    devices = max(spec.runtime.resources.gpu, 1)
    data = parallelism.data_parallel_size
    return ParallelSizes(tensor=max(devices // data, 1), data=data, expert=parallelism.expert_parallel)
