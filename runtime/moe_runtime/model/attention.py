"""The paged KV cache and causal / sliding-window / window+sink attention over it.

Keys and values live in fixed-size blocks of `block_size` token slots: per layer one key and one value tensor
[kv_heads, slots, head_dim] (`KvPool`), slot = block * block_size + offset; a sequence's block table lists its
blocks in position order. A step first writes its new tokens' keys and values into their slots (one copy per
layer for the whole batch), then each sequence attends to its own keys where they lie:
- a decode item (one query) reads the runs of consecutive slots that hold the positions it sees, in place: no
  copy, no padding to the longest sequence, so its cost follows its own length (one run when its blocks are
  consecutive, which the block allocator arranges where it can); on the CPU every decode item of a layer goes
  through one call of the native kernel (`native`) where it could be built;
- a prefill chunk gathers the keys its queries see and runs SDPA under the mask, per block of `QUERY_BLOCK`
  queries, each against only the keys it can see.
What a step reads and writes is planned once per step from the block tables (`plan_step`), not per layer.

A query at position p sees key j when j <= p and (j > p - window or j < sinks): `window` counts the query
itself, as transformers' sliding-window mask does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from moe_runtime.model import native
from moe_runtime.model.native import DecodeBatch

# Long prefills run SDPA per block of queries, each against only the keys it can see (sinks + the window
# before it); on CPU at 8K tokens that was ~9x faster than one SDPA with a dense mask.
QUERY_BLOCK = 512

Run = tuple[int, int]  # (first slot, number of slots)


class KvPool:
    """Every layer's keys and values: `keys[layer]`, `values[layer]` [kv_heads, num_slots, head_dim]. Memory is
    reserved, not touched: on the CPU a page counts once a block on it is written."""

    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, num_slots: int, dtype, device):
        self.num_slots = num_slots
        self.keys = [
            torch.empty(kv_heads, num_slots, head_dim, dtype=dtype, device=device) for _ in range(num_layers)
        ]
        self.values = [torch.empty_like(k) for k in self.keys]


@dataclass(frozen=True)
class Decode:
    """One query (row `row`) against the keys in `runs`, in position order."""

    row: int
    runs: tuple[Run, ...]


@dataclass(frozen=True)
class QueryBlock:
    """Queries [first, first + count) of a prefill item against the keys at `slots` (a run, or a gather index),
    under `mask` [group * count, keys] (None: every key is visible to every query)."""

    first: int
    count: int
    slots: Run | torch.Tensor
    mask: torch.Tensor | None


@dataclass(frozen=True)
class Prefill:
    row: int  # its first row in the step
    count: int
    blocks: tuple[QueryBlock, ...]


@dataclass(frozen=True)
class StepPlan:
    """What one step writes (`write_slots`, one per new token, in row order) and, per layer, what each item
    reads (layers with the same window share their list), with the decode items also as one `DecodeBatch` for
    the native kernel (None: no decode item, or not on the CPU)."""

    write_slots: torch.Tensor
    layers: list[list[Decode | Prefill]]
    decodes: list[DecodeBatch | None]


@dataclass(frozen=True)
class ItemKv:
    """One batch item as the cache sees it: its block table, its first new position, its new token count."""

    block_table: list[int]
    start: int
    count: int


def plan_step(
    items: list[ItemKv],
    block_size: int,
    layer_windows: tuple[int | None, ...],
    sinks: int,
    group: int,
    device,
) -> StepPlan:
    write = []
    for item in items:
        write += _slots(item.block_table, block_size, item.start, item.start + item.count)
    by_window: dict[int | None, list[Decode | Prefill]] = {}
    decodes: dict[int | None, DecodeBatch | None] = {}
    for window in layer_windows:
        if window not in by_window:
            reads = _plan_reads(items, block_size, window, sinks if window else 0, group, device)
            by_window[window] = reads
            decode_reads = [(read.row, read.runs) for read in reads if isinstance(read, Decode)]
            on_cpu = torch.device(device).type == "cpu"
            decodes[window] = native.decode_batch(decode_reads) if decode_reads and on_cpu else None
    return StepPlan(
        torch.tensor(write, dtype=torch.int64, device=device),
        [by_window[window] for window in layer_windows],
        [decodes[window] for window in layer_windows],
    )


def _plan_reads(items, block_size, window, sinks, group, device) -> list[Decode | Prefill]:
    reads: list[Decode | Prefill] = []
    row = 0
    for item in items:
        if item.count == 1:
            ranges = visible_ranges(item.start, item.start + 1, window, sinks)
            reads.append(Decode(row, tuple(_runs(item.block_table, block_size, ranges))))
        else:
            blocks = []
            for a in range(item.start, item.start + item.count, QUERY_BLOCK):
                n = min(QUERY_BLOCK, item.start + item.count - a)
                ranges = visible_ranges(a, a + n, window, sinks)
                runs = _runs(item.block_table, block_size, ranges)
                slots = runs[0] if len(runs) == 1 else _gather_index(runs, device)
                key_pos = torch.cat([torch.arange(lo, hi) for lo, hi in ranges])
                mask = None
                if n > 1:
                    mask = visible(torch.arange(a, a + n), key_pos, window, sinks).repeat(group, 1).to(device)
                blocks.append(QueryBlock(a - item.start, n, slots, mask))
            reads.append(Prefill(row, item.count, tuple(blocks)))
        row += item.count
    return reads


def visible_ranges(first: int, end: int, window: int | None, sinks: int) -> list[tuple[int, int]]:
    """The key positions queries first..end-1 see together, as disjoint [lo, hi) ranges in order."""
    if window is None:
        return [(0, end)]
    lo = max(0, first - window + 1)
    if lo <= sinks:
        return [(0, end)]
    return [(0, sinks), (lo, end)] if sinks else [(lo, end)]


def _runs(table: list[int], block_size: int, ranges: list[tuple[int, int]]) -> list[Run]:
    runs: list[list[int]] = []
    for lo, hi in ranges:
        position = lo
        while position < hi:
            index, offset = divmod(position, block_size)
            take = min(block_size - offset, hi - position)
            slot = table[index] * block_size + offset
            if runs and runs[-1][0] + runs[-1][1] == slot:
                runs[-1][1] += take
            else:
                runs.append([slot, take])
            position += take
    return [(start, count) for start, count in runs]


def _slots(table: list[int], block_size: int, lo: int, hi: int) -> list[int]:
    return [table[p // block_size] * block_size + p % block_size for p in range(lo, hi)]


def _gather_index(runs: list[Run], device) -> torch.Tensor:
    return torch.cat([torch.arange(start, start + count) for start, count in runs]).to(device)


def attend(
    pool: KvPool, layer: int, plan: StepPlan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """q [T, heads, d], k/v [T, kv_heads, d] for the step's new tokens -> output [T, heads, d]; stores k/v."""
    keys, values = pool.keys[layer], pool.values[layer]
    keys.index_copy_(1, plan.write_slots, k.transpose(0, 1))
    values.index_copy_(1, plan.write_slots, v.transpose(0, 1))
    kv_heads, d = keys.shape[0], keys.shape[2]
    group = q.shape[1] // kv_heads
    scale = 1.0 / math.sqrt(d)
    out = q.new_empty(q.shape)
    decodes = plan.decodes[layer]
    in_kernel = decodes is not None and native.applies(keys)
    if in_kernel:
        native.attend_decodes(q, keys, values, decodes, scale, out)
    for read in plan.layers[layer]:
        if isinstance(read, Decode):
            if not in_kernel:
                out[read.row] = _decode(q[read.row].view(kv_heads, group, d) * scale, keys, values, read.runs)
            continue
        for block in read.blocks:
            first = read.row + block.first
            if isinstance(block.slots, tuple):
                start, count = block.slots
                k_blk, v_blk = keys[:, start : start + count], values[:, start : start + count]
            else:
                k_blk, v_blk = keys.index_select(1, block.slots), values.index_select(1, block.slots)
            out[first : first + block.count] = _sdpa(q[first : first + block.count], k_blk, v_blk, block.mask)
    return out


