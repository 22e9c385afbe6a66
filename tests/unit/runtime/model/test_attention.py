"""Causal, sliding-window and window+sink attention against references that use a dense explicit mask."""

from __future__ import annotations

import math

import pytest
import torch
import transformers

from moe_runtime.engine.engine import Engine
from moe_runtime.model import attention
from moe_runtime.model.attention import LayerCache
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


@pytest.mark.parametrize(("window", "sinks"), [(None, 0), (8, 0), (8, 3), (5, 7)])
@pytest.mark.parametrize("chunks", [[50], [1] * 50, [3, 1, 9, 1, 1, 20, 2, 1, 13]])
def test_layer_cache_matches_dense_mask_reference(monkeypatch, window, sinks, chunks):
    monkeypatch.setattr(attention, "QUERY_BLOCK", 4)  # several query blocks even in short chunks
    g = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(50, 4, 16, generator=g),
        torch.randn(50, 2, 16, generator=g),
        torch.randn(50, 2, 16, generator=g),
    )
    expected = reference_attention(q, k, v, window, sinks)
    cache = LayerCache(2, 16, window, sinks, torch.float32, "cpu")
    outputs, start = [], 0
    for n in chunks:
        outputs.append(cache.attend(q[start : start + n], k[start : start + n], v[start : start + n]))
        start += n
    torch.testing.assert_close(torch.cat(outputs), expected, atol=1e-5, rtol=0)


def test_windowed_cache_stops_growing():
    cache = LayerCache(2, 16, 8, 3, torch.float32, "cpu")
    sizes = []
    for _ in range(40):
        cache.attend(torch.randn(1, 4, 16), torch.randn(1, 2, 16), torch.randn(1, 2, 16))
        sizes.append((cache.nbytes, cache.held))
    assert sizes[10] == sizes[-1] == (2 * 2 * (8 + 3) * 16 * 4, 11)
    full = LayerCache(2, 16, None, 0, torch.float32, "cpu")
    full.attend(torch.randn(40, 4, 16), torch.randn(40, 2, 16), torch.randn(40, 2, 16))
    assert full.held == 40 and full.nbytes > sizes[-1][0]


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
    engine = Engine.load(checkpoints["mixtral"], window=16, global_tokens=2)
    seq = engine.new_sequence()
    engine.forward([(seq, prompt_ids(82, 18))])
    size = seq.nbytes
    for token in prompt_ids(83, 30):
        engine.forward([(seq, [token])])
    assert seq.nbytes == size and seq.tokens_held == 18 and seq.length == 48
