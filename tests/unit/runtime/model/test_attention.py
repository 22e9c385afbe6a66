"""Causal, sliding-window and window+sink attention against references that use a dense explicit mask."""

from __future__ import annotations

import math
import random

import pytest
import torch
import transformers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moe_runtime.engine.blocks import NO_BLOCK, BlockManager, KvState, Window
from moe_runtime.engine.engine import Engine
from moe_runtime.model import attention, native
from moe_runtime.model.attention import ItemKv, KvPool, plan_step
from moe_runtime.tools.checkpoint import CheckpointSpec, write_checkpoint
from tests.unit.runtime.helpers import greedy, hf_greedy, prompt_ids


def reference_attention(q, k, v, window, sinks):
    """Plain softmax attention over a whole sequence under the explicit mask: key j is visible to query i
    when j <= i and (i - j < window or j < sinks). q [T, H, d], k/v [T, KV, d]."""
    t = q.shape[0]
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
    mask = j <= i
    if window is not None:
        mask &= (i - j < window) | (j < sinks)
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def run_paged(sequences, chunks_per_step, window, sinks, block_size, num_blocks):
    """Feeds each sequence's q/k/v [T, heads or kv_heads, d] through the paged cache: at step s sequence i gets
    its next chunks_per_step[s][i] tokens (0: not in this step), all of a step's items in one batch, with blocks
    placed by the block manager (scattered by a warm-up of other sequences) -> each sequence's outputs."""
    layer_windows = (window,)
    manager = BlockManager(num_blocks, block_size, window=Window(window, sinks) if window else None)
    filler = [KvState() for _ in range(7)]  # occupy and free blocks so that tables are not one run
    for i, state in enumerate(filler):
        manager.grow(state, (i % 3 + 1) * block_size)
    for state in filler[::2]:
        manager.free(state)
    pool = KvPool(1, 2, 16, num_blocks * block_size, torch.float32, "cpu")
    states = [KvState() for _ in sequences]
    outputs = [[] for _ in sequences]
    for counts in chunks_per_step:
        items = []
        for i, n in enumerate(counts):
            n = min(n, len(sequences[i][0]) - states[i].length)
            if n:
                manager.grow(states[i], states[i].length + n)
                items.append((i, ItemKv(states[i].block_table, states[i].length, n)))
        if not items:
            continue
        plan = plan_step([item for _, item in items], block_size, layer_windows, sinks, 2, "cpu")
        cat = [
            torch.cat([sequences[i][part][kv.start : kv.start + kv.count] for i, kv in items])
            for part in range(3)
        ]
        out = attention.attend(pool, 0, plan, *cat)
        row = 0
        for i, kv in items:
            outputs[i].append(out[row : row + kv.count])
            states[i].length += kv.count
            row += kv.count
    return [torch.cat(o) for o in outputs], states, manager


@pytest.fixture(params=["native", "torch"])
def decode_backend(request, monkeypatch):
    """Decode items through the native kernel (where it could be built) or through torch's operations (the
    same for every example of a property: nothing to reset between them)."""
    if request.param == "torch":
        monkeypatch.setattr(native, "applies", lambda *tensors: False)
    elif native._library() is None:
        pytest.skip("no C compiler to build the kernel")
    return request.param


def random_qkv(length, seed):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(length, 4, 16, generator=g),
        torch.randn(length, 2, 16, generator=g),
        torch.randn(length, 2, 16, generator=g),
    )


@pytest.mark.parametrize(("window", "sinks"), [(None, 0), (8, 0), (8, 3), (5, 7), (20, 2)])
@pytest.mark.parametrize("chunks", [[50], [1] * 50, [3, 1, 9, 1, 1, 20, 2, 1, 13]])
@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_paged_attention_matches_dense_mask_reference(
    monkeypatch, decode_backend, window, sinks, chunks, block_size
):
    monkeypatch.setattr(attention, "QUERY_BLOCK", 4)  # several query blocks even in short chunks
    qkv = random_qkv(50, 0)
    (out,), _, _ = run_paged([qkv], [[n] for n in chunks], window, sinks, block_size, 200)
    torch.testing.assert_close(out, reference_attention(*qkv, window, sinks), atol=1e-5, rtol=0)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=5),
    window=st.sampled_from([None, 3, 8, 17]),
    sinks=st.integers(0, 5),
    block_size=st.sampled_from([1, 2, 4, 8]),
    seed=st.integers(0, 1000),
)
def test_a_mixed_batch_gives_each_sequence_the_attention_it_gets_alone(
    decode_backend, lengths, window, sinks, block_size, seed
):
    """Prefill chunks and decodes of several sequences share steps; whatever blocks each lands in, each
    sequence's outputs equal the dense reference's."""
    rng = random.Random(seed)
    qkvs = [random_qkv(n, seed + i) for i, n in enumerate(lengths)]
    left = list(lengths)
    steps = []
    while any(left):
        counts = [min(n, rng.choice([0, 1, 1, 3, 7])) for n in left]
        left = [n - c for n, c in zip(left, counts, strict=True)]
        steps.append(counts)
    outs, _, _ = run_paged(qkvs, steps, window, sinks, block_size, 400)
    for out, qkv in zip(outs, qkvs, strict=True):
        torch.testing.assert_close(out, reference_attention(*qkv, window, sinks), atol=1e-5, rtol=0)


