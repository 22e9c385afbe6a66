"""Small random models built and saved by the installed transformers itself, one per family."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import transformers

COMMON = {
    "vocab_size": 512,
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "initializer_range": 0.08,
}
# What changes the math in each family: Qwen2-MoE's shared expert and a dense layer, Qwen3-MoE's head_dim,
# renormalised top-k, every other layer sparse and attention biases (o_proj too), Mixtral's tied embeddings
# and one kv head. RoPE theta is set through rope_parameters, as transformers 5 writes it.
HF_CONFIGS = {
    "qwen2_moe": lambda: transformers.Qwen2MoeConfig(
        **COMMON,
        intermediate_size=128,
        moe_intermediate_size=64,
        shared_expert_intermediate_size=96,
        num_experts=8,
        num_experts_per_tok=2,
        mlp_only_layers=[1],
        rope_parameters={"rope_type": "default", "rope_theta": 5_000.0},
    ),
    "qwen3_moe": lambda: transformers.Qwen3MoeConfig(
        **COMMON,
        head_dim=32,
        intermediate_size=128,
        moe_intermediate_size=64,
        num_experts=6,
        num_experts_per_tok=3,
        norm_topk_prob=True,
        decoder_sparse_step=2,
        attention_bias=True,
    ),
    "mixtral": lambda: transformers.MixtralConfig(
        **{**COMMON, "num_key_value_heads": 1},
        intermediate_size=64,
        num_local_experts=8,
        num_experts_per_tok=2,
        tie_word_embeddings=True,
    ),
}
LAYOUTS = {"per_expert": {}, "fused": {"save_original_format": False}}


def save_hf_models(root: Path, tokenizers: dict[str, str]) -> dict[tuple[str, str], tuple[str, object]]:
    """(family, layout) -> (checkpoint dir written by transformers' save_pretrained, the transformers model).
    Tokenizer files come from `tokenizers[family]` (a checkpoint directory of the same vocabulary)."""
    saved = {}
    for index, (family, make_config) in enumerate(sorted(HF_CONFIGS.items())):
        torch.manual_seed(index)
        hf = transformers.AutoModelForCausalLM.from_config(make_config(), dtype=torch.float32).eval()
        with torch.no_grad():  # move every weight off its init (norms off one, biases off zero)
            for param in hf.parameters():
                param.add_(0.05 * torch.randn_like(param))
        for layout, options in LAYOUTS.items():
            out = root / f"{family}-{layout}"
            hf.save_pretrained(out, **options)
            for name in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copy(Path(tokenizers[family]) / name, out / name)
            saved[family, layout] = (str(out), hf)
    return saved
