"""The native kernels against torch's operations they replace (decode attention over the same paged cache,
RMSNorm, rotary embeddings, one token's experts, a whole model), and the fallback where they cannot be built."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_runtime.engine.engine import Engine
from moe_runtime.model import attention, decoder, moe, native
from moe_runtime.model.attention import KvPool, _decode
from tests.unit.runtime.helpers import greedy, prompt_ids

pytestmark = pytest.mark.skipif(native._library() is None, reason="no C compiler to build the kernel")


@st.composite
def decode_steps(draw):
    """A pool and a step's decode items, each reading runs of slots (several where its blocks are scattered
    or a window left sinks behind), with query rows anywhere in the step (prefill rows between them)."""
    kv_heads = draw(st.integers(1, 3))
    group = draw(st.integers(1, 4))
    head_dim = draw(st.sampled_from([8, 16, 40, 64, 100, 128]))  # whole 32-lane blocks and remainders
    num_slots = 256
    items = []
    row = 0
    for _ in range(draw(st.integers(1, 6))):
        row += draw(st.integers(0, 3))
        runs = []
        for _ in range(draw(st.integers(1, 3))):
            start = draw(st.integers(0, num_slots - 1))
            runs.append((start, draw(st.integers(1, num_slots - start))))
        items.append((row, tuple(runs)))
        row += 1
    return kv_heads, group, head_dim, num_slots, items, row + draw(st.integers(0, 2))


@settings(max_examples=60, deadline=None)
@given(step=decode_steps(), dtype=st.sampled_from([torch.float32, torch.bfloat16]), seed=st.integers(0, 99))
def test_the_kernel_attends_as_torch_does(step, dtype, seed):
    kv_heads, group, head_dim, num_slots, items, rows = step
    generator = torch.Generator().manual_seed(seed)
    pool = KvPool(1, kv_heads, head_dim, num_slots, dtype, "cpu")
    pool.keys[0].copy_(torch.randn(kv_heads, num_slots, head_dim, generator=generator) * 2)
    pool.values[0].copy_(torch.randn(kv_heads, num_slots, head_dim, generator=generator))
    # q as the model passes it: a view of a wider row (q heads, then k and v heads)
    qkv = torch.randn(rows, (group + 2) * kv_heads, head_dim, generator=generator).to(dtype)
    q = qkv[:, : group * kv_heads]
    scale = 1 / math.sqrt(head_dim)
    out = torch.full((rows, group * kv_heads, head_dim), float("nan"), dtype=dtype)
    native.attend_decodes(q, pool.keys[0], pool.values[0], native.decode_batch(items), scale, out)
    for row, runs in items:
        scaled = (q[row].float() * scale).view(kv_heads, group, head_dim)
        expected = _decode(scaled, pool.keys[0].float(), pool.values[0].float(), runs)
        tolerance = 1e-5 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(out[row].float(), expected, atol=tolerance, rtol=tolerance)
    decode_rows = {row for row, _ in items}
    assert all(out[r].isnan().all() for r in range(rows) if r not in decode_rows)  # other rows untouched


def bf16_ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    """The largest distance between two bfloat16 tensors in representable steps."""
    ia, ib = a.view(torch.int16).int(), b.view(torch.int16).int()
    return int((ia - ib).abs().max())


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 9),
    heads=st.integers(1, 6),
    head_dim=st.sampled_from([2, 8, 32, 64, 128]),
    norm=st.booleans(),
    gap=st.integers(0, 3),
    magnitude=st.sampled_from([1e-3, 1.0, 3.0]),  # at 1e-3 the epsilon matters
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 99),
)
def test_norm_and_rope_round_as_torch_does(rows, heads, head_dim, norm, gap, magnitude, dtype, seed):
    """q/k heads as the model passes them: a view of wider rows (`gap` more heads after them)."""
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, heads + gap, head_dim, generator=generator) * magnitude).to(dtype)[:, :heads]
    weight = (torch.randn(heads, head_dim, generator=generator) + 1).to(dtype) if norm else None
    positions = torch.randint(0, 4000, (rows,), generator=generator)
    cos, sin = decoder.rope_tables(positions, head_dim, 10000.0, dtype)
    expected = decoder.apply_rope(x if weight is None else torch_rms_norm(x, weight, 1e-6), cos, sin)
    got = native.norm_rope(x, weight, 1e-6, cos, sin)
    if dtype == torch.float32:
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    else:  # the sum of squares may differ in its last bit from torch's: one bfloat16 step at most
        assert bf16_ulps(got, expected) <= 1


@settings(max_examples=40, deadline=None)
@given(
    shape=st.sampled_from([(1, 512), (7, 64), (3, 5, 24), (2, 2048)]),
    magnitude=st.sampled_from([1e-3, 1.0, 5.0]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 99),
)
def test_rms_norm_rounds_as_torch_does(shape, magnitude, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(*shape, generator=generator) * magnitude).to(dtype)
    weight = torch.randn(shape[-1], generator=generator).to(dtype)
    got, expected = native.rms_norm(x, weight, 1e-5), torch_rms_norm(x, weight, 1e-5)
    if dtype == torch.float32:
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    else:
        assert bf16_ulps(got, expected) <= 1


@settings(max_examples=40, deadline=None)
@given(
    dim=st.sampled_from([8, 24, 64, 100]),
    inter=st.sampled_from([4, 16, 33]),
    num_experts=st.integers(1, 6),
    data=st.data(),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 99),
)
def test_one_tokens_experts_sum_as_torch_does(dim, inter, num_experts, data, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    top_k = data.draw(st.integers(1, num_experts))
    experts = torch.tensor(data.draw(st.permutations(range(num_experts)))[:top_k])
    layer = moe.SparseMoE(
        router=torch.randn(num_experts, dim, generator=generator).to(dtype),
        gate_up=(torch.randn(num_experts, 2 * inter, dim, generator=generator) * 0.2).to(dtype),
        down=(torch.randn(num_experts, dim, inter, generator=generator) * 0.2).to(dtype),
        top_k=top_k,
        norm_topk_prob=False,
    )
    x = torch.randn(1, dim, generator=generator).to(dtype)
    weights = torch.rand(top_k, generator=generator).to(dtype)
    got = native.experts_one_token(x, layer.gate_up, layer.down, experts, weights)
    expected = moe._one_token(layer, x, weights, experts)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2  # bf16: the matmuls' sums may round one step apart
    torch.testing.assert_close(got, expected, atol=tolerance, rtol=tolerance)


def torch_rms_norm(x, weight, eps):
    """decoder.rms_norm with the kernels off."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True).add_(eps))
    return weight * h.to(x.dtype)


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral", "qwen2_moe"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_model_computes_the_same_with_and_without_the_kernels(checkpoints, monkeypatch, family, dtype):
    """Prefill, then decode steps of two sequences at once: logits agree, and in fp32 the greedy tokens. The
    decode steps take the same tokens in both runs (in bf16 a near-tie may pick another argmax, and the runs would
    then compare different sequences)."""
    engine = Engine.load(checkpoints[family], dtype=dtype)
    prompts = [prompt_ids(60, 37), prompt_ids(61, 12)]
    fed = [prompt_ids(62, 6), prompt_ids(63, 6)]

    def run():
        seqs = [engine.new_sequence() for _ in prompts]
        logits = [engine.forward([(seq, prompt)])[0] for seq, prompt in zip(seqs, prompts, strict=True)]
        for step in range(6):
            logits += list(
                engine.forward([(seq, [tokens[step]]) for seq, tokens in zip(seqs, fed, strict=True)])
            )
        for seq in seqs:
            engine.release(seq)
        return torch.stack(logits), greedy(engine, prompts[0], 12)

    native_logits, native_tokens = run()
    monkeypatch.setattr(native, "applies", lambda *tensors: False)
    torch_logits, torch_tokens = run()
    tolerance = 1e-4 if dtype == "float32" else 0.1
    torch.testing.assert_close(native_logits, torch_logits, atol=tolerance, rtol=0)
    if dtype == "float32":
        assert native_tokens == torch_tokens


