"""The runtime's command line as real processes: write a checkpoint, generate from it as JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "moe_runtime", *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("family", ["qwen2_moe", "mixtral"])
def test_make_checkpoint_and_generate(tmp_path, family):
    out = tmp_path / family
    run(
        "make-checkpoint",
        "--family",
        family,
        "--out",
        str(out),
        "--num-layers",
        "2",
        "--shard-bytes",
        "100000",
    )
    assert (out / "model.safetensors.index.json").is_file() and (out / "tokenizer_config.json").is_file()
    args = (
        "generate",
        "--model",
        str(out),
        "--prompt",
        "The quick brown fox",
        "--max-tokens",
        "6",
        "--temperature",
        "0",
        "--json",
    )
    first, second = json.loads(run(*args)), json.loads(run(*args))
    assert first == second  # greedy is deterministic across processes
    assert first["model"] == family and 1 <= len(first["token_ids"]) <= 6


def test_bad_checkpoint_fails_with_the_reason(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "moe_runtime", "generate", "--model", str(tmp_path), "--prompt", "x"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0 and "config.json: missing" in done.stderr


def test_generate_with_a_lora_adapter_gives_the_engines_output_with_it(tmp_path):
    from moe_runtime.engine.engine import Engine
    from moe_runtime.engine.sampling import SamplingParams
    from tests.integration.lora_support import edited, peft_adapter

    model = tmp_path / "model"
    run("make-checkpoint", "--family", "qwen3_moe", "--out", str(model), "--num-layers", "2")
    adapter = peft_adapter(model, tmp_path / "adapter", seed=1)
    args = ("generate", "--model", str(model), "--prompt", "Once upon", "--max-tokens", "8", "--json")
    with_lora, without = json.loads(run(*args, "--lora", str(adapter))), json.loads(run(*args))
    engine = Engine.load(str(model), device="cpu")
    engine.load_adapter("x", str(adapter))
    expected = engine.generate([with_lora["prompt_token_ids"]], SamplingParams(max_tokens=8), ["x"])[0]
    assert with_lora["token_ids"] == expected != without["token_ids"]

    wide = edited(adapter, tmp_path / "wide", config=lambda c: c.update(r=2))
    done = subprocess.run(
        [sys.executable, "-m", "moe_runtime", *args, "--lora", str(wide)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and f"--lora {wide}: shape of " in done.stderr
