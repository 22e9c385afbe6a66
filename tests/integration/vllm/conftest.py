"""The setup every vLLM test shares: vLLM's CPU build (the tests fail without it), per session one MoE checkpoint,
one dense checkpoint and three LoRA adapters of the dense one, and per test module an operator that reads the
stack's Prometheus (`md_namespace` and `models` come from tests/integration/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.lora_support import peft_adapter
from tests.integration.operator_support import OperatorProcess
from tests.integration.vllm.support import require_vllm, write_dense_checkpoint, write_moe_checkpoint


@pytest.fixture(scope="session")
def vllm_env() -> Path:
    """The folder of the environment `make vllm` installed."""
    return require_vllm()


@pytest.fixture(scope="session")
def moe_checkpoint(vllm_env, tmp_path_factory) -> Path:
    return write_moe_checkpoint(tmp_path_factory.mktemp("vllm-moe") / "qwen3-moe")


@pytest.fixture(scope="session")
def deep_moe_checkpoint(vllm_env, tmp_path_factory) -> Path:
    """Six times as many layers: every token, the first included, takes several times as long to compute."""
    return write_moe_checkpoint(tmp_path_factory.mktemp("vllm-moe-deep") / "qwen3-moe", layers=24)


@pytest.fixture(scope="session")
def dense_checkpoint(vllm_env, tmp_path_factory) -> Path:
    return write_dense_checkpoint(tmp_path_factory.mktemp("vllm-dense") / "qwen3-dense")


@pytest.fixture(scope="session")
def dense_adapters(dense_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """Three adapters in one folder: sql and chat of rank 4, wide of rank 16 (above the tests' max rank, 8)."""
    root = tmp_path_factory.mktemp("vllm-adapters")
    return {
        "sql": peft_adapter(dense_checkpoint, root / "sql", seed=1, experts=False),
        "chat": peft_adapter(dense_checkpoint, root / "chat", seed=2, experts=False),
        "wide": peft_adapter(dense_checkpoint, root / "wide", seed=3, experts=False, r=16),
    }


@pytest.fixture(scope="module")
def measuring_operator(cluster, md_namespace, tmp_path_factory):
    """The operator as a process, watching the module's namespace and reading the stack's Prometheus."""
    process = OperatorProcess(
        cluster,
        ["--namespace", md_namespace, "--prometheus-url", cluster.prometheus_url],
        tmp_path_factory.mktemp("operator") / "operator.log",
    )
    process.start()
    yield process
    process.stop()
    print(process.log()[-8000:])
