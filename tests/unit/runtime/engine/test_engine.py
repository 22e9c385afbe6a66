"""Engine contract: batching, chunked prefill, generation limits, cache accounting, expert counts."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moe_runtime.engine.engine import Engine
from moe_runtime.engine.sampling import SamplingParams
from tests.unit.runtime.helpers import greedy, prompt_ids


def test_a_batch_of_different_lengths_decodes_as_each_prompt_alone(engines, family):
    engine = engines[family]
    prompts = [prompt_ids(seed, length) for seed, length in ((10, 3), (11, 17), (12, 1), (13, 40))]
    alone = [greedy(engine, p, 12) for p in prompts]
    batched = engine.generate(prompts, SamplingParams(max_tokens=12))
    for out, reference in zip(batched, alone, strict=True):
        assert out == reference[: len(out)]
        assert len(out) == 12 or reference[len(out)] in engine.tokenizer.eos_token_ids
    seqs = [engine.new_sequence() for _ in prompts]
    batched_logits = engine.forward(list(zip(seqs, prompts, strict=True)))
    for seq, prompt, row in zip(seqs, prompts, batched_logits, strict=True):
        single = engine.new_sequence()
        torch.testing.assert_close(row, engine.forward([(single, prompt)])[0], atol=1e-4, rtol=0)
        engine.release(single)
        engine.release(seq)


def test_prefill_and_decode_can_share_one_step(engines):
    """A decode step of one sequence and a prefill chunk of another run as one batch."""
    engine = engines["qwen2_moe"]
    a, b = prompt_ids(20, 9), prompt_ids(21, 30)
    expected_a, expected_b = greedy(engine, a, 2), greedy(engine, b, 1)
    seq_a, seq_b = engine.new_sequence(), engine.new_sequence()
    first_a = int(engine.forward([(seq_a, a)])[0].argmax())
    logits = engine.forward([(seq_a, [first_a]), (seq_b, b)])
    assert [first_a, int(logits[0].argmax())] == expected_a
    assert int(logits[1].argmax()) == expected_b[0]
    engine.release(seq_a)
    engine.release(seq_b)


@pytest.mark.parametrize("window", [None, 6])
def test_batched_decode_over_different_cache_lengths_equals_each_alone(checkpoints, family, window):
    """Caches inside their sinks, short of, at and far past a 6-token window + 2 sinks (or full): one batched
    decode step, and one shared with a prefill chunk, give each sequence the logits it gets alone."""
    engine = Engine.load(checkpoints[family], window=window, global_tokens=2)
    prompts = [prompt_ids(seed, length) for seed, length in enumerate((1, 3, 7, 8, 20, 33), start=50)]
    batched, alone = ([engine.new_sequence() for _ in prompts] for _ in range(2))
    for seqs in (batched, alone):
        for seq, prompt in zip(seqs, prompts, strict=True):
            engine.forward([(seq, prompt)])
    for step in range(5):
        tokens = prompt_ids(60 + step, len(prompts))
        items = [(seq, [token]) for seq, token in zip(batched, tokens, strict=True)]
        chunk = prompt_ids(70 + step, 4)
        if step % 2:  # a prefill chunk between the decode items
            items[-2] = (batched[-2], chunk)
        logits = engine.forward(items)
        for row, (seq, new) in zip(logits, items, strict=True):
            twin = alone[batched.index(seq)]
            torch.testing.assert_close(row, engine.forward([(twin, new)])[0], atol=1e-4, rtol=0)
    assert [seq.tokens_held for seq in batched] == [seq.tokens_held for seq in alone]


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunked_prefill_equals_one_shot(engines, family, chunk):
    engine = engines[family]
    prompt = prompt_ids(30, 150)
    whole = engine.new_sequence()
    one_shot = engine.forward([(whole, prompt)])
    seq = engine.new_sequence()
    for start in range(0, len(prompt), chunk):
        logits = engine.forward([(seq, prompt[start : start + chunk])])
    engine.release(whole)
    engine.release(seq)
    torch.testing.assert_close(logits, one_shot, atol=1e-4, rtol=0)


def test_generate_stops_on_stop_ids_and_max_tokens(engines):
    engine = engines["mixtral"]
    prompt = prompt_ids(40, 6)
    usage = engine.kv_cache_usage()
    free = engine.generate([prompt], SamplingParams(max_tokens=10))[0]
    assert len(free) == 10
    stopped = engine.generate([prompt], SamplingParams(max_tokens=10, stop_token_ids=(free[3],)))[0]
    assert stopped == free[: free.index(free[3])]
    assert engine.kv_cache_usage() == usage  # generate releases its sequences


def test_generate_stops_on_the_tokenizer_eos(engines):
    engine = engines["qwen2_moe"]
    prompt = prompt_ids(41, 6)
    free = greedy(engine, prompt, 8)
    eos = free[2]
    original = engine.tokenizer.eos_token_ids
    engine.tokenizer.eos_token_ids = frozenset({eos})
    try:
        assert engine.generate([prompt], SamplingParams(max_tokens=8))[0] == free[: free.index(eos)]
    finally:
        engine.tokenizer.eos_token_ids = original


def test_seeded_sampling_is_reproducible_and_differs_from_greedy(engines):
    engine = engines["qwen3_moe"]
    prompts = [prompt_ids(50, 8)] * 2
    params = SamplingParams(max_tokens=20, temperature=1.5, seed=7)
    first = engine.generate(prompts, params)
    assert first == engine.generate(prompts, params)
    assert first[0] == first[1]
    assert first[0] != engine.generate(prompts[:1], SamplingParams(max_tokens=20))[0]
    other_seed = engine.generate(prompts[:1], SamplingParams(max_tokens=20, temperature=1.5, seed=8))[0]
    assert other_seed != first[0]


def test_kv_cache_usage_counts_the_blocks_live_sequences_hold(checkpoints):
    """Memory is what is held, rounded up to a block: 30 and 20 tokens take 2 blocks of 16 each."""
    engine = Engine.load(checkpoints["qwen2_moe"], max_kv_tokens=170, block_size=16)
    assert engine.max_kv_tokens == 160 and engine.kv_cache_usage() == 0
    a, b = engine.new_sequence(), engine.new_sequence()
    engine.forward([(a, prompt_ids(60, 30)), (b, prompt_ids(61, 20))])
    assert engine.kv_cache_usage() == pytest.approx(0.4)
    assert engine.sequence_bytes(a) == 32 * engine.kv_bytes_per_token()
    engine.forward([(b, prompt_ids(62, 13))])  # 33 tokens: a third block
    assert engine.kv_cache_usage() == pytest.approx(0.5)
    engine.release(a)
    assert engine.kv_cache_usage() == pytest.approx(0.3)


def test_expert_token_counts(engines):
    engine = engines["qwen2_moe"]
    engine.take_expert_token_counts()
    engine.forward([(engine.new_sequence(), prompt_ids(70, 25))])
    counts = engine.take_expert_token_counts()
    config = engine.config
    assert counts.dtype == torch.int64 and counts.shape == (config.num_layers, config.num_experts)
    for layer, sparse in enumerate(config.sparse_layers):
        assert counts[layer].sum() == (25 * config.top_k if sparse else 0)
    assert engine.take_expert_token_counts().sum() == 0


def test_forward_rejects_what_it_cannot_run(engines):
    engine = engines["mixtral"]
    seq = engine.new_sequence()
    with pytest.raises(ValueError, match="max_context"):
        engine.forward([(seq, [5] * (engine.max_context + 1))])
    with pytest.raises(ValueError, match="token ids"):
        engine.forward([(seq, [engine.config.vocab_size])])
    with pytest.raises(ValueError, match="at least one new token"):
        engine.forward([(seq, [])])
    engine.release(seq)


def test_model_name_and_limits(engines, checkpoints):
    engine = engines["qwen3_moe"]
    assert engine.model_name == "qwen3_moe"  # the directory's name
    assert engine.max_context == 4096
    assert engine.device == torch.device("cpu")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    items=st.lists(st.tuples(st.integers(1, 6), st.booleans()), min_size=1, max_size=4),
    seed=st.integers(0, 99),
)
def test_every_position_gives_flagged_items_the_logits_of_each_new_token(engines, items, seed):
    """Prompt log-probabilities need every position's logits: the rows of a flagged item equal the logits of
    feeding its tokens one at a time; other items keep their one row, all in the items' order."""
    engine = engines["qwen3_moe"]
    prompts = [prompt_ids(seed + i, length) for i, (length, _) in enumerate(items)]
    flags = [flag for _, flag in items]
    seqs = [engine.new_sequence() for _ in prompts]
    rows = engine.forward(list(zip(seqs, prompts, strict=True)), every_position=flags)
    expected = []
    for prompt, flag in zip(prompts, flags, strict=True):
        single = engine.new_sequence()
        one_by_one = torch.cat([engine.forward([(single, [token])]) for token in prompt])
        engine.release(single)
        expected.append(one_by_one if flag else one_by_one[-1:])
    torch.testing.assert_close(rows, torch.cat(expected), atol=1e-4, rtol=0)
    for seq in seqs:
        engine.release(seq)
