"""Applying adapters inside a forward pass over a mixed batch.

The engine lays the batch out grouped by adapter (base rows first), so each adapter's rows are one contiguous
segment of the flat token batch. A low-rank update is added only to its segment's rows: for one of our matmuls
(output `out` from input `x`) that is `out[s:e] += (x[s:e] @ A.T) @ B.T` per segment, in `add_lora`, the place
where a segmented GPU kernel goes (punica's SGMV / BGMV: `shrink` x by every segment's A, then `expand` by its
B, for all segments in one launch, given the segments' starts, lengths and adapter slots). Routed experts are
grouped by expert first, as the sparse dispatch already does, then by adapter inside each expert's tokens: each
(adapter, expert) update runs once over exactly the tokens of that adapter routed to that expert.
"""

from __future__ import annotations

import torch

from moe_runtime.model.lora.adapter import Adapter
from moe_runtime.model.lora.weights import LayerLora, LoraPair

# (pair, first row, end row): one segment's update for one matmul.
Part = tuple[LoraPair, int, int]


def add_lora(out: torch.Tensor, x: torch.Tensor, parts: list[Part]) -> None:
    """out[s:e] += (x[s:e] @ shrink) @ expand for each part, in place (segments are row slices: no gather)."""
    for pair, start, end in parts:
        out[start:end].addmm_(torch.mm(x[start:end], pair.shrink), pair.expand)


class LoraBatch:
    """Which adapter each row of a forward pass uses: `segments` (adapter, first row, end row), ordered by row,
    disjoint; rows in no segment use the base model alone."""

    def __init__(self, segments: list[tuple[Adapter, int, int]], rows: int, device: torch.device):
        self.segments = segments
        self.row_segment = torch.zeros(rows, dtype=torch.int64, device=device)  # 0: base, i + 1: segments[i]
        for i, (_, start, end) in enumerate(segments):
            self.row_segment[start:end] = i + 1

    def layer(self, index: int) -> LayerBatch | None:
        layers = [adapter.layers[index] for adapter, _, _ in self.segments]
        if all(layer is None for layer in layers):
            return None
        return LayerBatch(self, layers)


class LayerBatch:
    """The adapters of one layer over the batch's segments."""

    def __init__(self, batch: LoraBatch, layers: list[LayerLora | None]):
        self.batch = batch
        self.layers = layers  # aligned with batch.segments
        self.routed = any(layer is not None and layer.experts is not None for layer in layers)

    def parts(self, site: str) -> list[Part]:
        """Each segment's update of `site` (qkv, o, mlp.gate_up, mlp.down, shared.gate_up, shared.down)."""
        parts = []
        for layer, (_, start, end) in zip(self.layers, self.batch.segments, strict=True):
            pair = layer.pair(site) if layer is not None else None
            if pair is not None:
                parts.append((pair, start, end))
        return parts

    def add(self, site: str, out: torch.Tensor, x: torch.Tensor) -> None:
        add_lora(out, x, self.parts(site))

    def sort_routed(self, experts: torch.Tensor, top_k: int, num_experts: int):
        """(token, slot) pairs (experts flattened [T * k]) sorted by expert, then by segment ->
        (order, rows per expert per segment: a list of E lists of 1 + len(segments) counts, base first)."""
        groups = len(self.layers) + 1
        key = experts * groups + self.batch.row_segment.repeat_interleave(top_k)
        order = torch.argsort(key, stable=True)
        counts = torch.bincount(key, minlength=num_experts * groups).view(num_experts, groups)
        return order, counts.tolist()

    def expert_parts(self, expert: int, segment_counts: list[int]) -> tuple[list[Part], list[Part]]:
        """The (gate_up, down) updates for one expert's tokens, laid out by segment as sort_routed counted."""
        gate_up, down = [], []
        start = segment_counts[0]
        for layer, count in zip(self.layers, segment_counts[1:], strict=True):
            routed = layer.experts if layer is not None else None
            if count and routed is not None:
                if (pair := routed.gate_up[expert]) is not None:
                    gate_up.append((pair, start, start + count))
                if (pair := routed.down[expert]) is not None:
                    down.append((pair, start, start + count))
            start += count
        return gate_up, down
