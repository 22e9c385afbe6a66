"""Write a random-weight checkpoint in the Hugging Face format of a real model: config.json, safetensors
(single or sharded with an index) with per-expert tensor names (or transformers 5's fused expert tensors), and a byte-level BPE tokenizer trained here
on built-in text, with tokenizer_config.json holding the chat template."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from moe_runtime.model.config import parse_config
from moe_runtime.model.tensor_names import (
    FUSED,
    LAYOUTS,
    PER_EXPERT,
    expert_names,
    fused_expert_names,
    moe_prefix,
    tensor_shapes,
)
from moe_runtime.model.tokenizer import CHATML_TEMPLATE

MIXTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MIXTRAL_SPECIALS = ["<unk>", "<s>", "</s>"]
CORPUS = [
    "Beautiful is better than ugly. Explicit is better than implicit. Simple is better than complex. "
    "Readability counts. Errors should never pass silently. In the face of ambiguity, refuse the temptation "
    "to guess. There should be one obvious way to do it. Now is better than never.",
    "A mixture of experts routes every token to a few of its experts. The router scores each expert, keeps "
    "the best ones and mixes their outputs by weight. Experts that nobody chose cost nothing at all.",
    "The operator watches the queue depth, scales the pods up when requests wait and down when they do not, "
    "and puts the last good revision back when a new one breaks its latency objective.",
    "Once upon a time a small model lived on a busy machine with two cores. It counted tokens, it cached keys "
    "and values, and it answered questions about the weather, the sea, numbers and names.",
    "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ( ) [ ] { } < > ! ? , . ; : ' \"",
]


@dataclass
class CheckpointSpec:
    family: str  # qwen2_moe, qwen3_moe or mixtral
    vocab_size: int = 512
    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int | None = None  # None: hidden_size // num_heads
    intermediate_size: int = 128  # dense layers (Mixtral: every expert)
    moe_intermediate_size: int = 64  # Qwen experts
    shared_expert_intermediate_size: int = 128  # Qwen2-MoE only
    num_experts: int = 8
    top_k: int = 2
    norm_topk_prob: bool = False  # Qwen only; Mixtral always renormalises
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()
    sliding_window: int | None = None
    attention_bias: bool | None = None  # None: the family's usual (Qwen2-MoE: q/k/v biases; others none)
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 4096
    rope_theta: float | None = None  # None: the family's usual
    init_std: float = 0.02
    seed: int = 0
    dtype: str = "float32"
    shard_bytes: int | None = None  # split the weights into files of about this size, with an index
    layout: str = PER_EXPERT  # expert tensors: per_expert, or fused (the same weights as per_expert)


def hf_config(spec: CheckpointSpec) -> dict:
    """config.json as the family's real checkpoints write it."""
    common = {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": spec.max_position_embeddings,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "num_experts_per_tok": spec.top_k,
        "torch_dtype": spec.dtype,
        "initializer_range": spec.init_std,
    }
    if spec.head_dim is not None:
        common["head_dim"] = spec.head_dim
    if spec.family == "mixtral":
        return {
            "architectures": ["MixtralForCausalLM"],
            "model_type": "mixtral",
            **common,
            "intermediate_size": spec.intermediate_size,
            "num_local_experts": spec.num_experts,
            "rms_norm_eps": 1e-5,
            "rope_theta": spec.rope_theta or 1e6,
            "sliding_window": spec.sliding_window,
            "router_jitter_noise": 0.0,
            "bos_token_id": 1,
            "eos_token_id": 2,
        }
    qwen = {
        **common,
        "intermediate_size": spec.intermediate_size,
        "moe_intermediate_size": spec.moe_intermediate_size,
        "num_experts": spec.num_experts,
        "norm_topk_prob": spec.norm_topk_prob,
        "decoder_sparse_step": spec.decoder_sparse_step,
        "mlp_only_layers": list(spec.mlp_only_layers),
        "rms_norm_eps": 1e-6,
        "rope_theta": spec.rope_theta or 10_000.0,
        "use_sliding_window": spec.sliding_window is not None,
        "sliding_window": spec.sliding_window,
        "max_window_layers": spec.num_layers,
        "bos_token_id": 0,
        "eos_token_id": 0,
    }
    if spec.family == "qwen2_moe":
        bias = True if spec.attention_bias is None else spec.attention_bias
        return {
            "architectures": ["Qwen2MoeForCausalLM"],
            "model_type": "qwen2_moe",
            **qwen,
            "shared_expert_intermediate_size": spec.shared_expert_intermediate_size,
            "qkv_bias": bias,
        }
    if spec.family == "qwen3_moe":
        return {
            "architectures": ["Qwen3MoeForCausalLM"],
            "model_type": "qwen3_moe",
            **qwen,
            "attention_bias": bool(spec.attention_bias),
        }
    raise ValueError(f"unknown family {spec.family!r}; choose qwen2_moe, qwen3_moe or mixtral")