def _decode(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, runs: tuple[Run, ...]) -> torch.Tensor:
    """q [kv_heads, group, d] (pre-scaled) against the keys in `runs` -> [heads, d]. Plain matmuls: for one
    query they cost less than SDPA's kernel set-up, and several runs share one softmax."""
    if len(runs) == 1:
        start, count = runs[0]
        scores = torch.bmm(q, keys[:, start : start + count].transpose(1, 2))
        out = torch.bmm(_softmax(scores, values.dtype), values[:, start : start + count])
    else:
        scores = torch.cat([torch.bmm(q, keys[:, s : s + n].transpose(1, 2)) for s, n in runs], dim=-1)
        probs = _softmax(scores, values.dtype)
        out, offset = None, 0
        for start, count in runs:
            part = torch.bmm(probs[..., offset : offset + count], values[:, start : start + count])
            out = part if out is None else out.add_(part)
            offset += count
    return out.view(-1, q.shape[-1])


def _softmax(scores: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if scores.dtype == torch.float32:
        return torch.softmax(scores, dim=-1)
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)


def visible(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None, sinks: int) -> torch.Tensor:
    """Boolean [queries, keys] mask: which key positions each query position attends to."""
    q_pos, k_pos = q_pos[:, None], k_pos[None, :]
    mask = k_pos <= q_pos
    if window is not None:
        mask &= (k_pos > q_pos - window) | (k_pos < sinks)
    return mask


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """q [n, heads, d]; k/v [kv_heads, keys, d]; mask [group * n, keys] or None. Grouped-query attention
    without repeating k/v: the query heads sharing a kv head are laid out as extra query rows of that head."""
    n, heads, d = q.shape
    kv_heads = k.shape[0]
    group = heads // kv_heads
    q = q.view(n, kv_heads, group, d).permute(1, 2, 0, 3).reshape(kv_heads, group * n, d)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.view(kv_heads, group, n, d).permute(2, 0, 1, 3).reshape(n, heads, d)
