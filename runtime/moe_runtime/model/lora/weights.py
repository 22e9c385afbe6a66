"""An adapter's weights laid out like our model's fused weights, so that each low-rank update lands on the
output of one of our matmuls: q/k/v on the stacked qkv projection, gate/up on the stacked gate_up ones.

Parts that share one of our matmuls are joined: their lora_A rows are stacked and their lora_B placed block
diagonally (a part's B only reaches its own output rows), so one shrink and one expand give every part's
update at once. The scaling is folded into the expand matrix; both are stored transposed and contiguous
(shrink = A.T [in, R], expand = B.T [R, out]), the orientation a plain matmul reads fastest. Routed experts
keep one pair per expert (None for the experts the adapter leaves alone, which then cost nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moe_runtime.model.config import ModelConfig
from moe_runtime.model.lora.targets import Target


@dataclass(frozen=True)
class LoraPair:
    """Adds (x @ shrink) @ expand to a matmul's output: shrink [in, R], expand [R, out] (scaling included)."""

    shrink: torch.Tensor
    expand: torch.Tensor

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.shrink, self.expand))


@dataclass(frozen=True)
class MlpLora:
    gate_up: LoraPair | None
    down: LoraPair | None


@dataclass(frozen=True)
class ExpertsLora:
    gate_up: tuple[LoraPair | None, ...]  # per expert; None: unchanged
    down: tuple[LoraPair | None, ...]


@dataclass(frozen=True)
class LayerLora:
    qkv: LoraPair | None = None
    o: LoraPair | None = None
    mlp: MlpLora | None = None  # a dense layer's MLP
    shared: MlpLora | None = None  # Qwen2-MoE's shared expert
    experts: ExpertsLora | None = None

    def pair(self, site: str) -> LoraPair | None:
        """site: qkv, o, or mlp / shared followed by .gate_up or .down."""
        block, _, part = site.partition(".")
        value = getattr(self, block)
        return getattr(value, part) if part and value is not None else value


# A checked target: its lora_A [r * experts, in] and lora_B [out, r * experts] already scaled.
Factors = tuple[torch.Tensor, torch.Tensor]


def build_layers(
    config: ModelConfig, targets: dict[Target, Factors], dtype: torch.dtype, device: torch.device
) -> tuple[LayerLora | None, ...]:
    by_layer: dict[int, dict[Target, Factors]] = {}
    for target, factors in targets.items():
        by_layer.setdefault(target.layer, {})[target] = factors
    cast = _Cast(dtype, device)
    return tuple(
        _layer(config, by_layer[i], cast) if i in by_layer else None for i in range(config.num_layers)
    )


def _layer(config: ModelConfig, targets: dict[Target, Factors], cast) -> LayerLora:
    hd, inner = config.head_dim, config.intermediate_size
    q, kv = config.num_heads * hd, config.num_kv_heads * hd

    def parts(site: str) -> dict[str, Factors]:
        return {t.part: f for t, f in targets.items() if t.site == site and t.expert is None}

    attention = parts("attention")
    qkv = _joined(attention, {"q": 0, "k": q, "v": q + kv}, q + 2 * kv, cast)
    o = _joined(attention, {"o": 0}, config.hidden_size, cast)
    mlp = _mlp(parts("mlp"), inner, config.hidden_size, cast)
    shared = _mlp(parts("shared"), config.shared_expert_intermediate_size, config.hidden_size, cast)
    experts = _experts(config, targets, cast)
    return LayerLora(qkv, o, mlp, shared, experts)


def _mlp(parts: dict[str, Factors], inner: int, d: int, cast) -> MlpLora | None:
    if not parts:
        return None
    return MlpLora(
        _joined(parts, {"gate": 0, "up": inner}, 2 * inner, cast), _joined(parts, {"down": 0}, d, cast)
    )


def _joined(parts: dict[str, Factors], offsets: dict[str, int], out: int, cast) -> LoraPair | None:
    return _pair(*_join([(offsets[name], parts[name]) for name in offsets if name in parts], out), cast)


def _pair(a: torch.Tensor | None, b: torch.Tensor | None, cast) -> LoraPair | None:
    return None if a is None else LoraPair(cast(a.t()), cast(b.t()))


def _join(placed: list[tuple[int, Factors]], out: int):
    """Stack the parts' A rows; place each B in its rows (offset) and its own rank columns."""
    if not placed:
        return None, None
    a = torch.cat([fa for _, (fa, _) in placed])
    b = torch.zeros(out, a.shape[0], dtype=a.dtype)
    column = 0
    for offset, (_, fb) in placed:
        b[offset : offset + fb.shape[0], column : column + fb.shape[1]] = fb
        column += fb.shape[1]
    return a, b


def _experts(config: ModelConfig, targets: dict[Target, Factors], cast) -> ExpertsLora | None:
    routed = {t: f for t, f in targets.items() if t.site == "experts"}
    if not routed:
        return None
    num, inner = config.num_experts, config.moe_intermediate_size
    fused = {t.part: f for t, f in routed.items() if t.fused}
    if fused:
        return ExpertsLora(_fused(fused.get("gate_up"), num, cast), _fused(fused.get("down"), num, cast))
    per_expert: list[dict[str, Factors]] = [{} for _ in range(num)]
    for target, factors in routed.items():
        per_expert[target.expert][target.part] = factors
    gate_up = [
        _join([(o, p[n]) for n, o in (("gate", 0), ("up", inner)) if n in p], 2 * inner) for p in per_expert
    ]
    down = [_join([(0, p["down"])] if "down" in p else [], config.hidden_size) for p in per_expert]
    return ExpertsLora(
        tuple(_pair(a, b, cast) for a, b in gate_up), tuple(_pair(a, b, cast) for a, b in down)
    )


def _fused(factors: Factors | None, num: int, cast) -> tuple[LoraPair | None, ...]:
    """PEFT's ParamWrapper factors -> one pair per expert (see targets.py for the layout)."""
    if factors is None:
        return (None,) * num
    a, b = factors
    rank = a.shape[0] // num
    a = a.reshape(num, rank, a.shape[1])  # expert-major rows
    b = b.reshape(b.shape[0], rank, num)  # rank-major columns
    return tuple(_pair(a[e], b[:, :, e], cast) for e in range(num))


class _Cast:
    def __init__(self, dtype: torch.dtype, device: torch.device):
        self.dtype, self.device = dtype, device

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(device=self.device, dtype=self.dtype).contiguous()
