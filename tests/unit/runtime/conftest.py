"""Tiny random checkpoints of each family, written once per test session with the runtime's own writer."""

from __future__ import annotations

import pytest
import torch

from moe_runtime.engine.engine import Engine
from moe_runtime.tools.checkpoint import CheckpointSpec, write_checkpoint
from tests.unit.runtime.hf_models import save_hf_models

# Every family with what changes its math: Qwen2-MoE with a shared expert, q/k/v biases and a dense layer
# between sparse ones; Qwen3-MoE with q/k norms, an explicit head_dim, renormalised top-k and
# decoder_sparse_step=2; Mixtral with tied embeddings and grouped-query attention. The larger init
# makes every block move the residual stream, so a wrong detail shows in the logits.
SPECS = {
    "qwen2_moe": CheckpointSpec("qwen2_moe", mlp_only_layers=(1,), init_std=0.08, seed=1),
    "qwen3_moe": CheckpointSpec(
        "qwen3_moe",
        head_dim=32,
        norm_topk_prob=True,
        decoder_sparse_step=2,
        num_experts=6,
        top_k=3,
        init_std=0.08,
        seed=2,
    ),
    "mixtral": CheckpointSpec("mixtral", num_kv_heads=1, tie_word_embeddings=True, init_std=0.08, seed=3),
}


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {family: str(write_checkpoint(spec, root / family)) for family, spec in SPECS.items()}


@pytest.fixture(scope="session")
def engines(checkpoints) -> dict[str, Engine]:
    return {family: Engine.load(path, device="cpu", dtype="float32") for family, path in checkpoints.items()}


@pytest.fixture(scope="session")
def hf_saved(checkpoints, tmp_path_factory) -> dict[tuple[str, str], tuple[str, object]]:
    """Checkpoints written by the installed transformers: (family, layout) -> (directory, its model)."""
    return save_hf_models(tmp_path_factory.mktemp("hf_saved"), checkpoints)


@pytest.fixture(params=sorted(SPECS))
def family(request) -> str:
    return request.param


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine run fastest on one thread: no waiting on a busy sibling."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
