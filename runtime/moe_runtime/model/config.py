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
_COMMON = {"hidden_act": "silu", "tie_word_embeddings": False, "bos_token_id": None, "eos_token_id": None}
_QWEN = {
    **_COMMON,
    "vocab_size": 151936,
    "hidden_size": 2048,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 32768,
    "use_sliding_window": False,
    "sliding_window": 4096,
    "decoder_sparse_step": 1,
    "norm_topk_prob": False,
    "mlp_only_layers": None,
}
# transformers' config classes, as (the defaults of the fields we read, attribute_map): a checkpoint may leave
# any field out, and an aliased field may be written under either name (transformers 5 writes Qwen3-MoE's
# expert count as num_local_experts).
FAMILY_FIELDS: dict[str, tuple[dict, dict[str, str]]] = {
    "qwen2_moe": (
        {
            **_QWEN,
            "intermediate_size": 5632,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "num_key_value_heads": 16,
            "max_window_layers": 28,
            "moe_intermediate_size": 1408,
            "shared_expert_intermediate_size": 5632,
            "num_experts_per_tok": 4,
            "num_experts": 60,
            "qkv_bias": True,
            "layer_types": None,
        },
        {},
    ),
    "qwen3_moe": (
        {
            **_QWEN,
            "intermediate_size": 6144,
            "num_hidden_layers": 24,
            "num_attention_heads": 32,
            "num_key_value_heads": 4,
            "attention_bias": False,
            "moe_intermediate_size": 768,
            "num_experts_per_tok": 8,
            "num_experts": 128,
        },
        {"num_experts": "num_local_experts"},
    ),
    "mixtral": (
        {
            **_COMMON,
            "vocab_size": 32000,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": None,
            "max_position_embeddings": 4096 * 32,
            "rms_norm_eps": 1e-5,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "sliding_window": None,
            "num_experts_per_tok": 2,
            "num_local_experts": 8,
        },
        {"num_experts": "num_local_experts"},
    ),
}
DEFAULT_ROPE_THETA = {"qwen2_moe": 10_000.0, "qwen3_moe": 10_000.0, "mixtral": 1_000_000.0}
LEGACY_LAYER_TYPES = {"attention": "full_attention"}


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
    """What transformers' config class and modeling code make of `raw`; a field set to null where the model
    needs a value, or anything our engine does not run, is a ConfigError naming the field."""
    family = _family(raw, source)
    attrs = _attributes(raw, family)

    def field(name: str):
        value = attrs[name]
        if value is None:
            raise ConfigError(f"{source}: field '{name}' is null; model_type '{family}' needs a value")
        return value

    num_layers = int(field("num_hidden_layers"))
    num_heads = int(field("num_attention_heads"))
    hidden_size = int(field("hidden_size"))
    if family == "mixtral" and attrs["num_key_value_heads"] is None:
        attrs["num_key_value_heads"] = num_heads
    num_kv_heads = int(field("num_key_value_heads"))
    if num_heads % num_kv_heads:
        raise ConfigError(
            f"{source}: field 'num_attention_heads' ({num_heads}) must be a multiple of "
            f"'num_key_value_heads' ({num_kv_heads})"
        )
    if field("hidden_act") != "silu":
        raise ConfigError(
            f"{source}: field 'hidden_act' {attrs['hidden_act']!r} is not supported (only silu)"
        )
    num_experts = int(field(FAMILY_FIELDS[family][1].get("num_experts", "num_experts")))
    if family == "mixtral":
        sparse_layers = (True,) * num_layers
        moe_intermediate = int(field("intermediate_size"))
    else:
        moe_intermediate = int(field("moe_intermediate_size"))
        sparse_layers = _sparse_layers(attrs, num_layers, num_experts, source)
    top_k = int(field("num_experts_per_tok"))
    if not 0 < top_k <= num_experts:
        raise ConfigError(f"{source}: field 'num_experts_per_tok' ({top_k}) must be in 1..{num_experts}")
    qkv_bias = {"qwen2_moe": attrs.get("qkv_bias"), "qwen3_moe": attrs.get("attention_bias")}.get(family)
    head_dim = attrs.get("head_dim") or hidden_size // num_heads  # Mixtral writes head_dim: null
    return ModelConfig(
        family=family,
        vocab_size=int(field("vocab_size")),
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=int(head_dim),
        intermediate_size=int(field("intermediate_size")),
        moe_intermediate_size=moe_intermediate,
        shared_expert_intermediate_size=(
            int(field("shared_expert_intermediate_size")) if family == "qwen2_moe" else 0
        ),
        num_experts=num_experts,
        top_k=top_k,
        norm_topk_prob=True if family == "mixtral" else bool(field("norm_topk_prob")),
        sparse_layers=sparse_layers,
        qkv_bias=bool(qkv_bias),
        o_bias=bool(qkv_bias) if family == "qwen3_moe" else False,
        qk_norm=family == "qwen3_moe",
        rms_norm_eps=float(field("rms_norm_eps")),
        rope_theta=_rope_theta(raw, attrs, family, source),
        max_position_embeddings=int(field("max_position_embeddings")),
        tie_word_embeddings=bool(field("tie_word_embeddings")),
        layer_windows=_layer_windows(attrs, family, num_layers, source),
        eos_token_ids=_int_tuple(attrs["eos_token_id"]),
        name=raw.get("_name_or_path") or None,
    )


