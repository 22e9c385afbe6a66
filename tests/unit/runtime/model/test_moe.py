"""Sparse dispatch (grouped by expert, and one token alone) against the dense reference: every expert over
every token, weighted by the router's top-k; torch's grouped GEMM against the loop over experts it replaces on
the CPU (the loop still serves int8 weights, LoRA and GPUs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from moe_runtime.model import moe as moe_module
from moe_runtime.model.moe import SparseMoE, route, sparse_moe


def dense_reference(layer: SparseMoE, x: torch.Tensor) -> torch.Tensor:
    weights, experts = route(F.linear(x, layer.router), layer.top_k, layer.norm_topk_prob)
    out = torch.zeros_like(x)
    for e in range(layer.router.shape[0]):
        gate, up = F.linear(x, layer.gate_up[e]).chunk(2, dim=-1)
        y = F.linear(F.silu(gate) * up, layer.down[e])
        out += y * (weights * (experts == e)).sum(dim=1, keepdim=True)
    return out


@settings(max_examples=40, deadline=None)
@given(
    tokens=st.integers(1, 80),
    num_experts=st.integers(2, 12),
    top_k=st.integers(1, 4),
    normalize=st.booleans(),
    hidden=st.sampled_from([6, 24]),
    inter=st.sampled_from([3, 8]),
    seed=st.integers(0, 1000),
)
def test_sparse_dispatch_equals_every_expert_on_every_token(
    tokens, num_experts, top_k, normalize, hidden, inter, seed
):
    """Also with rows the grouped GEMM refuses (6 or 3 floats: not whole 16-byte units), served by the loop."""
    top_k = min(top_k, num_experts)
    g = torch.Generator().manual_seed(seed)
    layer = SparseMoE(
        torch.randn(num_experts, hidden, generator=g),
        torch.randn(num_experts, 2 * inter, hidden, generator=g) * 0.2,
        torch.randn(num_experts, hidden, inter, generator=g) * 0.2,
        top_k,
        normalize,
    )
    x = torch.randn(tokens, hidden, generator=g)
    out, counts = sparse_moe(layer, x)
    torch.testing.assert_close(out, dense_reference(layer, x), atol=1e-5, rtol=0)
    assert counts.sum() == tokens * top_k


@pytest.mark.skipif(
    not moe_module._cpu_grouped_mm_runs(torch.float32), reason="torch without grouped_mm on CPU"
)
@settings(max_examples=40, deadline=None)
@given(
    tokens=st.integers(2, 80),
    num_experts=st.integers(2, 12),
    top_k=st.integers(1, 4),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 1000),
)
def test_grouped_gemm_equals_the_loop_over_experts(tokens, num_experts, top_k, dtype, seed):
    assume(moe_module._cpu_grouped_mm_runs(dtype))  # a torch may run it for fp32 only
    top_k = min(top_k, num_experts)
    g = torch.Generator().manual_seed(seed)
    layer = SparseMoE(
        torch.randn(num_experts, 24, generator=g).to(dtype),
        (torch.randn(num_experts, 2 * 8, 24, generator=g) * 0.2).to(dtype),
        (torch.randn(num_experts, 24, 8, generator=g) * 0.2).to(dtype),
        top_k,
        False,
    )
    x = torch.randn(tokens, 24, generator=g).to(dtype)
    weights, experts = route(F.linear(x, layer.router), top_k, False)
    weights, experts = weights.to(dtype).flatten(), experts.flatten()
    order = torch.argsort(experts, stable=True)
    counts = torch.bincount(experts, minlength=num_experts)
    assert moe_module._grouped_mm_applies(layer, x)

    grouped = moe_module._grouped_mm(layer, x, weights, order, counts)
    looped = moe_module._grouped(layer, x, weights, order, counts.tolist())

    tolerance = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(grouped, looped, atol=tolerance, rtol=tolerance)
