"""Where each tensor of a PEFT adapter goes in our model, named as PEFT names the Hugging Face modules.

Per-expert adapters (PEFT on transformers 4 models) name one module per expert:
`model.layers.{i}.mlp.experts.{j}.gate_proj.lora_A.weight`, Mixtral `block_sparse_moe.experts.{j}.w1`.
Fused adapters (PEFT's `target_parameters` on transformers 5 models, `lora.ParamWrapper`) adapt the stacked
expert parameters `mlp.experts.gate_up_proj` [E, 2I, D] and `mlp.experts.down_proj` [E, D, I]. PEFT wraps the
experts module once per targeted parameter, in the order the module defines them (gate_up_proj, then
down_proj), so the last one is outermost: with both targeted, `mlp.experts.base_layer.lora_A.weight` belongs to
gate_up_proj and `mlp.experts.lora_A.weight` to down_proj. Such a LoRA has rank r per expert: lora_A is
[r * E, in] (expert-major rows), lora_B [out, r * E] (rank-major columns: expert e's are e, e + E, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from moe_runtime.model.config import ModelConfig
from moe_runtime.model.lora.peft_config import AdapterConfig

PEFT_PREFIX = "base_model.model."
LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<factor>[AB])\.weight$")
LAYER_KEY = re.compile(r"^model\.layers\.(?P<layer>\d+)\.(?P<tail>.+)$")
ATTENTION = re.compile(r"^self_attn\.(?P<part>[qkvo])_proj$")
DENSE = re.compile(r"^mlp\.(?P<part>gate|up|down)_proj$")
SHARED = re.compile(r"^mlp\.shared_expert\.(?P<part>gate|up|down)_proj$")
QWEN_EXPERT = re.compile(r"^mlp\.experts\.(?P<expert>\d+)\.(?P<part>gate|up|down)_proj$")
MIXTRAL_EXPERT = re.compile(r"^block_sparse_moe\.experts\.(?P<expert>\d+)\.(?P<part>w1|w3|w2)$")
FUSED_EXPERTS = re.compile(r"^mlp\.experts(?P<wrappers>(?:\.base_layer)*)$")
MIXTRAL_PARTS = {"w1": "gate", "w3": "up", "w2": "down"}
FUSED_PARAMETERS = ("gate_up_proj", "down_proj")  # the order transformers 5's expert modules define them


class TargetError(ValueError):
    """A tensor that has no place in the model; the message says why."""


@dataclass(frozen=True)
class Target:
    """One adapted linear of the Hugging Face model, in our model's terms."""

    layer: int
    site: str  # attention, mlp (a dense layer's), shared (Qwen2-MoE's shared expert) or experts
    part: str  # q, k, v, o; gate, up, down; fused experts: gate_up or down
    expert: int | None  # per-expert adapters: which expert
    module: str  # PEFT's name for it, which rank_pattern / alpha_pattern match
    in_features: int
    out_features: int
    experts: int = 1  # fused: the rank dimension holds this many experts

    @property
    def fused(self) -> bool:
        return self.site == "experts" and self.expert is None


def locate(key: str, config: ModelConfig, adapter: AdapterConfig) -> tuple[Target, str]:
    """(target, "A" or "B") of an adapter tensor name, or TargetError."""
    name = key.removeprefix(PEFT_PREFIX)
    match = LORA_KEY.match(name)
    if match is None:
        raise TargetError(f"tensor {key!r} is not a LoRA weight (lora_A.weight / lora_B.weight): unused")
    module, factor = match["module"], match["factor"]
    layer_match = LAYER_KEY.match(module)
    if layer_match is None:
        raise TargetError(f"target {module!r} is not supported (only attention, MLP and expert projections)")
    layer, tail = int(layer_match["layer"]), layer_match["tail"]
    if layer >= config.num_layers:
        raise TargetError(f"target {module!r} does not exist in the model ({config.num_layers} layers)")
    return _target(config, adapter, layer, tail, module), factor