def _attributes(raw: dict, family: str) -> dict:
    """The attributes transformers' config class ends up with: each field from raw or its default, then every
    other key of raw, in order, each stored under its attribute_map name (so the last one written wins)."""
    defaults, attribute_map = FAMILY_FIELDS[family]
    attrs = {}
    for name, default in defaults.items():
        attrs[attribute_map.get(name, name)] = raw.get(name, default)
    for name, value in raw.items():
        if name not in defaults:
            attrs[attribute_map.get(name, name)] = value
    if attrs.get("mlp_only_layers") is None:
        attrs["mlp_only_layers"] = []
    return attrs


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


def _sparse_layers(attrs: dict, num_layers: int, num_experts: int, source: str) -> tuple[bool, ...]:
    step = int(attrs["decoder_sparse_step"])
    mlp_only = set(attrs["mlp_only_layers"])
    if not mlp_only <= set(range(num_layers)):
        raise ConfigError(f"{source}: field 'mlp_only_layers' names layers outside 0..{num_layers - 1}")
    return tuple(i not in mlp_only and num_experts > 0 and (i + 1) % step == 0 for i in range(num_layers))


def _layer_windows(attrs: dict, family: str, num_layers: int, source: str) -> tuple[int | None, ...]:
    """Qwen3-MoE and Mixtral window every layer when sliding_window is set (Qwen3-MoE only with
    use_sliding_window); Qwen2-MoE windows the layers its layer_types call sliding_attention."""
    window = attrs["sliding_window"]
    if family == "qwen3_moe" and not attrs["use_sliding_window"]:
        window = None
    if family != "qwen2_moe":
        return (int(window) if window else None,) * num_layers
    if not attrs["use_sliding_window"]:
        window = 0
    layer_types = attrs["layer_types"]
    if layer_types is None:
        max_window_layers = int(attrs["max_window_layers"])
        layer_types = [
            "sliding_attention" if (i + 1) % 2 and i < max_window_layers and window != 0 else "full_attention"
            for i in range(num_layers)
        ]
    if len(layer_types) != num_layers:
        raise ConfigError(
            f"{source}: field 'layer_types' has {len(layer_types)} entries for {num_layers} layers"
        )
    kinds = [LEGACY_LAYER_TYPES.get(kind, kind) for kind in layer_types]
    unknown = set(kinds) - {"full_attention", "sliding_attention"}
    if unknown:
        raise ConfigError(f"{source}: field 'layer_types' has unsupported {sorted(unknown)}")
    if "sliding_attention" in kinds and not window:
        raise ConfigError(
            f"{source}: field 'layer_types' has sliding_attention layers, but 'sliding_window' is {window!r}"
            " (with use_sliding_window false it is 0)"
        )
    return tuple(int(window) if kind == "sliding_attention" else None for kind in kinds)


def _rope_theta(raw: dict, attrs: dict, family: str, source: str) -> float:
    """transformers' RoPE standardisation: a legacy rope_scaling replaces rope_parameters; rope_theta at the
    top level (or the family's default) fills in a theta the dict lacks."""
    key = "rope_scaling" if raw.get("rope_scaling") else "rope_parameters"
    params = dict(raw.get(key) or {})
    layer_types = attrs.get("layer_types") or ()
    if any(name in layer_types for name in params):
        raise ConfigError(
            f"{source}: field '{key}' per layer type is not supported (one RoPE for all layers)"
        )
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type != "default":
        raise ConfigError(
            f"{source}: field '{key}' rope_type {rope_type!r} is not supported (only default RoPE)"
        )
    theta = params.get("rope_theta")
    return float(theta if theta is not None else raw.get("rope_theta", DEFAULT_ROPE_THETA[family]))


def _int_tuple(value) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(int(v) for v in value) if isinstance(value, list) else (int(value),)
