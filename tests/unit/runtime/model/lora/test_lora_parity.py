"""Adapters served by our engine against PEFT's merge_and_unload() on the transformers model, for each
family and both expert layouts: fp32 logits within 1e-4 and the same greedy tokens."""

from __future__ import annotations

import pytest
import torch

from moe_runtime.engine.engine import Engine
from tests.unit.runtime.helpers import greedy, hf_greedy, prompt_ids
from tests.unit.runtime.lora_adapters import peft_fused_adapter, peft_reference, write_per_expert_adapter

# Each family exercises a different part of PEFT's scaling rules on top of alpha / r.
FUSED_OPTIONS = {
    "qwen2_moe": {
        "rank_pattern": {"o_proj": 2, "down_proj": 6},
        "alpha_pattern": {"shared_expert.up_proj": 3},
    },
    "qwen3_moe": {"lora_alpha": 16, "use_rslora": True, "rank_pattern": {"gate_up_proj": 2, "k_proj": 6}},
    "mixtral": {"r": 8, "alpha_pattern": {"q_proj": 4}},
}
PER_EXPERT_OPTIONS = {"rank_pattern": {"v_proj": 2}, "alpha_pattern": {"q_proj": 2}}


@pytest.fixture(scope="module")
def cases(hf_saved, tmp_path_factory):
    """(family, layout) -> (engine with the adapter loaded as "x", the merged transformers model)."""
    root = tmp_path_factory.mktemp("lora_parity")
    result = {}
    for seed, family in enumerate(sorted(FUSED_OPTIONS)):
        path, hf = hf_saved[family, "per_expert"]
        fused_dir = root / f"{family}-fused"
        merged_fused = peft_fused_adapter(
            hf, fused_dir, seed=seed, mlp=family == "qwen2_moe", **FUSED_OPTIONS[family]
        )
        per_expert_dir = write_per_expert_adapter(
            hf, family, root / f"{family}-per-expert", seed=seed + 10, config=PER_EXPERT_OPTIONS
        )
        layouts = {
            "fused": (fused_dir, merged_fused),
            "per_expert": (per_expert_dir, peft_reference(hf, per_expert_dir)),
        }
        for layout, (adapter_dir, merged) in layouts.items():
            engine = Engine.load(path, device="cpu", dtype="float32")
            engine.load_adapter("x", str(adapter_dir))
            result[family, layout] = (engine, merged, hf)
    return result


@pytest.fixture(params=["fused", "per_expert"])
def layout(request) -> str:
    return request.param


def test_logits_match_peft_merged(cases, family, layout):
    engine, merged, base = cases[family, layout]
    ids = prompt_ids(seed=21, length=19)
    with torch.no_grad():
        reference = merged(torch.tensor([ids])).logits[0, -1]
        unadapted = base(torch.tensor([ids])).logits[0, -1]
    logits = engine.forward([(engine.new_sequence(), ids, "x")])[0]
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=0)
    assert (reference - unadapted).abs().max() > 0.1  # the adapter matters: a dropped target would show


def test_greedy_tokens_match_peft_merged(cases, family, layout):
    engine, merged, _ = cases[family, layout]
    ids = prompt_ids(seed=22, length=9)
    assert greedy(engine, ids, 12, adapter="x") == hf_greedy(merged, ids, 12)
