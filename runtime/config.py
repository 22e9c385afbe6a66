"""Model configuration read from a Hugging Face `config.json` (Qwen2-MoE, Qwen3-MoE, Mixtral)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

FAMILIES = ("qwen2_moe", "qwen3_moe", "mixtral")
ARCHITECTURES = {
    "Qwen2MoeForCausalLM": "qwen2_moe",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "MixtralForCausalLM": "mixtral",
}
# Defaults of the transformers config classes, for fields a checkpoint may leave out.
DEFAULT_ROPE_THETA = {"qwen2_moe": 10_000.0, "qwen3_moe": 10_000.0, "mixtral": 1_000_000.0}


class ConfigError(ValueError):
    """A checkpoint's config.json is missing, unreadable or describes something we cannot run."""


@dataclass(frozen=True)
class ModelConfig:
    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int  # dense MLP layers
    moe_intermediate_size: int  # each routed expert
    shared_expert_intermediate_size: int  # 0: no shared expert
    num_experts: int
    top_k: int
    norm_topk_prob: bool
    sparse_layers: tuple[bool, ...]  # per layer: MoE block (True) or dense MLP
    qkv_bias: bool
    o_bias: bool
    qk_norm: bool
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    layer_windows: tuple[int | None, ...]  # per layer sliding window (None: full attention)
    eos_token_ids: tuple[int, ...]
    name: str | None = None


def load_config(model_dir: str | Path) -> ModelConfig:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path}: missing (a checkpoint directory needs config.json)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from err
    return parse_config(raw, source=str(path))


def parse_config(raw: dict, source: str = "config.json") -> ModelConfig:
    family = _family(raw, source)

    def field(name: str, default=None):
        value = raw.get(name, default)
        if value is None:
            raise ConfigError(f"{source}: field '{name}' is required for model_type '{family}'")
        return value

    num_layers = int(field("num_hidden_layers"))
    num_heads = int(field("num_attention_heads"))
    hidden_size = int(field("hidden_size"))
    num_kv_heads = int(field("num_key_value_heads", num_heads))
    if num_heads % num_kv_heads:
        raise ConfigError(
            f"{source}: field 'num_attention_heads' ({num_heads}) must be a multiple of "
            f"'num_key_value_heads' ({num_kv_heads})"
        )
    if family == "mixtral":
        num_experts = int(field("num_local_experts"))
        sparse_layers = (True,) * num_layers
        moe_intermediate = int(field("intermediate_size"))
        shared_intermediate = 0
    else:
        num_experts = int(field("num_experts"))
        moe_intermediate = int(field("moe_intermediate_size"))
        shared_intermediate = (
            int(raw.get("shared_expert_intermediate_size") or 0) if family == "qwen2_moe" else 0
        )
        sparse_layers = _sparse_layers(raw, num_layers, num_experts, source)
    top_k = int(field("num_experts_per_tok"))
    if not 0 < top_k <= num_experts:
        raise ConfigError(f"{source}: field 'num_experts_per_tok' ({top_k}) must be in 1..{num_experts}")
    attention_bias = bool(raw.get("attention_bias", False))
    return ModelConfig(
        family=family,
        vocab_size=int(field("vocab_size")),
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=int(raw.get("head_dim") or hidden_size // num_heads),
        intermediate_size=int(raw.get("intermediate_size") or 0),
        moe_intermediate_size=moe_intermediate,
        shared_expert_intermediate_size=shared_intermediate,
        num_experts=num_experts,
        top_k=top_k,
        norm_topk_prob=True if family == "mixtral" else bool(raw.get("norm_topk_prob", False)),
        sparse_layers=sparse_layers,
        qkv_bias=bool(raw.get("qkv_bias", True)) if family == "qwen2_moe" else attention_bias,
        o_bias=attention_bias if family == "qwen3_moe" else False,
        qk_norm=family == "qwen3_moe",
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=_rope_theta(raw, family, source),
        max_position_embeddings=int(field("max_position_embeddings")),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        layer_windows=_layer_windows(raw, family, num_layers, source),
        eos_token_ids=_int_tuple(raw.get("eos_token_id")),
        name=raw.get("_name_or_path") or None,
    )


def _family(raw: dict, source: str) -> str:
    model_type = raw.get("model_type")
    architectures = raw.get("architectures") or []
    if model_type is None and architectures:
        model_type = ARCHITECTURES.get(architectures[0])
    if model_type not in FAMILIES:
        raise ConfigError(
            f"{source}: unsupported model_type {model_type!r} (architectures {architectures}); "
            f"supported: {', '.join(FAMILIES)}"
        )
    unknown = [a for a in architectures if a not in ARCHITECTURES]
    if unknown:
        raise ConfigError(
            f"{source}: unsupported architecture {unknown[0]!r}; supported: {', '.join(ARCHITECTURES)}"
        )
    return model_type


def _sparse_layers(raw: dict, num_layers: int, num_experts: int, source: str) -> tuple[bool, ...]:
    step = int(raw.get("decoder_sparse_step") or 1)
    mlp_only = set(raw.get("mlp_only_layers") or [])
    if not mlp_only <= set(range(num_layers)):
        raise ConfigError(f"{source}: field 'mlp_only_layers' names layers outside 0..{num_layers - 1}")
    return tuple(i not in mlp_only and num_experts > 0 and (i + 1) % step == 0 for i in range(num_layers))


def _layer_windows(raw: dict, family: str, num_layers: int, source: str) -> tuple[int | None, ...]:
    window = raw.get("sliding_window")
    if family != "mixtral" and not raw.get("use_sliding_window", False):
        window = None
    if not window:
        return (None,) * num_layers
    layer_types = raw.get("layer_types")
    if layer_types is None and family == "qwen2_moe":
        # transformers 5 windows every other layer below max_window_layers for Qwen2-MoE.
        max_window_layers = int(raw.get("max_window_layers", 28))
        layer_types = [
            "sliding_attention" if (i + 1) % 2 and i < max_window_layers else "full_attention"
            for i in range(num_layers)
        ]
    if layer_types is None:
        return (int(window),) * num_layers
    if len(layer_types) != num_layers:
        raise ConfigError(
            f"{source}: field 'layer_types' has {len(layer_types)} entries for {num_layers} layers"
        )
    return tuple(int(window) if kind == "sliding_attention" else None for kind in layer_types)


def _rope_theta(raw: dict, family: str, source: str) -> float:
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type != "default":
        raise ConfigError(
            f"{source}: field 'rope_scaling' type {rope_type!r} is not supported (only default RoPE)"
        )
    return float(params.get("rope_theta") or raw.get("rope_theta") or DEFAULT_ROPE_THETA[family])


def _int_tuple(value) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(int(v) for v in value) if isinstance(value, list) else (int(value),)
