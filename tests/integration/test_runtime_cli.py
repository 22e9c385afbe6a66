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
