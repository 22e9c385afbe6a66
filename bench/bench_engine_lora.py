"""Batched decode throughput with LoRA adapters: one batch spread over 1, 4 and 16 adapters against the base
model alone, and against serving the same adapters merged, one merged model per adapter, each decoding its
share of the batch (the comparison of the multi-LoRA serving papers: S-LoRA, Punica).

    python bench/bench_engine_lora.py [--quick] [--threads N] [--batch N] [--rank R] [--steps N] [--repeats N]

Every adapter is rank R (default 16) on q/k/v/o and on every routed expert (PEFT's fused layout through
target_parameters), random weights. Throughput = batch x steps / time of `steps` decode steps after the prefill,
and `unused_adapters_vs_base`: the base batch with 16 adapters loaded that no row uses,
against no adapter loaded (the base path must not pay for LoRA). All runs alternate round by round (the
machine is shared and its load drifts): tok_s are medians over the rounds, ratios (vs_base, lora_vs_merged)
medians of the ratios measured within each round. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import machine
import torch
from safetensors.torch import save_file

from moe_runtime.engine.engine import Engine
from moe_runtime.model.decoder import Weights
from moe_runtime.model.moe import DenseMLP, SparseMoE
from moe_runtime.tools.checkpoint import CheckpointSpec, write_checkpoint

FULL = CheckpointSpec(
    "qwen3_moe",
    vocab_size=8192,
    hidden_size=1024,
    num_layers=4,
    num_heads=16,
    num_kv_heads=4,
    moe_intermediate_size=1024,
    num_experts=8,
    top_k=2,
    norm_topk_prob=True,
)  # the decode bench's model: ~450 MB in fp32
QUICK = dataclasses.replace(
    FULL,
    vocab_size=4096,
    hidden_size=512,
    num_layers=2,
    num_heads=8,
    num_kv_heads=2,
    moe_intermediate_size=512,
)
SPREADS = (1, 4, 16)


def write_adapter(engine: Engine, out: Path, rank: int, seed: int) -> Path:
    """A fused-layout PEFT adapter of `rank` on attention and all routed experts, random weights."""
    c = engine.config
    d, inner, experts = c.hidden_size, c.moe_intermediate_size, c.num_experts
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    generator = torch.Generator().manual_seed(seed)
    tensors = {}

    def lora(module: str, fan_in: int, fan_out: int, width: int) -> None:
        prefix = f"base_model.model.model.layers.{module}"
        tensors[f"{prefix}.lora_A.weight"] = 0.02 * torch.randn(width, fan_in, generator=generator)
        tensors[f"{prefix}.lora_B.weight"] = 0.02 * torch.randn(fan_out, width, generator=generator)

    for i in range(c.num_layers):
        for name, fan_in, fan_out in (("q", d, q), ("k", d, kv), ("v", d, kv), ("o", q, d)):
            lora(f"{i}.self_attn.{name}_proj", fan_in, fan_out, rank)
        if c.sparse_layers[i]:
            lora(f"{i}.mlp.experts.base_layer", d, 2 * inner, rank * experts)  # gate_up_proj
            lora(f"{i}.mlp.experts", inner, d, rank * experts)  # down_proj
    out.mkdir(parents=True)
    save_file(tensors, out / "adapter_model.safetensors")
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
    }
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def merged(weights: Weights, adapter) -> Weights:
    """The base weights with the adapter's updates added in (W + B @ A): what a merged deployment serves."""

    def plus(w, pair):
        return w if pair is None else w + (pair.shrink @ pair.expand).t()

    def plus_experts(w, pairs):
        return torch.stack([plus(w[e], pair) for e, pair in enumerate(pairs)])

    layers = []
    for layer, lora in zip(weights.layers, adapter.layers, strict=True):
        if lora is None:
            layers.append(layer)
            continue
        attention = dataclasses.replace(
            layer.attention, qkv=plus(layer.attention.qkv, lora.qkv), o=plus(layer.attention.o, lora.o)
        )
        mlp = layer.mlp
        if isinstance(mlp, SparseMoE) and lora.experts is not None:
            mlp = dataclasses.replace(
                mlp,
                gate_up=plus_experts(mlp.gate_up, lora.experts.gate_up),
                down=plus_experts(mlp.down, lora.experts.down),
            )
        elif isinstance(mlp, DenseMLP) and lora.mlp is not None:
            mlp = DenseMLP(plus(mlp.gate_up, lora.mlp.gate_up), plus(mlp.down, lora.mlp.down))
        layers.append(dataclasses.replace(layer, attention=attention, mlp=mlp))
    return dataclasses.replace(weights, layers=layers)


