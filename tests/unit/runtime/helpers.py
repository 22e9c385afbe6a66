"""Helpers shared by the runtime tests."""

from __future__ import annotations

import torch

from moe_runtime.engine import Engine


def greedy(engine: Engine, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding through forward(), never stopping early (no eos)."""
    seq = engine.new_sequence()
    logits = engine.forward([(seq, prompt)])
    tokens = []
    for _ in range(steps):
        tokens.append(int(logits[0].argmax()))
        logits = engine.forward([(seq, [tokens[-1]])])
    engine.release(seq)
    return tokens


def prompt_ids(seed: int, length: int, vocab: int = 400) -> list[int]:
    return torch.randint(3, vocab, (length,), generator=torch.Generator().manual_seed(seed)).tolist()
