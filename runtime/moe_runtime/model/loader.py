"""Build the model's weights from a local safetensors checkpoint (single file or sharded with an index)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from moe_runtime.model.config import ModelConfig
from moe_runtime.model.decoder import Attention, Layer, Weights
from moe_runtime.model.moe import DenseMLP, SparseMoE
from moe_runtime.model.quant import Int8Weight, Weight, quantize_int8
from moe_runtime.model.tensor_names import (
    FUSED,
    detect_layout,
    expert_names,
    fused_expert_names,
    mlp_names,
    moe_prefix,
    tensor_shapes,
)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint's weights are missing or disagree with its config."""


class TensorFiles:
    """Looks tensors up by name across a checkpoint's safetensors files and checks their shapes; `layout` is
    the checkpoint's expert layout (per-expert or fused tensors)."""

    def __init__(self, model_dir: str | Path, config: ModelConfig):
        model_dir = Path(model_dir)
        index = model_dir / INDEX_FILE
        single = model_dir / SINGLE_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as err:
                raise CheckpointError(f"{index}: unreadable index ({err!r})") from err
            self.files = {name: model_dir / file for name, file in weight_map.items()}
        elif single.is_file():
            with safe_open(single, "pt") as f:
                self.files = dict.fromkeys(f.keys(), single)
        else:
            raise CheckpointError(
                f"{model_dir}: missing {SINGLE_FILE} (or {INDEX_FILE} for a sharded checkpoint)"
            )
        self.layout = detect_layout(self.files)
        self.shapes = tensor_shapes(config, self.layout)
        self._open: dict[Path, object] = {}

    def get(self, name: str) -> torch.Tensor:
        path = self.files.get(name)
        if path is None:
            raise CheckpointError(f"tensor {name!r} is missing from the checkpoint")
        if path not in self._open:
            if not path.is_file():
                raise CheckpointError(f"{path}: missing (the index maps tensor {name!r} to it)")
            self._open[path] = safe_open(path, "pt")
        tensor = self._open[path].get_tensor(name)
        expected = self.shapes[name]
        if tuple(tensor.shape) != expected:
            raise CheckpointError(
                f"{path.name}: tensor {name!r} has shape {tuple(tensor.shape)}, but config.json implies {expected}"
            )
        return tensor


def load_weights(
    model_dir: str | Path, config: ModelConfig, dtype: torch.dtype, device: torch.device, quantize: str | None
) -> Weights:
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', not {quantize!r}")
    files = TensorFiles(model_dir, config)

    def plain(*names: str) -> torch.Tensor:
        return torch.cat([files.get(n) for n in names]).to(device=device, dtype=dtype)

    def matrix(tensor: torch.Tensor) -> Weight:
        if quantize == "int8":
            q = quantize_int8(tensor)
            return Int8Weight(q.q.to(device), q.scale.to(device))
        return tensor.to(device=device, dtype=dtype)

    def mlp(prefix: str) -> DenseMLP:
        gate, up, down = mlp_names(prefix)
        return DenseMLP(matrix(torch.cat([files.get(gate), files.get(up)])), matrix(files.get(down)))

    def experts(layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """gate+up [E, 2I, D] and down [E, D, I], the fused layout as it is stored."""
        if files.layout == FUSED:
            return tuple(files.get(name) for name in fused_expert_names(config, layer))
        gate_up, down = [], []
        for j in range(config.num_experts):
            g, u, d = expert_names(config, layer, j)
            gate_up.append(torch.cat([files.get(g), files.get(u)]))
            down.append(files.get(d))
        return torch.stack(gate_up), torch.stack(down)

    def sparse(layer: int) -> SparseMoE:
        prefix = moe_prefix(config, layer, files.layout)
        gate_up, down = experts(layer)
        shared = config.shared_expert_intermediate_size > 0
        return SparseMoE(
            router=plain(f"{prefix}.gate.weight"),
            gate_up=matrix(gate_up),
            down=matrix(down),
            top_k=config.top_k,
            norm_topk_prob=config.norm_topk_prob,
            shared=mlp(f"{prefix}.shared_expert") if shared else None,
            shared_gate=plain(f"{prefix}.shared_expert_gate.weight") if shared else None,
        )

    def qk_norm(prefix: str) -> torch.Tensor:
        q, k = plain(f"{prefix}.q_norm.weight"), plain(f"{prefix}.k_norm.weight")
        return torch.cat([q.expand(config.num_heads, -1), k.expand(config.num_kv_heads, -1)])

    def layer(i: int) -> Layer:
        p = f"model.layers.{i}.self_attn"
        qkv = [f"{p}.{proj}" for proj in ("q_proj", "k_proj", "v_proj")]
        attention = Attention(
            qkv=matrix(torch.cat([files.get(f"{n}.weight") for n in qkv])),
            qkv_bias=plain(*(f"{n}.bias" for n in qkv)) if config.qkv_bias else None,
            o=matrix(files.get(f"{p}.o_proj.weight")),
            o_bias=plain(f"{p}.o_proj.bias") if config.o_bias else None,
            qk_norm=qk_norm(p) if config.qk_norm else None,
        )
        return Layer(
            input_norm=plain(f"model.layers.{i}.input_layernorm.weight"),
            attention=attention,
            post_attention_norm=plain(f"model.layers.{i}.post_attention_layernorm.weight"),
            mlp=sparse(i) if config.sparse_layers[i] else mlp(f"model.layers.{i}.mlp"),
        )

    embed = matrix(files.get("model.embed_tokens.weight"))
    return Weights(
        embed=embed,
        layers=[layer(i) for i in range(config.num_layers)],
        final_norm=plain("model.norm.weight"),
        lm_head=embed if config.tie_word_embeddings else matrix(files.get("lm_head.weight")),
    )
