"""Log-probabilities of chosen tokens and of the likeliest alternatives, as the OpenAI API returns them.

Computed in fp32 as log_softmax of the model's logits, the same logits the sampler starts from, before the
logits processors (bias, min_tokens, penalties), temperature and top-p: what vLLM returns by default
(`--logprobs-mode raw_logprobs`). So a token's log-probability does not depend on the sampling settings, and
a prompt token's (echo) equals what the model assigns it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenLogprob:
    """One position: the token there, its log-probability (None for the first prompt token, which nothing
    predicts) and the `k` likeliest tokens with theirs, best first."""

    token: int
    logprob: float | None
    top: tuple[tuple[int, float], ...] = ()


def token_logprobs(logits: torch.Tensor, tokens: Sequence[int], k: int) -> list[TokenLogprob]:
    """logits [n, V] (any device) and the token at each of the n positions -> one entry per position."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    index = torch.tensor(list(tokens), dtype=torch.long, device=logprobs.device)
    chosen = logprobs.gather(1, index[:, None]).squeeze(1).tolist()
    k = min(k, logprobs.shape[-1])
    if k == 0:
        return [TokenLogprob(t, lp) for t, lp in zip(tokens, chosen, strict=True)]
    values, ids = logprobs.topk(k, dim=-1)
    return [
        TokenLogprob(t, lp, tuple(zip(top_ids, top_values, strict=True)))
        for t, lp, top_ids, top_values in zip(tokens, chosen, ids.tolist(), values.tolist(), strict=True)
    ]
