"""The KV cache capacity the scheduler admits against: sized from memory, vLLM's rules, overrides first."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from moe_runtime.engine import kv_budget
from moe_runtime.engine.kv_budget import KvBudgetError, available_cpu_memory, capacity_tokens, cpu_cache_bytes

GIB = 2**30


def cpu_engine(bytes_per_token: int = 1024, max_context: int = 4096):
    return SimpleNamespace(
        device=torch.device("cpu"), max_context=max_context, kv_bytes_per_token=lambda: bytes_per_token
    )


def capacity(engine, **kw) -> int:
    settings = {"max_kv_tokens": None, "kv_cache_memory_bytes": None, "gpu_memory_utilization": 0.9,
                "step_tokens": 512, "tokens_per_sequence": None, **kw}  # fmt: skip
    return capacity_tokens(engine, **settings)


def test_cuda_budget_is_the_utilization_share_less_what_is_used_and_the_activation_peak():
    assert kv_budget.cuda_cache_bytes(
        total=80 * GIB, used=20 * GIB, activation_peak=2 * GIB, utilization=0.9
    ) == (int(72 * GIB) - 22 * GIB)


def test_cpu_budget_is_half_the_available_memory_capped_at_4_gib():
    assert cpu_cache_bytes(2 * GIB) == GIB
    assert cpu_cache_bytes(64 * GIB) == 4 * GIB


def test_overrides_win_in_order_tokens_then_bytes_then_memory(monkeypatch):
    monkeypatch.setattr(kv_budget, "available_cpu_memory", lambda: 16 * GIB)
    engine = cpu_engine(bytes_per_token=1024)
    assert capacity(engine) == 4 * GIB // 1024
    assert capacity(engine, kv_cache_memory_bytes=8 * 2**20) == 8 * 1024
    assert capacity(engine, kv_cache_memory_bytes=8 * 2**20, max_kv_tokens=77) == 77


def test_a_budget_without_room_for_one_longest_sequence_is_refused_naming_the_settings(monkeypatch):
    engine = cpu_engine(bytes_per_token=1024, max_context=4096)
    with pytest.raises(KvBudgetError, match="--max-model-len"):
        capacity(engine, kv_cache_memory_bytes=4095 * 1024)
    assert capacity(engine, kv_cache_memory_bytes=100 * 1024, tokens_per_sequence=100) == 100  # windowed


def test_available_cpu_memory_takes_the_lower_of_the_host_and_the_cgroup(tmp_path: Path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text("MemTotal: 100 kB\nMemAvailable:   8388608 kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    assert available_cpu_memory(tmp_path / "proc", cgroup) == 8 * GIB
    (cgroup / "memory.max").write_text("max\n")
    (cgroup / "memory.current").write_text(f"{GIB}\n")
    assert available_cpu_memory(tmp_path / "proc", cgroup) == 8 * GIB  # no limit
    (cgroup / "memory.max").write_text(f"{3 * GIB}\n")
    assert available_cpu_memory(tmp_path / "proc", cgroup) == 2 * GIB


def test_the_real_engine_counts_every_layer_of_keys_and_values(tmp_path):
    from moe_runtime.engine.engine import Engine
    from moe_runtime.tools.checkpoint import CheckpointSpec, write_checkpoint

    path = write_checkpoint(
        CheckpointSpec("qwen3_moe", num_layers=3, num_kv_heads=2, head_dim=8), tmp_path / "m"
    )
    engine = Engine.load(str(path), device="cpu", dtype="bfloat16", max_model_len=64)
    assert engine.kv_bytes_per_token() == 3 * 2 * 2 * 8 * 2
    assert engine.max_context == 64
    with pytest.raises(ValueError, match="max_position_embeddings"):
        Engine.load(str(path), device="cpu", max_model_len=10**9)
