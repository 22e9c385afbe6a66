"""Checkpoints written by the installed transformers itself (`save_pretrained`), in both expert layouts:
per-expert tensors (the default, as hub checkpoints store them) and fused `experts.gate_up_proj` /
`experts.down_proj` (`save_original_format=False`). Our engine must load them and match transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open

from moe_runtime.engine import Engine

from .helpers import greedy, hf_greedy, prompt_ids

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


@pytest.fixture(scope="module")
def hf_saved(checkpoints, tmp_path_factory) -> dict[tuple[str, str], tuple[str, object]]:
    """(family, layout) -> (checkpoint dir written by transformers, the transformers model)."""
    root = tmp_path_factory.mktemp("hf_saved")
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
                shutil.copy(Path(checkpoints[family]) / name, out / name)
            saved[family, layout] = (str(out), hf)
    return saved


@pytest.fixture(params=sorted(LAYOUTS))
def layout(request) -> str:
    return request.param


def tensor_names(path: str) -> set[str]:
    with safe_open(Path(path) / "model.safetensors", "pt") as f:
        return set(f.keys())


def test_transformers_writes_the_layouts_and_fields_under_test(hf_saved):
    per_expert, _ = hf_saved["qwen3_moe", "per_expert"]
    fused, _ = hf_saved["mixtral", "fused"]
    assert "model.layers.1.mlp.experts.5.gate_proj.weight" in tensor_names(per_expert)
    assert {
        "model.layers.0.mlp.experts.gate_up_proj",
        "model.layers.0.mlp.experts.down_proj",
    } <= tensor_names(fused)
    config = json.loads((Path(per_expert) / "config.json").read_text())
    assert config["num_local_experts"] == 6 and "num_experts" not in config and "rope_theta" not in config
    assert "rope_parameters" in json.loads((Path(fused) / "config.json").read_text())


def test_logits_match_transformers(hf_saved, family, layout):
    path, hf = hf_saved[family, layout]
    engine = Engine.load(path, device="cpu", dtype="float32")
    ids = prompt_ids(seed=7, length=29)
    with torch.no_grad():
        reference = hf(torch.tensor([ids])).logits[0, -1]
    logits = engine.forward([(engine.new_sequence(), ids)])[0]
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=0)
    assert reference.std() > 0.3  # far from flat: a wrong detail would show


def test_greedy_tokens_match_transformers(hf_saved, family, layout):
    path, hf = hf_saved[family, layout]
    engine = Engine.load(path, device="cpu", dtype="float32")
    ids = prompt_ids(seed=8, length=11)
    assert greedy(engine, ids, 16) == hf_greedy(hf, ids, 16)
