"""Checkpoint loading: sharded files, and errors that name the file, field or tensor at fault."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from moe_runtime.engine.engine import Engine
from moe_runtime.model.config import ConfigError
from moe_runtime.model.loader import CheckpointError
from moe_runtime.model.tokenizer import TokenizerError
from moe_runtime.tools.checkpoint import CheckpointSpec, write_checkpoint
from tests.unit.runtime.conftest import SPECS
from tests.unit.runtime.helpers import prompt_ids


@pytest.fixture
def broken(checkpoints, tmp_path) -> Path:
    """A writable copy of the qwen2_moe checkpoint to break."""
    return Path(shutil.copytree(checkpoints["qwen2_moe"], tmp_path / "broken"))


def edit_config(path: Path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def test_sharded_checkpoint_loads_the_same_weights(engines, tmp_path):
    spec = SPECS["qwen3_moe"]
    sharded = write_checkpoint(
        CheckpointSpec(**{**spec.__dict__, "shard_bytes": 60_000}), tmp_path / "sharded"
    )
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2 and not (sharded / "model.safetensors").exists()
    prompt = prompt_ids(100, 10)
    ours = Engine.load(str(sharded))
    torch.testing.assert_close(
        ours.forward([(ours.new_sequence(), prompt)]),
        engines["qwen3_moe"].forward([(engines["qwen3_moe"].new_sequence(), prompt)]),
    )


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_fused_expert_layout_loads_the_same_model(engines, family, tmp_path):
    fused = write_checkpoint(
        CheckpointSpec(**{**SPECS[family].__dict__, "layout": "fused"}), tmp_path / "fused"
    )
    names = set(load_file(fused / "model.safetensors"))
    assert "model.layers.0.mlp.experts.gate_up_proj" in names and "model.layers.0.mlp.gate.weight" in names
    assert not any(".experts.0." in name or "block_sparse_moe" in name for name in names)
    prompt = prompt_ids(101, 12)
    ours = Engine.load(str(fused))
    torch.testing.assert_close(
        ours.forward([(ours.new_sequence(), prompt)]),
        engines[family].forward([(engines[family].new_sequence(), prompt)]),
    )


def test_fused_tensor_with_a_wrong_shape_is_named(tmp_path):
    path = write_checkpoint(CheckpointSpec("qwen3_moe", num_layers=1, layout="fused"), tmp_path / "fused")
    edit_config(path, moe_intermediate_size=32)
    with pytest.raises(
        CheckpointError,
        match=r"tensor 'model.layers.0.mlp.experts.gate_up_proj' has shape \(8, 128, 64\), but config.json implies \(8, 64, 64\)",
    ):
        Engine.load(str(path))


def test_checkpoint_keeps_per_expert_tensor_names(checkpoints):
    names = set(load_file(Path(checkpoints["mixtral"]) / "model.safetensors"))
    assert "model.layers.0.block_sparse_moe.experts.7.w3.weight" in names
    assert "lm_head.weight" not in names  # tied embeddings
    names = set(load_file(Path(checkpoints["qwen2_moe"]) / "model.safetensors"))
    assert {
        "model.layers.0.mlp.experts.3.down_proj.weight",
        "model.layers.0.mlp.shared_expert_gate.weight",
        "model.layers.1.mlp.gate_proj.weight",
        "model.layers.2.self_attn.q_proj.bias",
    } <= names


def test_missing_config(broken):
    (broken / "config.json").unlink()
    with pytest.raises(ConfigError, match="config.json: missing"):
        Engine.load(str(broken))


def test_unknown_model_type(broken):
    edit_config(broken, model_type="llama", architectures=["LlamaForCausalLM"])
    with pytest.raises(ConfigError, match="unsupported model_type 'llama'"):
        Engine.load(str(broken))


def test_unknown_architecture(broken):
    edit_config(broken, architectures=["Qwen2MoeForSequenceClassification"])
    with pytest.raises(ConfigError, match="unsupported architecture 'Qwen2MoeForSequenceClassification'"):
        Engine.load(str(broken))


def test_missing_required_field(broken):
    edit_config(broken, num_experts=None)
    with pytest.raises(ConfigError, match="field 'num_experts'"):
        Engine.load(str(broken))


def test_unsupported_rope_scaling(broken):
    edit_config(broken, rope_scaling={"type": "yarn", "factor": 4.0})
    with pytest.raises(ConfigError, match="rope_scaling"):
        Engine.load(str(broken))


def test_shape_disagreeing_with_config_names_the_tensor(broken):
    edit_config(broken, moe_intermediate_size=32)
    with pytest.raises(
        CheckpointError,
        match=r"model.safetensors: tensor 'model.layers.0.mlp.experts.0.gate_proj.weight' has shape \(64, 64\), but config.json implies \(32, 64\)",
    ):
        Engine.load(str(broken))


def test_missing_tensor_is_named(broken):
    tensors = load_file(broken / "model.safetensors")
    del tensors["model.layers.2.mlp.experts.5.up_proj.weight"]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="'model.layers.2.mlp.experts.5.up_proj.weight' is missing"):
        Engine.load(str(broken))


def test_missing_weights_file(broken):
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing model.safetensors \(or model.safetensors.index.json"):
        Engine.load(str(broken))


def test_missing_shard_named_by_the_index(tmp_path):
    path = write_checkpoint(CheckpointSpec("mixtral", shard_bytes=50_000), tmp_path / "sharded")
    second = sorted(path.glob("model-*.safetensors"))[1]
    second.unlink()
    with pytest.raises(CheckpointError, match=f"{second.name}: missing"):
        Engine.load(str(path))


def test_missing_tokenizer(broken):
    (broken / "tokenizer.json").unlink()
    with pytest.raises(TokenizerError, match="tokenizer.json: missing"):
        Engine.load(str(broken))


def test_bad_quantize_option(checkpoints):
    with pytest.raises(ValueError, match="quantize"):
        Engine.load(checkpoints["mixtral"], quantize="int4")
