"""Tensor names and shapes of a Hugging Face checkpoint of each family, in the two expert layouts that exist:

- per-expert (hub checkpoints, and transformers' `save_pretrained` by default): `mlp.experts.{j}.gate_proj`,
  `up_proj`, `down_proj`; Mixtral `block_sparse_moe.experts.{j}.w1` (gate), `w3` (up), `w2` (down);
- fused (transformers 5's in-memory layout, written by `save_pretrained(save_original_format=False)`):
  `mlp.experts.gate_up_proj` [E, 2I, D] (each expert's gate rows, then its up rows) and
  `mlp.experts.down_proj` [E, D, I]; Mixtral's block is then named `mlp` too.
"""

from __future__ import annotations

from collections.abc import Iterable

from moe_runtime.model.config import ModelConfig

PER_EXPERT = "per_expert"
FUSED = "fused"
LAYOUTS = (PER_EXPERT, FUSED)
EXPERT_PROJECTIONS = {  # (gate, up, down)
    "qwen2_moe": ("gate_proj", "up_proj", "down_proj"),
    "qwen3_moe": ("gate_proj", "up_proj", "down_proj"),
    "mixtral": ("w1", "w3", "w2"),
}
FUSED_SUFFIXES = (".experts.gate_up_proj", ".experts.down_proj")


def detect_layout(names: Iterable[str]) -> str:
    return FUSED if any(name.endswith(FUSED_SUFFIXES) for name in names) else PER_EXPERT


def moe_prefix(config: ModelConfig, layer: int, layout: str = PER_EXPERT) -> str:
    block = "block_sparse_moe" if config.family == "mixtral" and layout == PER_EXPERT else "mlp"
    return f"model.layers.{layer}.{block}"


def expert_names(config: ModelConfig, layer: int, expert: int) -> tuple[str, str, str]:
    prefix = f"{moe_prefix(config, layer)}.experts.{expert}"
    return tuple(f"{prefix}.{proj}.weight" for proj in EXPERT_PROJECTIONS[config.family])


def fused_expert_names(config: ModelConfig, layer: int) -> tuple[str, str]:
    prefix = moe_prefix(config, layer, FUSED)
    return tuple(prefix + suffix for suffix in FUSED_SUFFIXES)


def mlp_names(prefix: str) -> tuple[str, str, str]:
    return tuple(f"{prefix}.{proj}.weight" for proj in ("gate_proj", "up_proj", "down_proj"))


def tensor_shapes(config: ModelConfig, layout: str = PER_EXPERT) -> dict[str, tuple[int, ...]]:
    """Every tensor the checkpoint must hold, with its shape."""
    d, hd = config.hidden_size, config.head_dim
    q_out, kv_out = config.num_heads * hd, config.num_kv_heads * hd
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (config.vocab_size, d),
        "model.norm.weight": (d,),
    }
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, d)
    for i in range(config.num_layers):
        p = f"model.layers.{i}"
        shapes[f"{p}.input_layernorm.weight"] = (d,)
        shapes[f"{p}.post_attention_layernorm.weight"] = (d,)
        for proj, out in (("q_proj", q_out), ("k_proj", kv_out), ("v_proj", kv_out)):
            shapes[f"{p}.self_attn.{proj}.weight"] = (out, d)
            if config.qkv_bias:
                shapes[f"{p}.self_attn.{proj}.bias"] = (out,)
        shapes[f"{p}.self_attn.o_proj.weight"] = (d, q_out)
        if config.o_bias:
            shapes[f"{p}.self_attn.o_proj.bias"] = (d,)
        if config.qk_norm:
            shapes[f"{p}.self_attn.q_norm.weight"] = (hd,)
            shapes[f"{p}.self_attn.k_norm.weight"] = (hd,)
        if config.sparse_layers[i]:
            shapes.update(_sparse_shapes(config, i, layout))
        else:
            shapes.update(_mlp_shapes(f"{p}.mlp", d, config.intermediate_size))
    return shapes


def _mlp_shapes(prefix: str, d: int, inner: int) -> dict[str, tuple[int, ...]]:
    gate, up, down = mlp_names(prefix)
    return {gate: (inner, d), up: (inner, d), down: (d, inner)}


def _sparse_shapes(config: ModelConfig, layer: int, layout: str) -> dict[str, tuple[int, ...]]:
    d, inner, experts = config.hidden_size, config.moe_intermediate_size, config.num_experts
    prefix = moe_prefix(config, layer, layout)
    shapes = {f"{prefix}.gate.weight": (experts, d)}
    if layout == FUSED:
        gate_up, down = fused_expert_names(config, layer)
        shapes.update({gate_up: (experts, 2 * inner, d), down: (experts, d, inner)})
    else:
        for j in range(experts):
            gate, up, down = expert_names(config, layer, j)
            shapes.update({gate: (inner, d), up: (inner, d), down: (d, inner)})
    if config.shared_expert_intermediate_size:
        shapes.update(_mlp_shapes(f"{prefix}.shared_expert", d, config.shared_expert_intermediate_size))
        shapes[f"{prefix}.shared_expert_gate.weight"] = (1, d)
    return shapes
