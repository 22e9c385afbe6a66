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


@dataclass(frozen=True)
class UriSource:
    """Object storage (s3://bucket/prefix): the runtime downloads the checkpoint before it loads."""

    uri: str
    endpoint: str | None = None
    region: str | None = None
    credentials_secret: str | None = None
    cache_host_path: str | None = None  # a node folder shared by the pods of the node; None: per pod
    cache_size_limit: str | int | None = None  # the per-pod emptyDir's sizeLimit (a quantity)


ModelSource = PvcSource | HostPathSource | ImageSource | UriSource


@dataclass(frozen=True)
class Model:
    family: str
    source: ModelSource
    name: str | None = None


@dataclass(frozen=True)
class Adapter:
    name: str
    source: ModelSource


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
    token_budget: int | None = None  # the runtime's own choice: 8192 on a GPU, 512 on CPU
    prefill_chunk: int = 512
    request_timeout_seconds: int = 300


@dataclass(frozen=True)
class Attention:
    window: int | None = None
    global_tokens: int | None = None


@dataclass(frozen=True)
class KvCache:
    gpu_memory_utilization: float = 0.9
    memory_bytes: int | None = None
    max_tokens: int | None = None


@dataclass(frozen=True)
class Parallelism:
    """How an engine splits the model over a pod's GPUs (vLLM, SGLang): `resources.gpu` GPUs in
    `data_parallel_size` groups of tensor parallelism each; MoE layers over all of them with expert parallelism."""

    data_parallel_size: int = 1
    expert_parallel: bool = False


