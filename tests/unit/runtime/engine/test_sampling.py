"""Next-token choice: greedy, temperature, top-p, seeds."""

from __future__ import annotations

import pytest
import torch

from moe_runtime.engine.sampling import SamplingParams, make_generator, sample_next, top_p_probs


def test_greedy_rows_take_the_argmax_and_sampled_rows_follow_their_seed():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    params = [
        SamplingParams(),
        SamplingParams(temperature=1.0, seed=5),
        SamplingParams(temperature=1.0, seed=5),
    ]
    first = [sample_next(logits, params, [make_generator(p) for p in params]) for _ in range(2)]
    assert first[0] == first[1]
    assert first[0][0] == int(logits[0].argmax())


def test_sampling_follows_the_tempered_distribution():
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    params = SamplingParams(temperature=2.0, seed=0)
    generator = make_generator(params)
    draws = torch.tensor([sample_next(logits, [params], [generator])[0] for _ in range(3000)])
    frequencies = torch.bincount(draws, minlength=3) / 3000
    torch.testing.assert_close(frequencies, torch.softmax(logits[0] / 2.0, -1), atol=0.03, rtol=0)


def test_top_p_keeps_the_smallest_nucleus():
    probs = top_p_probs(torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])), top_p=0.7)
    torch.testing.assert_close(probs, torch.tensor([0.5, 0.3, 0.0, 0.0]) / 0.8)
    assert top_p_probs(torch.tensor([3.0, 1.0, 0.0]), top_p=0.01).tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("bad", [{"max_tokens": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5}])
def test_invalid_params_are_rejected(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


@pytest.mark.parametrize("temperature, top_p", [(1e-300, 1.0), (1.0, 5e-324), (1e-30, 1e-30)])
def test_extreme_temperature_and_top_p_pick_the_best_token(temperature, top_p):
    logits = torch.tensor([[0.5, 3.0, -1.0, 2.9]])
    params = [SamplingParams(temperature=temperature, top_p=top_p, seed=1)]
    assert sample_next(logits, params, [make_generator(params[0])]) == [1]
