"""Typed, defaulted view of a ModelDeployment's spec.

The API server applies the CRD's defaults before the operator sees an object; the defaults here repeat them
so that the view is complete for any input (a unit test keeps the two in step).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PvcSource:
    claim_name: str
    path: str = ""


@dataclass(frozen=True)
class HostPathSource:
    path: str


@dataclass(frozen=True)
class ImageSource:
    path: str


ModelSource = PvcSource | HostPathSource | ImageSource


@dataclass(frozen=True)
class Model:
    family: str
    source: ModelSource
    name: str | None = None


@dataclass(frozen=True)
class Resources:
    gpu: int = 1
    gpu_type: str | None = None
    cpu: str | int | None = None
    memory: str | int | None = None


@dataclass(frozen=True)
class Batching:
    max_queue: int = 256
    max_batch_sequences: int = 32
    token_budget: int = 8192
    prefill_chunk: int = 512
    request_timeout_seconds: int = 300


@dataclass(frozen=True)
class Attention:
    window: int | None = None
    global_tokens: int | None = None


@dataclass(frozen=True)
class Runtime:
    image: str
    image_pull_policy: str | None = None
    args: tuple[str, ...] = ()
    env: tuple[Mapping[str, Any], ...] = ()
    resources: Resources = Resources()
    tolerations: tuple[Mapping[str, Any], ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    batching: Batching = Batching()
    attention: Attention = Attention()
    quantization: str = "none"
    dtype: str = "auto"
    startup_timeout_seconds: int = 1200


@dataclass(frozen=True)
class Rollout:
    max_surge: int | str = 1
    max_unavailable: int | str = 0
    auto_rollback: bool = True


@dataclass(frozen=True)
class ModelDeploymentSpec:
    model: Model
    runtime: Runtime
    replicas: int = 1
    min_replicas: int = 1
    max_replicas: int = 10
    rollout: Rollout = Rollout()


class InvalidSpec(ValueError):
    """The spec lacks something the CRD schema requires (only possible when the schema was bypassed)."""


def parse_spec(spec: Mapping[str, Any]) -> ModelDeploymentSpec:
    try:
        return ModelDeploymentSpec(
            model=_model(spec["model"]),
            runtime=_runtime(spec["runtime"]),
            **_pick(spec, replicas="replicas", min_replicas="minReplicas", max_replicas="maxReplicas"),
            rollout=Rollout(
                **_pick(
                    spec.get("rollout", {}),
                    max_surge="maxSurge",
                    max_unavailable="maxUnavailable",
                    auto_rollback="autoRollback",
                )
            ),
        )
    except (KeyError, TypeError) as err:
        raise InvalidSpec(f"spec is incomplete: {err}") from err


def _pick(raw: Mapping[str, Any], **names: str) -> dict[str, Any]:
    """The fields of `raw` that are set, renamed from camelCase to the dataclass's names."""
    return {ours: raw[theirs] for ours, theirs in names.items() if raw.get(theirs) is not None}


def _model(raw: Mapping[str, Any]) -> Model:
    return Model(family=raw["family"], source=_source(raw["source"]), name=raw.get("name"))


def _source(raw: Mapping[str, Any]) -> ModelSource:
    if "pvc" in raw:
        return PvcSource(**_pick(raw["pvc"], claim_name="claimName", path="path"))
    if "hostPath" in raw:
        return HostPathSource(path=raw["hostPath"]["path"])
    if "image" in raw:
        return ImageSource(path=raw["image"]["path"])
    raise InvalidSpec("spec.model.source sets none of pvc, hostPath, image")


def _runtime(raw: Mapping[str, Any]) -> Runtime:
    return Runtime(
        image=raw["image"],
        **_pick(
            raw,
            image_pull_policy="imagePullPolicy",
            quantization="quantization",
            dtype="dtype",
            startup_timeout_seconds="startupTimeoutSeconds",
        ),
        args=tuple(raw.get("args", ())),
        env=tuple(dict(var) for var in raw.get("env", ())),
        resources=Resources(
            **_pick(raw.get("resources", {}), gpu="gpu", gpu_type="gpuType", cpu="cpu", memory="memory")
        ),
        tolerations=tuple(dict(t) for t in raw.get("tolerations", ())),
        node_selector=dict(raw.get("nodeSelector", {})),
        batching=Batching(
            **_pick(
                raw.get("batching", {}),
                max_queue="maxQueue",
                max_batch_sequences="maxBatchSequences",
                token_budget="tokenBudget",
                prefill_chunk="prefillChunk",
                request_timeout_seconds="requestTimeoutSeconds",
            )
        ),
        attention=Attention(**_pick(raw.get("attention", {}), window="window", global_tokens="globalTokens")),
    )
