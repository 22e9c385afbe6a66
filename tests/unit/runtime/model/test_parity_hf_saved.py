"""Checkpoints written by the installed transformers itself (`save_pretrained`), in both expert layouts:
per-expert tensors (the default, as hub checkpoints store them) and fused `experts.gate_up_proj` /
`experts.down_proj` (`save_original_format=False`). Our engine must load them and match transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from moe_runtime.engine.engine import Engine
from tests.unit.runtime.helpers import greedy, hf_greedy, prompt_ids
from tests.unit.runtime.hf_models import LAYOUTS


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
