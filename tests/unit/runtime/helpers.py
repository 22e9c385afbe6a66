"""Helpers shared by the runtime tests."""

from __future__ import annotations

import torch

from moe_runtime.engine.engine import Engine
from moe_runtime.engine.sampling import SamplingParams
from moe_runtime.engine.sequence import Sequence


def greedy(engine: Engine, prompt: list[int], steps: int, adapter: str | None = None) -> list[int]:
    """Greedy decoding through forward(), never stopping early (no eos)."""
    seq = engine.new_sequence()
    logits = engine.forward([(seq, prompt, adapter)])
    tokens = []
    for _ in range(steps):
        tokens.append(int(logits[0].argmax()))
        logits = engine.forward([(seq, [tokens[-1]], adapter)])
    engine.release(seq)
    return tokens


def hf_greedy(hf_model, prompt: list[int], steps: int) -> list[int]:
    """transformers' greedy generate of exactly `steps` tokens (no eos), without the prompt."""
    with torch.no_grad():
        out = hf_model.generate(
            torch.tensor([prompt], device=hf_model.device),
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


def prompt_ids(seed: int, length: int, vocab: int = 400) -> list[int]:
    return torch.randint(3, vocab, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def sequence(
    rid: str,
    prompt: list[int],
    max_tokens: int,
    *,
    arrival: float = 0.0,
    stop_token_ids=(),
    deadline: float | None = None,
    adapter: str | None = None,
) -> Sequence:
    """A sequence as the engine thread queues it, for the scheduler's tests."""
    params = SamplingParams(max_tokens=max_tokens, stop_token_ids=tuple(stop_token_ids))
    return Sequence(prompt, params, id=rid, arrival=arrival, deadline=deadline, adapter=adapter)