def random_tensors(spec: CheckpointSpec, config: dict) -> dict[str, torch.Tensor]:
    if spec.layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {spec.layout!r}")
    generator = torch.Generator().manual_seed(spec.seed)
    dtype = getattr(torch, spec.dtype)
    tensors = {}
    model_config = parse_config(config)
    for name, shape in tensor_shapes(model_config).items():
        noise = torch.randn(shape, generator=generator)
        if name.endswith("norm.weight"):  # near one, but not exactly, so a norm's weight is exercised
            value = 1 + 0.1 * noise
        elif name.endswith(".bias"):
            value = 0.1 * noise
        else:
            value = spec.init_std * noise
        tensors[name] = value.to(dtype).contiguous()
    return fuse_experts(tensors, model_config) if spec.layout == FUSED else tensors


def fuse_experts(tensors: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Per-expert tensors -> transformers 5's fused ones (gate_up [E, 2I, D], down [E, D, I]), as its
    checkpoint conversion stacks them; everything else keeps its name (Mixtral's block becomes `mlp`)."""
    tensors = dict(tensors)
    for layer in (i for i, sparse in enumerate(config.sparse_layers) if sparse):
        names = [expert_names(config, layer, j) for j in range(config.num_experts)]
        gate_up = torch.stack([torch.cat([tensors.pop(g), tensors.pop(u)]) for g, u, _ in names])
        down = torch.stack([tensors.pop(d) for _, _, d in names])
        fused_gate_up, fused_down = fused_expert_names(config, layer)
        tensors.update({fused_gate_up: gate_up, fused_down: down})
        old, new = moe_prefix(config, layer), moe_prefix(config, layer, FUSED)
        for name in [n for n in tensors if n.startswith(old + ".")]:
            tensors[new + name[len(old) :]] = tensors.pop(name)
    return tensors


def train_tokenizer(family: str, vocab_size: int) -> Tokenizer:
    specials = MIXTRAL_SPECIALS if family == "mixtral" else QWEN_SPECIALS
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    if family == "mixtral":  # Mixtral's tokenizer starts every text with <s>
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
        )
    return tokenizer


def tokenizer_config(family: str, max_length: int) -> dict:
    if family == "mixtral":
        tokens = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
        template = MIXTRAL_TEMPLATE
    else:
        tokens = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
        template = CHATML_TEMPLATE
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_length,
        "chat_template": template,
        **tokens,
    }


def write_checkpoint(spec: CheckpointSpec, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(spec.family, spec.vocab_size)
    if tokenizer.get_vocab_size() > spec.vocab_size:
        raise ValueError(
            f"vocab_size {spec.vocab_size} is smaller than the tokenizer's {tokenizer.get_vocab_size()}"
        )
    config = hf_config(spec)
    tokenizer.save(str(out / "tokenizer.json"))
    _write_json(out / "tokenizer_config.json", tokenizer_config(spec.family, spec.max_position_embeddings))
    _write_json(out / "config.json", config)
    eos = (
        [config["eos_token_id"]]
        if spec.family == "mixtral"
        else [tokenizer.token_to_id(t) for t in QWEN_SPECIALS[::2]]
    )
    _write_json(out / "generation_config.json", {"bos_token_id": config["bos_token_id"], "eos_token_id": eos})
    _write_weights(random_tensors(spec, config), out, spec.shard_bytes)
    return out


def _write_weights(tensors: dict[str, torch.Tensor], out: Path, shard_bytes: int | None) -> None:
    metadata = {"format": "pt"}
    if not shard_bytes:
        save_file(tensors, out / "model.safetensors", metadata=metadata)
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, out / file, metadata=metadata)
        weight_map.update(dict.fromkeys(shard, file))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    _write_json(
        out / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map}
    )


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")
