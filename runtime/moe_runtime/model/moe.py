"""Feed-forward blocks: the dense SwiGLU MLP and the sparse mixture of experts.

Sparse dispatch sorts the (token, expert) pairs by expert and runs each expert that was chosen once, over
exactly the tokens that chose it; experts nobody chose cost nothing. On the CPU the experts' matmuls run as two
grouped GEMMs (torch's grouped_mm), where torch has it, and one token's experts in one native call (`native`).
Expert weights are stacked per layer: gate+up as [E, 2I, D], down as [E, D, I]. The per-expert work is only
the two matmuls, each writing its rows of one buffer; gathering the tokens, the activation, the routing
weights and adding the pairs back to their tokens run once for all experts (on a CPU the ops per expert cost
more than their arithmetic at decode sizes: 2x faster than an expert-by-expert loop at 16 tokens, 16 experts,
top-4; 1.4x at 154 tokens).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from moe_runtime.model import native
from moe_runtime.model.lora.batch import LayerBatch, Part, add_lora
from moe_runtime.model.quant import Weight, linear

_GROUPED_MM = getattr(F, "grouped_mm", None)


@dataclass
class DenseMLP:
    gate_up: Weight  # [2I, D]: gate rows first, then up rows
    down: Weight  # [D, I]


@dataclass
class SparseMoE:
    router: torch.Tensor  # [E, D], kept in the activation dtype: routing decides which experts run
    gate_up: Weight  # [E, 2I, D]
    down: Weight  # [E, D, I]
    top_k: int
    norm_topk_prob: bool
    shared: DenseMLP | None = None  # Qwen2-MoE's always-on expert
    shared_gate: torch.Tensor | None = None  # [1, D]: sigmoid gate scaling the shared expert per token


def swiglu(
    x: torch.Tensor, gate_up: Weight, down: Weight, lora_gate_up: list[Part] = (), lora_down: list[Part] = ()
) -> torch.Tensor:
    gate_up_out = linear(x, gate_up)
    if lora_gate_up:
        add_lora(gate_up_out, x, lora_gate_up)
    gate, up = gate_up_out.chunk(2, dim=-1)
    hidden = F.silu(gate) * up
    out = linear(hidden, down)
    if lora_down:
        add_lora(out, hidden, lora_down)
    return out


def dense_mlp(
    mlp: DenseMLP, x: torch.Tensor, lora: LayerBatch | None = None, site: str = "mlp"
) -> torch.Tensor:
    """`site` names the block's adapter weights: mlp (a dense layer) or shared (the shared expert)."""
    if lora is None:
        return swiglu(x, mlp.gate_up, mlp.down)
    return swiglu(x, mlp.gate_up, mlp.down, lora.parts(f"{site}.gate_up"), lora.parts(f"{site}.down"))


