"""Load a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors) for a model.

Everything is checked before anything is returned, so a refused adapter leaves nothing behind; each refusal is
an AdapterError naming the adapter and the reason. The tensors are checked from the safetensors header (names,
shapes, dtypes) before a byte of them is read: an adapter of any declared size is refused at the cost of its
header, and what passes is at most max_lora_rank wide on each of the model's own projections.
"""

from __future__ import annotations

from contextlib import contextmanager
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
    with _weights(name, path) as weights:
        declared = _declared(weights)
        targets: dict[Target, dict[str, str]] = {}  # target -> factor -> tensor name
        for key in declared:
            try:
                target, factor = locate(key, config, adapter_config)
            except TargetError as err:
                raise AdapterError(name, str(err)) from None
            factors = targets.setdefault(target, {})
            if factor in factors:
                raise AdapterError(name, f"tensor {key!r} repeats lora_{factor} of {target.module}: unused")
            factors[factor] = key
        if not targets:
            raise AdapterError(name, f"{path / WEIGHTS_FILE}: holds no LoRA tensors")
        per_expert = any(t.expert is not None for t in targets)
        if per_expert and any(t.fused for t in targets):
            raise AdapterError(name, "mixes per-expert and fused expert tensors")
        for target, factors in targets.items():
            _check_declared(
                name, target, {f: declared[k] for f, k in factors.items()}, adapter_config, max_rank
            )
        # every tensor is as the model and the rank need: only now are its bytes read
        checked = {
            target: _scaled(
                target, weights.get_tensor(factors["A"]), weights.get_tensor(factors["B"]), adapter_config
            )
            for target, factors in targets.items()
        }
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


@contextmanager
def _weights(name: str, path: Path):
    file = path / WEIGHTS_FILE
    if not file.is_file():
        other = (
            " (pickled adapter_model.bin is not read; save with safetensors)"
            if (path / "adapter_model.bin").exists()
            else ""
        )
        raise AdapterError(name, f"{file}: missing{other}")
    try:
        with safe_open(file, "pt") as weights:
            yield weights
    except (SafetensorError, OSError) as err:
        raise AdapterError(name, f"{file}: unreadable ({err})") from err


def _declared(weights) -> dict[str, tuple[tuple[int, ...], str]]:
    """Each tensor's shape and dtype, from the header alone."""
    found = {}
    for key in weights.keys():  # noqa: SIM118 - a safetensors handle, not a dict
        part = weights.get_slice(key)
        found[key] = (tuple(part.get_shape()), part.get_dtype())
    return found


# safetensors' names of the floating-point dtypes
FLOATING = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})


def _check_declared(
    name: str,
    target: Target,
    declared: dict[str, tuple[tuple[int, ...], str]],  # factor -> (shape, dtype) from the header
    adapter: AdapterConfig,
    max_rank: int,
) -> None:
    for factor in "AB":
        if factor not in declared:
            raise AdapterError(
                name, f"{target.module}: lora_{factor} is missing (has only lora_{'AB'.replace(factor, '')})"
            )
    rank = adapter.rank(target.module)
    if rank > max_rank:
        raise AdapterError(name, f"rank {rank} of {target.module} is above max_lora_rank {max_rank}")
    width = rank * target.experts
    for factor, expected in (("A", (width, target.in_features)), ("B", (target.out_features, width))):
        shape, dtype = declared[factor]
        if shape != expected:
            raise AdapterError(
                name,
                f"shape of {target.module} lora_{factor} is {shape}, but the model and rank {rank} "
                f"(adapter_config.json) need {expected}",
            )
        if dtype not in FLOATING:
            raise AdapterError(name, f"{target.module}: LoRA weights must be floating point, not {dtype}")


def _scaled(target: Target, a: torch.Tensor, b: torch.Tensor, adapter: AdapterConfig) -> Factors:
    return a.float(), b.float() * adapter.scaling(target.module)