def test_attend_gives_the_same_step_with_and_without_the_kernel(monkeypatch):
    """A mixed step (prefill chunk between decodes) through `attend`, once with the kernel, once without."""
    generator = torch.Generator().manual_seed(3)
    pool = KvPool(1, 2, 64, 128, torch.float32, "cpu")
    pool.keys[0].copy_(torch.randn(2, 128, 64, generator=generator))
    pool.values[0].copy_(torch.randn(2, 128, 64, generator=generator))
    items = [attention.ItemKv([0, 1], 20, 1), attention.ItemKv([5, 6], 0, 9), attention.ItemKv([3], 7, 1)]
    plan = attention.plan_step(items, 16, (None,), 0, 2, "cpu")
    assert plan.decodes[0] is not None and plan.decodes[0].rows.tolist() == [0, 10]
    q, k, v = torch.randn(11, 4, 64, generator=generator), torch.randn(11, 2, 64), torch.randn(11, 2, 64)
    with_kernel = attention.attend(pool, 0, plan, q, k, v)
    monkeypatch.setattr(native, "applies", lambda *tensors: False)
    torch.testing.assert_close(attention.attend(pool, 0, plan, q, k, v), with_kernel, atol=1e-5, rtol=0)


def test_without_a_compiler_attention_falls_back_to_torch(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("MOEDEPLOY_CACHE", str(tmp_path))
    native._library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=native.__name__):
            assert native._library() is None
        assert "runs on torch's operations" in caplog.text
        assert not native.applies(torch.empty(1, 1, 1))
    finally:
        monkeypatch.undo()
        native._library.cache_clear()
    assert native._library() is not None


def test_the_kernel_is_built_once_per_source_and_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("MOEDEPLOY_CACHE", str(tmp_path))
    built = native._build()
    assert built.parent == tmp_path / "kernels" and built.suffix == ".so"
    stamp = built.stat().st_mtime_ns
    assert native._build() == built and built.stat().st_mtime_ns == stamp
    monkeypatch.setattr(native, "_cpu_flags", lambda: "flags : another cpu")
    assert native._build() != built


def test_the_kernels_take_only_cpu_tensors_of_one_dtype_they_know():
    x = torch.empty(2, 8)
    assert native.applies(x) and native.applies(x.bfloat16(), x.bfloat16())
    assert not native.applies(x.half())
    assert not native.applies(x, x.bfloat16())  # a weight of another dtype than the activations
    assert not native.applies(torch.empty(2, 8, device="meta"))


def test_with_several_threads_torch_keeps_the_work():
    """The kernels run on one thread: where torch may spread an operation over several, it keeps it."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert not native.applies(torch.empty(2, 8))
    finally:
        torch.set_num_threads(threads)
    assert native.applies(torch.empty(2, 8))


def test_the_switch_turns_the_kernel_off(monkeypatch):
    monkeypatch.setenv("MOE_RUNTIME_NATIVE_KERNELS", "0")
    native._library.cache_clear()
    try:
        assert not native.applies(torch.empty(1, 1, 1))
    finally:
        monkeypatch.undo()
        native._library.cache_clear()