@dataclass(frozen=True)
class Runtime:
    image: str | None = None  # None: the engine's image as the operator is configured (images.py)
    engine: str = "moe-runtime"
    image_pull_policy: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    service_account_name: str | None = None
    runtime_class_name: str | None = None
    priority_class_name: str | None = None
    args: tuple[str, ...] = ()
    env: tuple[Mapping[str, Any], ...] = ()
    resources: Resources = Resources()
    tolerations: tuple[Mapping[str, Any], ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    affinity: Mapping[str, Any] | None = None
    volumes: tuple[Mapping[str, Any], ...] = ()
    volume_mounts: tuple[Mapping[str, Any], ...] = ()
    shm_size: str | None = None
    batching: Batching = Batching()
    attention: Attention = Attention()
    kv_cache: KvCache = KvCache()
    parallelism: Parallelism = Parallelism()
    max_loras: int = 4
    max_lora_rank: int = 16
    quantization: str = "none"
    dtype: str = "auto"
    max_model_len: int | None = None
    expert_metrics: str = "expert"
    log_format: str = "text"
    startup_timeout_seconds: int = 1200
    drain_delay_seconds: int = 10


@dataclass(frozen=True)
class ScaleRule:
    stabilization_window_seconds: int
    max_pods: int
    period_seconds: int


@dataclass(frozen=True)
class Autoscaling:
    enabled: bool = False
    target_queue_depth: float = 4.0
    tolerance: float = 0.1
    interval_seconds: int = 15
    metric_window_seconds: int = 30
    query: str | None = None
    scale_up: ScaleRule = ScaleRule(0, 4, 15)
    scale_down: ScaleRule = ScaleRule(300, 1, 60)


@dataclass(frozen=True)
class DisruptionBudget:
    max_unavailable: int | str | None = None  # None: from the rollout's maxUnavailable, at least one pod


@dataclass(frozen=True)
class Rollout:
    strategy: str = "Canary"
    canary_replicas: int = 1
    max_surge: int | str = 1
    max_unavailable: int | str = 0
    auto_rollback: bool = True
    revision_history_limit: int = 3
    disruption_budget: DisruptionBudget | None = None  # set: a budget for every track, one pod or more


@dataclass(frozen=True)
class SLO:
    p99_latency_seconds: float | None = None
    ttft_p99_seconds: float | None = None
    time_per_output_token_p99_seconds: float | None = None
    max_relative_increase: float | None = None
    max_error_ratio: float | None = None
    analysis_interval_seconds: int = 60
    scrape_interval_seconds: int = 30
    metric_delay_seconds: int | None = None  # None: two scrape intervals
    bake_seconds: int | None = None  # None: three analysis intervals; 0: no bake
    initial_delay_seconds: int = 0
    measurements: int = 5
    failure_limit: int = 1
    inconclusive_limit: int = 3
    error_limit: int = 4
    on_inconclusive: str = "Hold"
    min_requests: int = 10
    p99_latency_query: str | None = None
    error_ratio_query: str | None = None


@dataclass(frozen=True)
class ScaleToZero:
    idle_seconds: int = 300


@dataclass(frozen=True)
class Routing:
    """spec.routing: an inference router in front of the pods (present: on, even when empty)."""

    strategy: str = "PrefixAware"
    replicas: int = 2
    hold_timeout_seconds: int = 300
    scale_to_zero: ScaleToZero | None = None
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class ModelDeploymentSpec:
    model: Model
    runtime: Runtime
    replicas: int = 1
    min_replicas: int = 1
    max_replicas: int = 10
    adapters: tuple[Adapter, ...] = ()
    autoscaling: Autoscaling = Autoscaling()
    rollout: Rollout = Rollout()
    slo: SLO | None = None
    routing: Routing | None = None


class InvalidSpec(ValueError):
    """The spec lacks something the CRD schema requires (only possible when the schema was bypassed)."""


def parse_spec(spec: Mapping[str, Any]) -> ModelDeploymentSpec:
    try:
        return ModelDeploymentSpec(
            model=Model(
                family=spec["model"]["family"],
                source=_source(spec["model"]["source"]),
                name=spec["model"].get("name"),
            ),
            runtime=_runtime(spec["runtime"]),
            **_pick(spec, replicas="replicas", min_replicas="minReplicas", max_replicas="maxReplicas"),
            adapters=tuple(Adapter(a["name"], _source(a["source"])) for a in spec.get("adapters") or ()),
            autoscaling=_autoscaling(spec.get("autoscaling") or {}),
            rollout=Rollout(
                **_pick(
                    spec.get("rollout") or {},
                    strategy="strategy",
                    canary_replicas="canaryReplicas",
                    max_surge="maxSurge",
                    max_unavailable="maxUnavailable",
                    auto_rollback="autoRollback",
                    revision_history_limit="revisionHistoryLimit",
                ),
                disruption_budget=_disruption_budget((spec.get("rollout") or {}).get("disruptionBudget")),
            ),
            slo=_slo(spec["slo"]) if spec.get("slo") else None,
            routing=_routing(spec["routing"]) if spec.get("routing") is not None else None,
        )
    except (KeyError, TypeError) as err:
        raise InvalidSpec(f"spec is incomplete: {err}") from err


def _pick(raw: Mapping[str, Any], **names: str) -> dict[str, Any]:
    """The fields of `raw` that are set, renamed from camelCase to the dataclass's names."""
    return {ours: raw[theirs] for ours, theirs in names.items() if raw.get(theirs) is not None}


def _source(raw: Mapping[str, Any]) -> ModelSource:
    if "pvc" in raw:
        return PvcSource(**_pick(raw["pvc"], claim_name="claimName", path="path"))
    if "hostPath" in raw:
        return HostPathSource(path=raw["hostPath"]["path"])
    if "image" in raw:
        return ImageSource(path=raw["image"]["path"])
    if "uri" in raw:
        s3, cache = raw.get("s3") or {}, raw.get("cache") or {}
        source = UriSource(
            uri=raw["uri"],
            **_pick(s3, endpoint="endpoint", region="region", credentials_secret="credentialsSecret"),
            cache_host_path=cache.get("hostPath", {}).get("path"),
            cache_size_limit=cache.get("sizeLimit"),
        )
        if source.cache_host_path is None and source.cache_size_limit is None:
            raise InvalidSpec(
                "spec.model.source.cache.sizeLimit is required for a download into the pod (at least the "
                "checkpoint's size: an unbounded download fills the node's disk), unless cache.hostPath is set"
            )
        return source
    raise InvalidSpec("a source sets none of pvc, hostPath, image, uri")


def _runtime(raw: Mapping[str, Any]) -> Runtime:
    return Runtime(
        **_pick(
            raw,
            image="image",
            engine="engine",
            image_pull_policy="imagePullPolicy",
            service_account_name="serviceAccountName",
            runtime_class_name="runtimeClassName",
            priority_class_name="priorityClassName",
            affinity="affinity",
            shm_size="shmSize",
            max_loras="maxLoras",
            max_lora_rank="maxLoraRank",
            quantization="quantization",
            dtype="dtype",
            max_model_len="maxModelLen",
            expert_metrics="expertMetrics",
            log_format="logFormat",
            startup_timeout_seconds="startupTimeoutSeconds",
            drain_delay_seconds="drainDelaySeconds",
        ),
        image_pull_secrets=tuple(s["name"] for s in raw.get("imagePullSecrets") or ()),
        args=tuple(raw.get("args") or ()),
        env=tuple(dict(var) for var in raw.get("env") or ()),
        resources=Resources(
            **_pick(raw.get("resources") or {}, gpu="gpu", gpu_type="gpuType", cpu="cpu", memory="memory")
        ),
        tolerations=tuple(dict(t) for t in raw.get("tolerations") or ()),
        node_selector=dict(raw.get("nodeSelector") or {}),
        volumes=tuple(dict(v) for v in raw.get("volumes") or ()),
        volume_mounts=tuple(dict(m) for m in raw.get("volumeMounts") or ()),
        batching=Batching(
            **_pick(
                raw.get("batching") or {},
                max_queue="maxQueue",
                max_batch_sequences="maxBatchSequences",
                token_budget="tokenBudget",
                prefill_chunk="prefillChunk",
                request_timeout_seconds="requestTimeoutSeconds",
            )
        ),
        attention=Attention(
            **_pick(raw.get("attention") or {}, window="window", global_tokens="globalTokens")
        ),
        kv_cache=KvCache(
            **_pick(
                raw.get("kvCache") or {},
                gpu_memory_utilization="gpuMemoryUtilization",
                memory_bytes="memoryBytes",
                max_tokens="maxTokens",
            )
        ),
        parallelism=Parallelism(
            **_pick(
                raw.get("parallelism") or {},
                data_parallel_size="dataParallelSize",
                expert_parallel="expertParallel",
            )
        ),
    )


def _disruption_budget(raw: Mapping[str, Any] | None) -> DisruptionBudget | None:
    return None if raw is None else DisruptionBudget(**_pick(raw, max_unavailable="maxUnavailable"))


def _scale_rule(raw: Mapping[str, Any], default: ScaleRule) -> ScaleRule:
    return ScaleRule(
        **{
            "stabilization_window_seconds": default.stabilization_window_seconds,
            "max_pods": default.max_pods,
            "period_seconds": default.period_seconds,
            **_pick(
                raw,
                stabilization_window_seconds="stabilizationWindowSeconds",
                max_pods="maxPods",
                period_seconds="periodSeconds",
            ),
        }
    )


def _autoscaling(raw: Mapping[str, Any]) -> Autoscaling:
    defaults = Autoscaling()
    return Autoscaling(
        **_pick(
            raw,
            enabled="enabled",
            target_queue_depth="targetQueueDepth",
            tolerance="tolerance",
            interval_seconds="intervalSeconds",
            metric_window_seconds="metricWindowSeconds",
            query="query",
        ),
        scale_up=_scale_rule(raw.get("scaleUp") or {}, defaults.scale_up),
        scale_down=_scale_rule(raw.get("scaleDown") or {}, defaults.scale_down),
    )


def _slo(raw: Mapping[str, Any]) -> SLO:
    queries = raw.get("queries") or {}
    return SLO(
        **_pick(
            raw,
            p99_latency_seconds="p99LatencySeconds",
            ttft_p99_seconds="ttftP99Seconds",
            time_per_output_token_p99_seconds="timePerOutputTokenP99Seconds",
            max_relative_increase="maxRelativeIncrease",
            max_error_ratio="maxErrorRatio",
            analysis_interval_seconds="analysisIntervalSeconds",
            scrape_interval_seconds="scrapeIntervalSeconds",
            metric_delay_seconds="metricDelaySeconds",
            bake_seconds="bakeSeconds",
            initial_delay_seconds="initialDelaySeconds",
            measurements="measurements",
            failure_limit="failureLimit",
            inconclusive_limit="inconclusiveLimit",
            error_limit="errorLimit",
            on_inconclusive="onInconclusive",
            min_requests="minRequests",
        ),
        **_pick(queries, p99_latency_query="p99Latency", error_ratio_query="errorRatio"),
    )


def _routing(raw: Mapping[str, Any]) -> Routing:
    zero = raw.get("scaleToZero")
    return Routing(
        **_pick(raw, strategy="strategy", replicas="replicas", hold_timeout_seconds="holdTimeoutSeconds"),
        scale_to_zero=ScaleToZero(**_pick(zero, idle_seconds="idleSeconds")) if zero is not None else None,
        node_selector=dict(raw.get("nodeSelector") or {}),
        tolerations=tuple(dict(t) for t in raw.get("tolerations") or ()),
    )