def test_a_windowed_sequence_holds_its_sinks_and_window_in_blocks():
    qkv = random_qkv(100, 1)
    _, (state,), manager = run_paged([qkv], [[1]] * 100, 8, 3, 4, 200)
    held = [block for block in state.block_table if block != NO_BLOCK]
    # the sink block (positions 0-3) and the two of positions 92..99, which the last query saw
    assert len(held) == 3 and state.block_table[0] != NO_BLOCK
    assert len(held) <= manager.blocks_for(10_000, chunk=1)
    full = run_paged([qkv], [[1]] * 100, None, 0, 4, 200)[1][0]
    assert len(full.block_table) == 25


def test_engine_window_with_sinks_matches_transformers_under_the_explicit_mask(checkpoints):
    """The whole model with window 12 + 4 sinks against transformers given the same mask as a 4D tensor."""
    window, sinks, length = 12, 4, 45
    path = checkpoints["qwen3_moe"]
    engine = Engine.load(path, window=window, global_tokens=sinks)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = prompt_ids(80, length)
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    mask = (j <= i) & ((i - j < window) | (j < sinks))
    with torch.no_grad():
        expected = hf(torch.tensor([ids]), attention_mask=mask[None, None]).logits[0]
        full = hf(torch.tensor([ids])).logits[0]
    assert (expected[-1] - full[-1]).abs().max() > 1e-2  # the mask matters at this length
    seq = engine.new_sequence()
    for start in range(0, length - 5, 8):  # chunked prefill, then decode steps
        engine.forward([(seq, ids[start : min(start + 8, length - 5)])])
    for position in range(length - 5, length):
        logits = engine.forward([(seq, [ids[position]])])
        torch.testing.assert_close(logits[0], expected[position], atol=1e-4, rtol=0)
    assert seq.tokens_held == window + sinks


@pytest.fixture(scope="module")
def windowed_mixtral(tmp_path_factory) -> str:
    spec = CheckpointSpec("mixtral", sliding_window=16, init_std=0.08, seed=4)
    return str(write_checkpoint(spec, tmp_path_factory.mktemp("windowed") / "mixtral-sw"))


def test_model_sliding_window_matches_transformers(windowed_mixtral):
    engine = Engine.load(windowed_mixtral)
    assert engine.layer_windows == (16,) * 4
    hf = transformers.AutoModelForCausalLM.from_pretrained(windowed_mixtral, dtype=torch.float32).eval()
    ids = prompt_ids(81, 40)
    with torch.no_grad():
        expected = hf(torch.tensor([ids])).logits[0, -1]
    torch.testing.assert_close(engine.forward([(engine.new_sequence(), ids)])[0], expected, atol=1e-4, rtol=0)
    assert greedy(engine, ids, 24) == hf_greedy(hf, ids, 24)


def test_window_override_keeps_engine_memory_flat(checkpoints):
    engine = Engine.load(checkpoints["mixtral"], window=16, global_tokens=2, block_size=4)
    seq = engine.new_sequence()
    engine.forward([(seq, prompt_ids(82, 18))])
    sizes = []
    for token in prompt_ids(83, 60):
        engine.forward([(seq, [token])])
        sizes.append(engine.sequence_bytes(seq))
    # the sink block and the 16-token window in blocks of 4 (one more while the window straddles a block)
    assert set(sizes) <= {b * 4 * engine.kv_bytes_per_token() for b in (5, 6)}
    assert seq.tokens_held == 18 and seq.length == 78
