"""vLLM's logits processors as the sampler applies them, and log-probabilities of the raw distribution."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_runtime.engine.logits_processors import process
from moe_runtime.engine.logprobs import token_logprobs
from moe_runtime.engine.sampling import SamplingParams, make_generator, sample_next

V = 8


def logits_of(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_logit_bias_adds_to_the_token_and_can_force_or_forbid_it():
    logits = logits_of(3, 1, 0, -1)
    biased = process(logits, SamplingParams(logit_bias={1: 2.5, 0: -100.0}), (), ())
    assert biased.tolist() == [-97.0, 3.5, 0.0, -1.0]
    assert sample_next(logits[None], [SamplingParams(logit_bias={3: 100.0})], [None]) == [3]
    assert sample_next(logits[None], [SamplingParams(logit_bias={0: -100.0})], [None]) == [1]


def test_min_tokens_blocks_stop_and_eos_ids_until_enough_tokens_were_generated():
    logits = logits_of(5, 4, 3, 2)
    params = SamplingParams(max_tokens=5, min_tokens=2, stop_token_ids=(1,), eos_token_ids=(0,))
    blocked = process(logits, params, (9,), (3,))
    assert blocked.tolist() == [-math.inf, -math.inf, 3.0, 2.0]
    assert process(logits, params, (9,), (3, 3)).tolist() == logits.tolist()
    assert sample_next(logits[None], [params], [None], [((9,), (3,))]) == [2]


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    logits = logits_of(2, -2, 2, -2, 1)
    penalised = process(logits, SamplingParams(repetition_penalty=2.0), prompt=(0, 1), output=(3,))
    assert penalised.tolist() == [1.0, -4.0, 2.0, -4.0, 1.0]  # 2 and 4 unseen: unchanged


@pytest.mark.parametrize("penalty", [2.2e-309, 1e-30, 1e30, 1.7e308])
def test_extreme_repetition_penalties_keep_logits_finite_and_sampling_possible(penalty):
    """vLLM takes any repetition_penalty above 0; one that over- or underflows fp32 must not make a logit
    infinite, after which tempered sampling would see nan (found by schemathesis: a 500)."""
    logits = logits_of(3, -2, 0.5, 1)
    params = SamplingParams(repetition_penalty=penalty, temperature=0.7, seed=1)
    processed = process(logits, params, prompt=(0, 1, 2, 3), output=())
    assert torch.isfinite(processed).all()
    assert sample_next(logits[None], [params], [make_generator(params)], [((0, 1, 2, 3), ())])[0] in range(4)


@settings(max_examples=200, deadline=None)
@given(
    penalty=st.floats(min_value=5e-324, max_value=1.7e308),
    temperature=st.sampled_from([0.0, 5e-324, 1e-30, 0.7]),
    blocked=st.sets(st.integers(0, V - 1), max_size=V - 1),
)
def test_penalties_never_give_nan_nor_unblock_a_token_min_tokens_blocks(penalty, temperature, blocked):
    """Found by schemathesis (a 500): a penalty below fp32's range rounded to 0 there, and a stop token that
    min_tokens had set to -inf and that the prompt held became -inf * 0 = nan."""
    logits = torch.linspace(-3, 3, V)
    params = SamplingParams(
        max_tokens=4, min_tokens=1, stop_token_ids=tuple(blocked), repetition_penalty=penalty,
        temperature=temperature, seed=0,
    )  # fmt: skip
    history = (tuple(range(V)), ())
    processed = process(logits, params, *history)
    assert not torch.isnan(processed).any()
    assert all(processed[token] == -math.inf for token in blocked)
    (token,) = sample_next(logits[None], [params], [make_generator(params)], [history])
    assert token not in blocked


def test_frequency_and_presence_penalties_count_generated_tokens_only():
    logits = logits_of(1, 1, 1, 1)
    params = SamplingParams(frequency_penalty=0.5, presence_penalty=0.25)
    penalised = process(logits, params, prompt=(3, 3, 3), output=(0, 0, 1))
    assert penalised.tolist() == [1 - 1.0 - 0.25, 1 - 0.5 - 0.25, 1.0, 1.0]


@settings(max_examples=60, deadline=None)
@given(
    logits=st.lists(st.floats(-5, 5), min_size=V, max_size=V),
    output=st.lists(st.integers(0, V - 1), min_size=1, max_size=12),
    strength=st.floats(0.1, 2.0),
)
def test_positive_penalties_never_raise_and_negative_never_lower_a_generated_token(logits, output, strength):
    logits = torch.tensor(logits)
    for name in ("frequency_penalty", "presence_penalty"):
        discouraged = process(logits, SamplingParams(**{name: strength}), (), output)
        encouraged = process(logits, SamplingParams(**{name: -strength}), (), output)
        for token in set(output):
            assert discouraged[token] < logits[token] < encouraged[token]
    discouraged = process(logits, SamplingParams(repetition_penalty=1 + strength), (), output)
    encouraged = process(logits, SamplingParams(repetition_penalty=1 / (1 + strength)), (), output)
    for token in set(output):
        assert discouraged[token] <= logits[token] <= encouraged[token]


def test_penalties_change_greedy_output_away_from_a_repeated_token():
    logits = logits_of(2.0, 1.9, 0.0)[None]
    history = [((), (0, 0))]
    assert sample_next(logits, [SamplingParams()], [None], history) == [0]
    for params in (
        SamplingParams(frequency_penalty=0.1),
        SamplingParams(presence_penalty=0.2),
        SamplingParams(repetition_penalty=1.1),
    ):
        assert sample_next(logits, [params], [None], history) == [1]


def test_seeded_sampling_with_processors_repeats():
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(1))
    params = SamplingParams(temperature=1.0, seed=9, presence_penalty=1.0, logit_bias={3: 2.0})
    draws = [sample_next(logits, [params], [make_generator(params)], [((1,), (3, 4))]) for _ in range(2)]
    assert draws[0] == draws[1]


def test_token_logprobs_are_log_softmax_in_fp32_with_the_k_likeliest_best_first():
    logits = torch.randn(3, 20, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(
        torch.bfloat16
    )
    entries = token_logprobs(logits, [4, 0, 19], k=3)
    expected = torch.log_softmax(logits.float(), dim=-1)
    for row, (entry, token) in enumerate(zip(entries, [4, 0, 19], strict=True)):
        assert entry.token == token
        assert entry.logprob == pytest.approx(expected[row, token].item(), abs=1e-6)
        values, ids = expected[row].topk(3)
        assert [t for t, _ in entry.top] == ids.tolist()
        assert [v for _, v in entry.top] == pytest.approx(values.tolist(), abs=1e-6)
    assert token_logprobs(logits, [1, 2, 3], k=0)[0].top == ()
    assert len(token_logprobs(logits, [1, 2, 3], k=50)[0].top) == 20  # never more than the vocabulary
