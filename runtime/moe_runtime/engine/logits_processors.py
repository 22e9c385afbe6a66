"""What vLLM does to a row of logits before sampling, in vLLM's order: logit bias, min_tokens, then the
penalties (vLLM's `apply_penalties`):

- `logit_bias`: added to the token's logit (the request's values are clamped to [-100, 100], as vLLM does).
- `min_tokens`: while fewer tokens were generated, the stop ids and the eos ids get -inf.
- `repetition_penalty` r: every token in the prompt or the output so far has its logit divided by r when
  positive, multiplied by r otherwise.
- `frequency_penalty` f and `presence_penalty` p (OpenAI's definition): logit -= f * (times the token was
  generated) + p * (1 if it was generated at all). The prompt does not count.

Log-probabilities are not taken from these logits: vLLM returns the raw model's (`logprobs_mode` raw_logprobs,
its default), and so does this runtime (see `logprobs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from moe_runtime.engine.sampling import SamplingParams

# (prompt ids, ids generated so far) of one sequence
History = tuple[Sequence[int], Sequence[int]]


def needs_processing(p: SamplingParams) -> bool:
    return bool(
        p.logit_bias
        or p.min_tokens
        or p.repetition_penalty != 1.0
        or p.frequency_penalty
        or p.presence_penalty
    )


def process(
    logits: torch.Tensor, p: SamplingParams, prompt: Sequence[int], output: Sequence[int]
) -> torch.Tensor:
    """One row [V] of fp32 logits -> the logits sampling uses (a new tensor)."""
    logits = logits.clone()
    vocab = logits.shape[-1]
    if p.logit_bias:
        ids = torch.tensor(list(p.logit_bias), dtype=torch.long)
        logits[ids] += torch.tensor(list(p.logit_bias.values()), dtype=logits.dtype)
    if len(output) < p.min_tokens:
        blocked = sorted(set(p.stop_token_ids) | set(p.eos_token_ids))
        logits[torch.tensor(blocked, dtype=torch.long)] = -torch.inf
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(prompt) | set(output)), dtype=torch.long)
        # in float64: a penalty under fp32's range would round to 0 there, and -inf (a token min_tokens
        # blocks) times 0 is nan
        values = logits[seen].double()
        penalised = torch.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)
        # vLLM takes any penalty above 0: a tiny or huge one must not make a logit infinite (or nan after it);
        # a blocked token stays blocked
        finite = torch.finfo(logits.dtype).max
        penalised = torch.where(values == -torch.inf, values, penalised.clamp(-finite, finite))
        logits[seen] = penalised.to(logits.dtype)
    if (p.frequency_penalty or p.presence_penalty) and output:
        counts = torch.bincount(torch.tensor(list(output), dtype=torch.long), minlength=vocab).to(
            logits.dtype
        )
        logits -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)
    return logits
