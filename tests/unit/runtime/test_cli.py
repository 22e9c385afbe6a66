"""`python -m moe_runtime`: make-checkpoint, generate --json, and the serve hand-off."""

from __future__ import annotations

import json
import sys
import types

from moe_runtime.__main__ import main


def test_make_checkpoint_then_generate_json(tmp_path, capsys):
    out = tmp_path / "tiny"
    assert (
        main(
            [
                "make-checkpoint",
                "--family",
                "qwen3_moe",
                "--out",
                str(out),
                "--num-layers",
                "2",
                "--mlp-only-layers",
                "0",
                "--norm-topk-prob",
                "--vocab-size",
                "400",
            ]
        )
        == 0
    )
    config = json.loads((out / "config.json").read_text())
    assert (
        config["mlp_only_layers"] == [0] and config["norm_topk_prob"] is True and config["vocab_size"] == 400
    )
    capsys.readouterr()
    assert (
        main(
            [
                "generate",
                "--model",
                str(out),
                "--prompt",
                "Hello",
                "--max-tokens",
                "5",
                "--temperature",
                "0",
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "tiny" and 1 <= len(result["token_ids"]) <= 5
    assert isinstance(result["text"], str) and result["prompt_token_ids"]


def test_serve_is_handed_to_moe_runtime_serve(monkeypatch):
    seen = []
    monkeypatch.setitem(sys.modules, "moe_runtime.serve.command", types.SimpleNamespace(main=seen.append))
    assert main(["serve", "--model", "x", "--port", "1"]) == 0
    assert seen == [["--model", "x", "--port", "1"]]
