"""Load a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors) for a model.

Everything is read and checked before anything is returned, so a refused adapter leaves nothing behind; each
refusal is an AdapterError naming the adapter and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from moe_runtime.model.config import ModelConfig
from moe_runtime.model.lora.errors import AdapterError
from moe_runtime.model.lora.peft_config import AdapterConfig, read_adapter_config
from moe_runtime.model.lora.targets import (
    Target,
    TargetError,
    adaptable_modules,
    adaptable_parameters,
    locate,
)
from moe_runtime.model.lora.weights import Factors, LayerLora, build_layers

WEIGHTS_FILE = "adapter_model.safetensors"


@dataclass(frozen=True)
class Adapter:
    name: str
    path: str
    rank: int  # the largest rank of its targets
    layers: tuple[LayerLora | None, ...]  # per model layer; None where it changes nothing

    @property
    def nbytes(self) -> int:
        pairs = []
        for layer in filter(None, self.layers):
            pairs += [
                layer.pair(s)
                for s in ("qkv", "o", "mlp.gate_up", "mlp.down", "shared.gate_up", "shared.down")
            ]
            if layer.experts is not None:
                pairs += [*layer.experts.gate_up, *layer.experts.down]
        return sum(pair.nbytes for pair in pairs if pair is not None)


def load_adapter(
    name: str,
    path: str | Path,
    config: ModelConfig,
    *,
    dtype: torch.dtype,
    device: torch.device,
    max_rank: int,
) -> Adapter:
    path = Path(path)
    if not path.is_dir():
        raise AdapterError(name, f"{path}: not a directory")
    adapter_config = read_adapter_config(name, path)
    _check_targets(name, adapter_config, config)
    targets: dict[Target, dict[str, torch.Tensor]] = {}
    for key, tensor in _read_tensors(name, path).items():
        try:
            target, factor = locate(key, config, adapter_config)
        except TargetError as err:
            raise AdapterError(name, str(err)) from None
        factors = targets.setdefault(target, {})
        if factor in factors:
            raise AdapterError(name, f"tensor {key!r} repeats lora_{factor} of {target.module}: unused")
        factors[factor] = tensor
    if not targets:
        raise AdapterError(name, f"{path / WEIGHTS_FILE}: holds no LoRA tensors")
    per_expert = any(t.expert is not None for t in targets)
    if per_expert and any(t.fused for t in targets):
        raise AdapterError(name, "mixes per-expert and fused expert tensors")
    checked = {t: _checked(name, t, factors, adapter_config, max_rank) for t, factors in targets.items()}
    return Adapter(
        name=name,
        path=str(path),
        rank=max(adapter_config.rank(t.module) for t in targets),
        layers=build_layers(config, checked, dtype, device),
    )


def _check_targets(name: str, adapter: AdapterConfig, config: ModelConfig) -> None:
    """PEFT's rule: the targets must match something of the model (one entry that matches nothing is fine:
    a config written for several families, say gate_proj on Mixtral). We count only what we can adapt."""
    if adapter.target_modules and not any(adapter.targets_module(m) for m in adaptable_modules(config)):
        raise AdapterError(
            name,
            f"target_modules {adapter.target_modules!r} match no module of the model that can be adapted "
            "(attention q/k/v/o_proj, MLP, shared-expert and expert projections)",
        )
    if adapter.target_parameters and not any(
        adapter.targets_parameter(p) for p in adaptable_parameters(config)
    ):
        raise AdapterError(
            name,
            f"target_parameters {adapter.target_parameters!r} match no parameter of the model "
            "(mlp.experts.gate_up_proj / down_proj)",
        )


def _read_tensors(name: str, path: Path) -> dict[str, torch.Tensor]:
    file = path / WEIGHTS_FILE
    if not file.is_file():
        other = (
            " (pickled adapter_model.bin is not read; save with safetensors)"
            if (path / "adapter_model.bin").exists()
            else ""
        )
        raise AdapterError(name, f"{file}: missing{other}")
    try:
        with safe_open(file, "pt") as f:
            names = f.keys()
            return {key: f.get_tensor(key) for key in names}
    except (SafetensorError, OSError) as err:
        raise AdapterError(name, f"{file}: unreadable ({err})") from err


def _checked(
    name: str, target: Target, factors: dict[str, torch.Tensor], adapter: AdapterConfig, max_rank: int
) -> Factors:
    for factor in "AB":
        if factor not in factors:
            raise AdapterError(
                name, f"{target.module}: lora_{factor} is missing (has only lora_{'AB'.replace(factor, '')})"
            )
    rank = adapter.rank(target.module)
    if rank > max_rank:
        raise AdapterError(name, f"rank {rank} of {target.module} is above max_lora_rank {max_rank}")
    a, b = factors["A"], factors["B"]
    width = rank * target.experts
    for factor, tensor, expected in (
        ("A", a, (width, target.in_features)),
        ("B", b, (target.out_features, width)),
    ):
        if tuple(tensor.shape) != expected:
            raise AdapterError(
                name,
                f"shape of {target.module} lora_{factor} is {tuple(tensor.shape)}, but the model and rank {rank} "
                f"(adapter_config.json) need {expected}",
            )
    if not (a.is_floating_point() and b.is_floating_point()):
        raise AdapterError(name, f"{target.module}: LoRA weights must be floating point, not {a.dtype}")
    return a.float(), b.float() * adapter.scaling(target.module)
