"""The decoder: RMSNorm, rotary embeddings, grouped-query attention and the feed-forward blocks.

The model works on a flat batch: the new tokens of every sequence laid end to end ([T] ids with their
positions), so prefill chunks and decode steps of different lengths run as one set of matmuls. Attention
reads and writes the paged KV cache as the step's plan says (`attention.plan_step`): each sequence against its
own keys, where they lie.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from moe_runtime.model import native
from moe_runtime.model.attention import KvPool, StepPlan, attend
from moe_runtime.model.config import ModelConfig
from moe_runtime.model.lora.batch import LayerBatch, LoraBatch
from moe_runtime.model.moe import DenseMLP, SparseMoE, dense_mlp, sparse_moe
from moe_runtime.model.quant import Weight, embed, linear


@dataclass
class Attention:
    qkv: Weight  # [(heads + 2 * kv_heads) * head_dim, D]: q, k and v projections stacked
    qkv_bias: torch.Tensor | None
    o: Weight
    o_bias: torch.Tensor | None
    # Qwen3: RMSNorm over head_dim before RoPE, one weight row per q head then per kv head, so q and k are
    # normed (and rotated) together in a few ops.
    qk_norm: torch.Tensor | None  # [heads + kv_heads, head_dim]


@dataclass
class Layer:
    input_norm: torch.Tensor
    attention: Attention
    post_attention_norm: torch.Tensor
    mlp: DenseMLP | SparseMoE


@dataclass
class Weights:
    embed: Weight  # [V, D]
    layers: list[Layer]
    final_norm: torch.Tensor
    lm_head: Weight  # [V, D]; the same object as `embed` when embeddings are tied


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if native.applies(x, weight):
        return native.rms_norm(x, weight, eps)
    # Normalised in fp32 and cast before the weight multiplies, as transformers does. Spelled out rather than
    # F.rms_norm: on the CPU torch's fused kernel took 2-3x as long at decode sizes (15% of a serving
    # engine's time at one client).
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True).add_(eps))
    return weight * h.to(x.dtype)


@functools.cache
def _inverse_frequencies(head_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=device) / head_dim)


def rope_tables(
    positions: torch.Tensor, head_dim: int, theta: float, dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    freqs = positions[:, None].float() * _inverse_frequencies(head_dim, theta, positions.device)
    angles = torch.cat([freqs, freqs], dim=-1)
    return angles.cos().to(dtype)[:, None], angles.sin().to(dtype)[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def forward(
    weights: Weights,
    config: ModelConfig,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    pool: KvPool,
    plan: StepPlan,
    expert_counts: torch.Tensor | None = None,
    layer_outputs: list[torch.Tensor] | None = None,
    lora: LoraBatch | None = None,
) -> torch.Tensor:
    """Run the new tokens of a step (every sequence's laid end to end in `tokens`) through the decoder, writing
    their keys/values into `pool` where `plan` says. Returns the final-normed hidden states [T, D].
    Adds tokens per expert into `expert_counts` [layers, experts]; appends each layer's output to `layer_outputs`;
    `lora` says which rows use which adapter (None: every row runs the base model alone)."""
    dtype = weights.final_norm.dtype
    x = embed(tokens, weights.embed, dtype)
    cos, sin = rope_tables(positions, config.head_dim, config.rope_theta, dtype)
    for index, layer in enumerate(weights.layers):
        layer_lora = lora.layer(index) if lora is not None else None
        h = rms_norm(x, layer.input_norm, config.rms_norm_eps)
        x = x + attention(layer.attention, config, h, cos, sin, pool, index, plan, layer_lora)
        h = rms_norm(x, layer.post_attention_norm, config.rms_norm_eps)
        if isinstance(layer.mlp, SparseMoE):
            out, counts = sparse_moe(layer.mlp, h, layer_lora)
            if expert_counts is not None:
                expert_counts[index] += counts
        else:
            out = dense_mlp(layer.mlp, h, layer_lora)
        x = x + out
        if layer_outputs is not None:
            layer_outputs.append(x)
    return rms_norm(x, weights.final_norm, config.rms_norm_eps)


def attention(
    attn: Attention, config: ModelConfig, x, cos, sin, pool: KvPool, index: int, plan: StepPlan,
    lora: LayerBatch | None = None,
) -> torch.Tensor:  # fmt: skip
    heads, kv_heads, head_dim = config.num_heads, config.num_kv_heads, config.head_dim
    qkv = linear(x, attn.qkv, attn.qkv_bias)
    if lora is not None:
        lora.add("qkv", qkv, x)
    qkv = qkv.view(-1, heads + 2 * kv_heads, head_dim)
    qk, v = qkv[:, : heads + kv_heads], qkv[:, heads + kv_heads :]
    if native.applies(qk, cos, *([] if attn.qk_norm is None else [attn.qk_norm])):
        qk = native.norm_rope(qk, attn.qk_norm, config.rms_norm_eps, cos, sin)
    else:
        if attn.qk_norm is not None:
            qk = rms_norm(qk, attn.qk_norm, config.rms_norm_eps)
        qk = apply_rope(qk, cos, sin)
    q, k = qk.split([heads, kv_heads], dim=1)
    out = attend(pool, index, plan, q, k, v).reshape(-1, heads * head_dim)
    projected = linear(out, attn.o, attn.o_bias)
    if lora is not None:
        lora.add("o", projected, out)
    return projected


def logits(weights: Weights, hidden: torch.Tensor) -> torch.Tensor:
    return linear(hidden, weights.lm_head).float()