def route(router_logits: torch.Tensor, top_k: int, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax in fp32, top-k, optional renormalisation -> (weights [T, k] fp32, expert ids [T, k])."""
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, experts = torch.topk(probs, top_k, dim=-1)
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, experts


def sparse_moe(
    moe: SparseMoE, x: torch.Tensor, lora: LayerBatch | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [T, D] -> (output [T, D], tokens per expert [E] int64). `lora`: the batch's adapters in this layer."""
    num_experts = moe.router.shape[0]
    weights, experts = route(F.linear(x, moe.router), moe.top_k, moe.norm_topk_prob)
    weights = weights.to(x.dtype).flatten()
    experts = experts.flatten()
    counts = torch.bincount(experts, minlength=num_experts)
    if lora is not None and lora.routed:
        order, group_counts = lora.sort_routed(experts, moe.top_k, num_experts)
        out = _grouped(moe, x, weights, order, [sum(c) for c in group_counts], lora, group_counts)
    elif x.shape[0] == 1 and _native_experts_apply(moe, x):
        out = native.experts_one_token(x, moe.gate_up, moe.down, experts, weights)
    elif x.shape[0] == 1:
        out = _one_token(moe, x, weights, experts)
    elif _grouped_mm_applies(moe, x):
        out = _grouped_mm(moe, x, weights, torch.argsort(experts, stable=True), counts)
    else:
        out = _grouped(moe, x, weights, torch.argsort(experts, stable=True), counts.tolist())
    if moe.shared is not None:
        out += torch.sigmoid(F.linear(x, moe.shared_gate)) * dense_mlp(moe.shared, x, lora, "shared")
    return out, counts


def _one_token(moe: SparseMoE, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """A decode step of one sequence: its k experts in turn, with no sorting or indexing."""
    out = None
    for expert, weight in zip(experts.tolist(), weights, strict=True):
        y = swiglu(x, moe.gate_up[expert], moe.down[expert]) * weight
        out = y if out is None else out.add_(y)
    return out


def _native_experts_apply(moe: SparseMoE, x: torch.Tensor) -> bool:
    """The native kernel for one token's experts: unquantised, contiguous expert weights of x's dtype."""
    return (
        isinstance(moe.gate_up, torch.Tensor)
        and isinstance(moe.down, torch.Tensor)
        and native.applies(x, moe.gate_up, moe.down)
        and moe.gate_up.is_contiguous()
        and moe.down.is_contiguous()
    )


def _grouped_mm_applies(moe: SparseMoE, x: torch.Tensor) -> bool:
    """torch's grouped GEMM where it was measured: on the CPU, with unquantised weights, in a torch whose CPU
    build runs it for this dtype (tried once per dtype), and with rows of whole 16-byte units (the kernel
    refuses other strides). On a GPU it takes only bf16 on SM >= 80, so the GPU keeps the loop over experts."""
    return (
        x.device.type == "cpu"
        and isinstance(moe.gate_up, torch.Tensor)
        and isinstance(moe.down, torch.Tensor)
        and (x.shape[-1] * x.element_size()) % 16 == 0
        and (moe.down.shape[-1] * x.element_size()) % 16 == 0
        and _cpu_grouped_mm_runs(x.dtype)
    )


@functools.cache
def _cpu_grouped_mm_runs(dtype: torch.dtype) -> bool:
    if _GROUPED_MM is None:
        return False
    try:
        _GROUPED_MM(
            torch.ones(2, 8, dtype=dtype),
            torch.ones(2, 8, 8, dtype=dtype),
            offs=torch.tensor([1, 2], dtype=torch.int32),
        )
    except (RuntimeError, NotImplementedError):
        return False
    return True


def _grouped_mm(moe: SparseMoE, x, weights, order, counts: torch.Tensor) -> torch.Tensor:
    """`_grouped` in two grouped GEMMs instead of two matmuls per expert: 1.1-1.3x faster for 4-256 tokens
    (16 experts, top-4, fp32, one thread); the same numbers to the bit in that measurement."""
    tokens = order // moe.top_k
    rows = x[tokens]
    ends = counts.cumsum(0).to(torch.int32)
    inter = moe.down.shape[-1]
    hidden = _GROUPED_MM(rows, moe.gate_up.transpose(1, 2), offs=ends)
    act = F.silu(hidden[:, :inter]) * hidden[:, inter:]
    out = _GROUPED_MM(act, moe.down.transpose(1, 2), offs=ends)
    return _add_back(x, out, weights, order, tokens)


def _grouped(
    moe: SparseMoE, x, weights, order, counts: list[int], lora: LayerBatch | None = None, group_counts=None
) -> torch.Tensor:
    """The (token, slot) pairs in `order` (grouped by expert: `counts[e]` of them for expert e, and with `lora`
    by adapter segment inside each expert: `group_counts[e]`), each expert's rows through its two matmuls (and
    its adapters' updates of exactly their rows), then added back to their tokens, weighted."""
    tokens = order // moe.top_k
    rows = x[tokens]
    inter = moe.down.shape[-1]
    hidden = x.new_empty(rows.shape[0], 2 * inter)
    spans = []
    start = 0
    for expert, count in enumerate(counts):
        if count:
            spans.append((expert, start, start + count))
            start += count
    for expert, a, b in spans:
        _linear_into(hidden[a:b], rows[a:b], moe.gate_up[expert])
        if lora is not None and (parts := lora.expert_parts(expert, group_counts[expert])[0]):
            add_lora(hidden[a:b], rows[a:b], parts)
    act = F.silu(hidden[:, :inter]) * hidden[:, inter:]
    out = x.new_empty(rows.shape)
    for expert, a, b in spans:
        _linear_into(out[a:b], act[a:b], moe.down[expert])
        if lora is not None and (parts := lora.expert_parts(expert, group_counts[expert])[1]):
            add_lora(out[a:b], act[a:b], parts)
    return _add_back(x, out, weights, order, tokens)


def _add_back(x, out, weights, order, tokens) -> torch.Tensor:
    """Each (token, expert) pair's output, weighted by its routing weight, added into its token's row."""
    out *= weights[order, None]
    return torch.zeros_like(x).index_add_(0, tokens, out)


def _linear_into(out: torch.Tensor, x: torch.Tensor, w: Weight) -> None:
    if isinstance(w, torch.Tensor):
        torch.mm(x, w.t(), out=out)
    else:
        out.copy_(linear(x, w))
