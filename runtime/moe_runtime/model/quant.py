"""Weight-only int8 quantisation with one scale per output channel, and the linear that uses it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Measured on a 2-core EPYC (avx512_bf16, torch 2.15, 4096x4096 weight): torch._weight_int8pack_mm with
# bf16 activations beats both fp32 and bf16 dense linears up to ~32 rows (2.8x faster than fp32 at one row);
# with fp32 activations it is 10-100x slower, hence the cast. From ~64 rows an fp32 matmul over the
# dequantised weight wins. On an AVX2-only CPU (no AVX-512) the kernel is not vectorised: it streams ~2 GB/s
# of int8, about the time per weight of an fp32 linear, so int8 there saves memory but little decode time.
INT8PACK_MAX_ROWS = 32


@dataclass(frozen=True)
class Int8Weight:
    """w ~= q * scale[..., None]; q is int8 [..., out, in], scale bf16 [..., out]."""

    q: torch.Tensor
    scale: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    def __getitem__(self, index) -> Int8Weight:
        return Int8Weight(self.q[index], self.scale[index])

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        return self.q.to(dtype) * self.scale.to(dtype)[..., None]


Weight = torch.Tensor | Int8Weight


def quantize_int8(w: torch.Tensor) -> Int8Weight:
    """Symmetric per-output-channel quantisation of a [..., out, in] weight."""
    w = w.float()
    # Round the scale to bf16 (the kernel's dtype) before dividing, so q is exact for the scale it is used with.
    scale = (w.abs().amax(dim=-1) / 127).clamp(min=1e-10).to(torch.bfloat16)
    q = torch.round(w / scale.float()[..., None]).clamp(-127, 127).to(torch.int8)
    return Int8Weight(q, scale)


def linear(x: torch.Tensor, w: Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(w, torch.Tensor):
        return F.linear(x, w, bias)
    rows = x.numel() // x.shape[-1]
    if x.device.type == "cpu" and rows <= INT8PACK_MAX_ROWS:
        flat = x if x.dim() == 2 else x.reshape(rows, x.shape[-1])
        out = torch._weight_int8pack_mm(flat.to(torch.bfloat16), w.q, w.scale).to(x.dtype)
        out = out if x.dim() == 2 else out.view(*x.shape[:-1], -1)
    else:
        out = F.linear(x, w.q.to(x.dtype)) * w.scale.to(x.dtype)
    return out if bias is None else out + bias


def embed(ids: torch.Tensor, table: Weight, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(table, torch.Tensor):
        return F.embedding(ids, table)
    return table[ids].dequantize(dtype)


def nbytes(w: Weight) -> int:
    if isinstance(w, torch.Tensor):
        return w.numel() * w.element_size()
    return nbytes(w.q) + nbytes(w.scale)
