"""One tiny checkpoint per session, one shared server, and the engine as the reference for outputs."""

from pathlib import Path

import openai
import pytest

from tests.integration.runtime_server.harness import RuntimeServer, write_checkpoint


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("runtime-server") / "tiny-qwen2-moe")


@pytest.fixture(scope="session")
def server(checkpoint):
    # float32 on both sides, so the server's batched outputs can be compared token for token with the
    # reference engine running one prompt at a time. Expert counters per layer: the metrics tests count
    # layer 0's tokens (the default sums over layers).
    options = ("--dtype", "float32", "--max-batch-seqs", "16", "--expert-metrics", "layer_expert")
    with RuntimeServer(checkpoint, *options) as running:
        yield running


@pytest.fixture(scope="session")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def reference(checkpoint):
    from moe_runtime.engine.engine import Engine

    return Engine.load(str(checkpoint), device="cpu", dtype="float32")