def _target(config: ModelConfig, adapter: AdapterConfig, layer: int, tail: str, module: str) -> Target:
    d, hd = config.hidden_size, config.head_dim
    sparse = config.sparse_layers[layer]
    if match := ATTENTION.match(tail):
        part = match["part"]
        width = {"q": config.num_heads * hd, "k": config.num_kv_heads * hd, "v": config.num_kv_heads * hd}
        if part == "o":
            return Target(layer, "attention", "o", None, module, config.num_heads * hd, d)
        return Target(layer, "attention", part, None, module, d, width[part])
    if match := DENSE.match(tail):
        if sparse:
            raise TargetError(f"target {module!r} does not exist in the model (layer {layer} is a MoE layer)")
        return _mlp_target(layer, "mlp", match["part"], None, module, d, config.intermediate_size)
    if match := SHARED.match(tail):
        if not (sparse and config.shared_expert_intermediate_size):
            raise TargetError(f"target {module!r} does not exist in the model (no shared expert there)")
        return _mlp_target(
            layer, "shared", match["part"], None, module, d, config.shared_expert_intermediate_size
        )
    expert_match = (MIXTRAL_EXPERT if config.family == "mixtral" else QWEN_EXPERT).match(tail)
    if expert_match:
        expert = int(expert_match["expert"])
        if not sparse or expert >= config.num_experts:
            raise TargetError(
                f"target {module!r} does not exist in the model "
                f"({'no experts in that layer' if not sparse else f'{config.num_experts} experts'})"
            )
        part = MIXTRAL_PARTS.get(expert_match["part"], expert_match["part"])
        return _mlp_target(layer, "experts", part, expert, module, d, config.moe_intermediate_size)
    if match := FUSED_EXPERTS.match(tail):
        if not sparse:
            raise TargetError(f"target {module!r} does not exist in the model (layer {layer} is dense)")
        return _fused_target(config, adapter, layer, module, len(match["wrappers"]) // len(".base_layer"))
    if QWEN_EXPERT.match(tail) or MIXTRAL_EXPERT.match(tail):
        raise TargetError(f"target {module!r} does not exist in a {config.family} model (other expert names)")
    raise TargetError(f"target {module!r} is not supported (only attention, MLP and expert projections)")


def _mlp_target(layer: int, site: str, part: str, expert, module: str, d: int, inner: int) -> Target:
    if part == "down":
        return Target(layer, site, part, expert, module, inner, d)
    return Target(layer, site, part, expert, module, d, inner)


def _fused_target(config: ModelConfig, adapter: AdapterConfig, layer: int, module: str, depth: int) -> Target:
    prefix = f"model.layers.{layer}.mlp.experts"
    targeted = [p for p in FUSED_PARAMETERS if adapter.targets_parameter(f"{prefix}.{p}")]
    if depth >= len(targeted):
        raise TargetError(
            f"tensors of {module!r} match no parameter in target_parameters {adapter.target_parameters}: unused"
        )
    parameter = targeted[len(targeted) - 1 - depth]
    d, inner, experts = config.hidden_size, config.moe_intermediate_size, config.num_experts
    name = f"{prefix}.{parameter}"
    if parameter == "gate_up_proj":
        return Target(layer, "experts", "gate_up", None, name, d, 2 * inner, experts)
    return Target(layer, "experts", "down", None, name, inner, d, experts)


def adaptable_modules(config: ModelConfig) -> list[str]:
    """Every module name PEFT could target that we can adapt (per-expert names included)."""
    names = []
    gate_up_down = ("w1", "w3", "w2") if config.family == "mixtral" else ("gate_proj", "up_proj", "down_proj")
    block = "block_sparse_moe" if config.family == "mixtral" else "mlp"
    for i in range(config.num_layers):
        p = f"model.layers.{i}"
        names += [f"{p}.self_attn.{x}_proj" for x in "qkvo"]
        if not config.sparse_layers[i]:
            names += [f"{p}.mlp.{x}_proj" for x in ("gate", "up", "down")]
            continue
        if config.shared_expert_intermediate_size:
            names += [f"{p}.mlp.shared_expert.{x}_proj" for x in ("gate", "up", "down")]
        names += [f"{p}.{block}.experts.{j}.{x}" for j in range(config.num_experts) for x in gate_up_down]
    return names


def adaptable_parameters(config: ModelConfig) -> list[str]:
    return [
        f"model.layers.{i}.mlp.experts.{p}"
        for i in range(config.num_layers)
        if config.sparse_layers[i]
        for p in FUSED_PARAMETERS
    ]
