"""Sampling parameters and next-token choice: greedy, temperature, top-p, seeded, after vLLM's logits
processors (`logits_processors`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from moe_runtime.engine.logits_processors import History, needs_processing, process


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    # Ids that end the sequence. The engine thread stops on exactly these (the server puts the model's eos ids
    # here unless ignore_eos); `Engine.generate` adds the tokenizer's eos ids unless `ignore_eos`.
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    # vLLM's min_tokens: until this many tokens were generated, stop_token_ids and eos_token_ids can't be drawn
    min_tokens: int = 0
    eos_token_ids: tuple[int, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: int | None = None  # log-probabilities of each generated token and of this many alternatives
    prompt_logprobs: int | None = None  # the same for each prompt token after the first

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, not {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"min_tokens must be in 0..max_tokens, not {self.min_tokens}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, not {self.repetition_penalty}")


def make_generator(params: SamplingParams) -> torch.Generator | None:
    """A CPU generator for a seeded request (sampling runs on CPU), None otherwise."""
    return None if params.seed is None else torch.Generator().manual_seed(params.seed)


def sample_next(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
    histories: Sequence[History] | None = None,
) -> list[int]:
    """logits [B, V] fp32 -> one token id per row. A row's logits go through its logits processors first
    (logit bias, min_tokens, penalties; `histories[row]` = its prompt and output so far, none: empty). Greedy
    rows take the argmax; a row with a generator draws from it, so the same seed gives the same tokens."""
    logits = logits.float().cpu()
    rows = [row for row, p in enumerate(params) if needs_processing(p)]
    if rows:
        logits = logits.clone()
        for row in rows:
            prompt, output = histories[row] if histories is not None else ((), ())
            logits[row] = process(logits[row], params[row], prompt, output)
    chosen = logits.argmax(dim=-1).tolist()
    for row, (p, generator) in enumerate(zip(params, generators, strict=True)):
        if p.temperature > 0:
            # in float64 and shifted so the best logit is 0: a tiny temperature then gives 0 and -inf, not nan
            scaled = (logits[row].double() - logits[row].max()) / p.temperature
            chosen[row] = int(torch.multinomial(top_p_probs(scaled, p.top_p), 1, generator=generator))
    return chosen


def top_p_probs(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Softmax restricted to the smallest set of tokens whose probability reaches top_p (nucleus sampling)."""
    probs = torch.softmax(logits, dim=-1)
    if top_p >= 1:
        return probs
    sorted_probs, order = torch.sort(probs, descending=True)
    outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # tokens after the nucleus is full
    outside[0] = False  # the nucleus holds at least the likeliest token, however small top_p is
    sorted_probs[outside] = 0
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs / sorted_probs.sum(-1, keepdim=True))
