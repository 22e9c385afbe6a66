"""LoRA adapters for the tests, made from random weights: by PEFT itself on the transformers model (fused
expert layout, through target_parameters), or written in the per-expert layout that PEFT writes for
transformers 4 models (one LoRA per expert module), with PEFT's merge_and_unload() as the reference."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from unittest import mock

import peft
import peft.utils.transformers_weight_conversion as peft_conversion
import torch
from safetensors.torch import save_file

EXPERT_PROJECTIONS = {  # gate, up, down as the per-expert modules are named
    "qwen2_moe": ("gate_proj", "up_proj", "down_proj"),
    "qwen3_moe": ("gate_proj", "up_proj", "down_proj"),
    "mixtral": ("w1", "w3", "w2"),
}
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]
FUSED_EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def randomize(model: torch.nn.Module, seed: int, std: float = 0.1) -> None:
    """Random lora_A and lora_B (B non-zero, unlike PEFT's init), so the adapter changes every target."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_" in name:
                param.copy_(std * torch.randn(param.shape, generator=generator))


def peft_fused_adapter(hf_model, out: Path, seed: int, mlp: bool, **lora_config) -> torch.nn.Module:
    """An adapter made by PEFT on the transformers 5 model: q/k/v/o (and with `mlp` the dense and
    shared-expert MLPs) as modules, the routed experts through target_parameters. Saved to `out`; returns
    the merged model.

    `mlp` only for Qwen2-MoE: for Qwen3-MoE and Mixtral, PEFT 0.21 rewrites gate_proj / up_proj / down_proj
    targets into the fused expert parameters (its transformers 4 -> 5 conversion), so it adapts no dense
    MLP there, and adds rank / alpha patterns of its own."""
    config = peft.LoraConfig(
        target_modules=ATTENTION + (MLP if mlp else []),
        target_parameters=FUSED_EXPERTS,
        **{"r": 4, "lora_alpha": 8, **lora_config},
    )
    model = peft.get_peft_model(copy.deepcopy(hf_model), config)
    randomize(model, seed)
    model.save_pretrained(out)
    return model.merge_and_unload().eval()


def sparse_layers(hf_model) -> list[int]:
    return [i for i, layer in enumerate(hf_model.model.layers) if hasattr(layer.mlp, "experts")]


def write_per_expert_adapter(
    hf_model,
    family: str,
    out: Path,
    seed: int,
    *,
    r: int = 4,
    alpha: float = 8,
    layers: list[int] | None = None,
    experts: list[int] | None = None,
    attention: bool = True,
    config: dict | None = None,
) -> Path:
    """A per-expert adapter as PEFT writes it for transformers 4 models: q/v_proj and every expert's
    gate/up/down (Mixtral w1/w3/w2 under block_sparse_moe) of `layers` (default: all sparse ones)."""
    hf = hf_model.config
    d = hf.hidden_size
    inner = hf.intermediate_size if family == "mixtral" else hf.moe_intermediate_size
    num_experts = hf.num_local_experts if family == "mixtral" else hf.num_experts
    block = "block_sparse_moe" if family == "mixtral" else "mlp"
    head_dim = getattr(hf, "head_dim", None) or d // hf.num_attention_heads
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    rank_pattern = (config or {}).get("rank_pattern", {})  # plain module-name suffixes here

    def lora(module: str, fan_in: int, fan_out: int) -> None:
        prefix = f"base_model.model.model.{module}"
        rank = next((v for k, v in rank_pattern.items() if module.endswith(k)), r)
        tensors[f"{prefix}.lora_A.weight"] = 0.1 * torch.randn(rank, fan_in, generator=generator)
        tensors[f"{prefix}.lora_B.weight"] = 0.1 * torch.randn(fan_out, rank, generator=generator)

    for i in range(hf.num_hidden_layers):
        if attention:
            lora(f"layers.{i}.self_attn.q_proj", d, hf.num_attention_heads * head_dim)
            lora(f"layers.{i}.self_attn.v_proj", d, hf.num_key_value_heads * head_dim)
    gate, up, down = EXPERT_PROJECTIONS[family]
    for i in sparse_layers(hf_model) if layers is None else layers:
        for j in range(num_experts) if experts is None else experts:
            for name, fan_in, fan_out in ((gate, d, inner), (up, d, inner), (down, inner, d)):
                lora(f"layers.{i}.{block}.experts.{j}.{name}", fan_in, fan_out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": alpha,
        "target_modules": (["q_proj", "v_proj"] if attention else []) + [gate, up, down],
        **(config or {}),
    }
    (out / "adapter_config.json").write_text(json.dumps(adapter_config))
    return out


def peft_reference(hf_model, adapter_dir: Path) -> torch.nn.Module:
    """PEFT's own reading of an adapter directory (converting a per-expert one to transformers 5's fused
    experts), merged into a copy of the model."""
    # PEFT 0.21 maps every MoE family to its conversion rules but Qwen2-MoE itself (it patches the same hole
    # for Mixtral): without this entry it leaves a per-expert Qwen2-MoE adapter's expert tensors unused.
    with mock.patch.dict(peft_conversion._MODEL_TO_CONVERSION_PATTERN, {"qwen2_moe": "qwen2_moe"}):
        model = peft.PeftModel.from_pretrained(copy.deepcopy(hf_model), str(adapter_dir))
    return model.merge_and_unload().eval()