def decode_seconds(engine: Engine, adapters: list[str | None], steps: int) -> float:
    """Seconds of `steps` batched decode steps, one row per entry of `adapters`, after the prefill."""
    seqs = [engine.new_sequence() for _ in adapters]
    prompts = [[(11 * i + j) % 4000 + 10 for j in range(16)] for i in range(len(adapters))]
    logits = engine.forward(list(zip(seqs, prompts, adapters, strict=True)))
    start = time.perf_counter()
    for _ in range(steps):
        tokens = logits.argmax(dim=-1).tolist()
        logits = engine.forward([(s, [t], a) for s, t, a in zip(seqs, tokens, adapters, strict=True)])
    seconds = time.perf_counter() - start
    for seq in seqs:
        engine.release(seq)
    return seconds


def merged_seconds(engine: Engine, count: int, batch: int, steps: int) -> float:
    """One merged model per adapter, each decoding its share of the batch in turn (merging is not timed)."""
    base, total = engine.weights, 0.0
    for i in range(count):
        engine.weights = merged(base, engine.adapters[f"a{i}"])
        total += decode_seconds(engine, [None] * (batch // count), steps)
    engine.weights = base
    return total


def spread(batch: int, adapters: int) -> list[str]:
    return [f"a{i * adapters // batch}" for i in range(batch)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller model and fewer steps")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)"
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = QUICK if args.quick else FULL
    steps = args.steps or (8 if args.quick else 16)
    rows = args.batch * steps
    result = {
        "bench": "engine_lora",
        "threads": args.threads,
        "batch": args.batch,
        "rank": args.rank,
        "steps": steps,
        "repeats": args.repeats,
    }
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        engine = Engine.load(str(write_checkpoint(spec, f"{tmp}/model")), device="cpu", dtype="float32")
        adapters = [
            write_adapter(engine, Path(tmp) / f"a{i}", args.rank, seed=i) for i in range(max(SPREADS))
        ]

        def unloaded() -> float:  # the base model with no adapter loaded at all
            loaded = dict(engine.adapters)
            engine.adapters.clear()
            try:
                return decode_seconds(engine, [None] * args.batch, steps)
            finally:
                engine.adapters.update(loaded)

        for i, path in enumerate(adapters):
            engine.load_adapter(f"a{i}", str(path))
        check_merged_matches(engine)
        runs = {
            "base": unloaded,
            "unused_adapters": lambda: decode_seconds(engine, [None] * args.batch, steps),
            **{
                f"lora_{n}": (lambda n=n: decode_seconds(engine, spread(args.batch, n), steps))
                for n in SPREADS
            },
            **{f"merged_{n}": (lambda n=n: merged_seconds(engine, n, args.batch, steps)) for n in SPREADS},
        }
        # Measured in alternating rounds (the machine is shared and its load drifts), after one warm-up round.
        times: dict[str, list[float]] = {name: [] for name in runs}
        for round_ in range(args.repeats + 1):
            for name, run in runs.items():
                seconds = run()
                if round_:
                    times[name].append(seconds)
            print(
                f"round {round_}: " + ", ".join(f"{k} {rows / v[-1]:.0f}" for k, v in times.items() if v),
                file=sys.stderr,
            )
        result["adapter_mb"] = round(engine.adapters["a0"].nbytes / 1e6, 1)
    tok_s = {name: round(rows / statistics.median(t), 1) for name, t in times.items()}

    def ratio(name: str, baseline: str = "base") -> float:
        """Median over rounds of the speed ratio measured within one round: steadier than a ratio of medians."""
        return round(statistics.median(b / t for b, t in zip(times[baseline], times[name], strict=True)), 3)

    result.update(
        base_tok_s=tok_s["base"],
        unused_adapters_vs_base=ratio("unused_adapters"),
        lora={str(n): {"tok_s": tok_s[f"lora_{n}"], "vs_base": ratio(f"lora_{n}")} for n in SPREADS},
        merged={str(n): {"tok_s": tok_s[f"merged_{n}"], "vs_base": ratio(f"merged_{n}")} for n in SPREADS},
        lora_vs_merged={str(n): ratio(f"lora_{n}", f"merged_{n}") for n in SPREADS},
        goal={"lora_16_vs_base_at_least": 0.7, "met": ratio("lora_16") >= 0.7},
    )
    machine.print_result(result, indent=None)


def check_merged_matches(engine: Engine) -> None:
    """The merged model must compute what the adapter computes, or the comparison means nothing."""
    base, prompt = engine.weights, list(range(10, 30))
    with_adapter = engine.forward([(engine.new_sequence(), prompt, "a0")])
    engine.weights = merged(base, engine.adapters["a0"])
    merged_logits = engine.forward([(engine.new_sequence(), prompt)])
    engine.weights = base
    torch.testing.assert_close(with_adapter, merged_logits, atol=1e-3, rtol=1e-3)


if __name__ == "__main__":
    main()
