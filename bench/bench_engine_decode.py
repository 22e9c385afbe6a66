"""Single-stream decode speed of our engine (fp32, bf16, int8) against transformers' generate on the same
random checkpoint, and as a fraction of the memory-bandwidth roofline.

    python bench/bench_engine_decode.py [--quick] [--threads N] [--tokens N] [--repeats N]

Decode rate = (N - 1) / (time for N new tokens - time for 1), so prefill is left out on both sides.
Roofline: a decode step must read every weight the token touches (attention, router, the top-k experts,
dense/shared MLPs, lm_head, the embedding row) once; its tokens/s ceiling is measured read bandwidth / those
bytes. Read bandwidth: bytes per second an fp32 matrix-vector product streams from 512 MiB of weights, measured
next to each run. `kernel_gb_s` gives the same figure for each weight format's one-row kernel: a format whose
kernel streams slower than that bandwidth cannot reach the roofline whatever the engine does. Prints one JSON
object.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import machine
import torch
import transformers

from moe_runtime.engine.engine import Engine
from moe_runtime.model.moe import SparseMoE
from moe_runtime.model.quant import linear, nbytes, quantize_int8
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
)  # ~450 MB in fp32, 4 x 8 experts of 3 x 1024 x 1024
QUICK = CheckpointSpec(
    "qwen3_moe",
    vocab_size=4096,
    hidden_size=512,
    num_layers=2,
    num_heads=8,
    num_kv_heads=2,
    moe_intermediate_size=512,
    num_experts=8,
    top_k=2,
    norm_topk_prob=True,
)


def median_seconds(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def decode_rate(generate, tokens: int, repeats: int) -> float:
    generate(2)  # warm-up
    return (tokens - 1) / (
        median_seconds(lambda: generate(tokens), repeats) - median_seconds(lambda: generate(1), repeats)
    )


def ours(engine: Engine, prompt: list[int]):
    def generate(n: int) -> None:
        seq = engine.new_sequence()
        logits = engine.forward([(seq, prompt)])
        for _ in range(n - 1):
            logits = engine.forward([(seq, [int(logits[0].argmax())])])
        engine.release(seq)

    return generate


def theirs(model, prompt: list[int]):
    ids = torch.tensor([prompt])

    def generate(n: int) -> None:
        with torch.inference_mode():
            model.generate(
                ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
            )

    return generate


def active_weight_bytes(engine: Engine) -> int:
    """Bytes of weights one decoded token reads: everything but the experts it was not routed to."""
    w = engine.weights
    total = nbytes(w.lm_head) + nbytes(w.final_norm) + nbytes(w.embed) // engine.config.vocab_size
    for layer in engine.weights.layers:
        a = layer.attention
        total += sum(nbytes(w) for w in (a.qkv, a.o, layer.input_norm, layer.post_attention_norm))
        mlp = layer.mlp
        if isinstance(mlp, SparseMoE):
            experts = nbytes(mlp.gate_up) + nbytes(mlp.down)
            total += nbytes(mlp.router) + experts * mlp.top_k // mlp.router.shape[0]
            if mlp.shared is not None:
                total += nbytes(mlp.shared.gate_up) + nbytes(mlp.shared.down) + nbytes(mlp.shared_gate)
        else:
            total += nbytes(mlp.gate_up) + nbytes(mlp.down)
    return total


def streamed_bytes_per_second(weights: list, multiply, repeats: int) -> float:
    """Bytes of `weights` one matrix-vector pass per matrix reads per second (they are far larger than L3)."""
    x = torch.ones(1, weights[0].shape[-1])
    total = sum(nbytes(w) for w in weights)
    multiply(x, weights[0])
    return total / median_seconds(lambda: [multiply(x, w) for w in weights], repeats)


def read_bandwidth(repeats: int) -> float:
    """The roofline's bandwidth: 512 MiB of fp32 weights streamed through a matrix-vector product, the
    access pattern of decoding (bytes read only; the fastest reader we found here)."""
    weights = [torch.ones(4096, 4096) for _ in range(8)]
    return streamed_bytes_per_second(weights, lambda x, w: torch.nn.functional.linear(x, w), repeats)


def kernel_bandwidths(repeats: int) -> dict[str, float]:
    """GB/s each weight format's one-row kernel streams (256 MiB of weights): the ceiling of its decode."""
    fp32 = [torch.ones(4096, 4096) for _ in range(4)]
    int8 = [quantize_int8(w) for w in fp32]
    cases = {
        "fp32": (fp32, lambda x, w: linear(x, w)),
        "bf16": ([w.bfloat16() for w in fp32], lambda x, w: linear(x.bfloat16(), w)),
        "int8": (int8, lambda x, w: linear(x, w)),
    }
    return {name: round(streamed_bytes_per_second(w, f, repeats) / 1e9, 2) for name, (w, f) in cases.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller model and fewer tokens")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)"
    )
    parser.add_argument("--tokens", type=int)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = QUICK if args.quick else FULL
    tokens = args.tokens or (16 if args.quick else 32)
    prompt = list(range(10, 26))
    result = {
        "bench": "engine_decode",
        "threads": args.threads,
        "new_tokens": tokens,
        "repeats": args.repeats,
        "kernel_gb_s": kernel_bandwidths(3),
        "ours": {},
        "transformers": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = write_checkpoint(spec, f"{tmp}/model")
        for name, kwargs in (("fp32", {}), ("bf16", {"dtype": "bfloat16"}), ("int8", {"quantize": "int8"})):
            engine = Engine.load(str(path), device="cpu", **kwargs)
            bandwidth = read_bandwidth(3)  # next to each run: the machine is shared and its load drifts
            rate = decode_rate(ours(engine, prompt), tokens, args.repeats)
            active = active_weight_bytes(engine)
            roofline = bandwidth / active
            result["ours"][name] = {
                "tok_s": round(rate, 2),
                "read_bandwidth_gb_s": round(bandwidth / 1e9, 2),
                "weight_mb": round(engine.weight_bytes() / 1e6, 1),
                "active_mb_per_token": round(active / 1e6, 1),
                "roofline_tok_s": round(roofline, 2),
                "fraction_of_roofline": round(rate / roofline, 3),
            }
            print(f"ours {name}: {result['ours'][name]}", file=sys.stderr)
            del engine
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
            result["transformers"][name] = {
                "tok_s": round(decode_rate(theirs(model, prompt), tokens, args.repeats), 2)
            }
            print(f"transformers {name}: {result['transformers'][name]}", file=sys.stderr)
            del model
    best_hf = max(v["tok_s"] for v in result["transformers"].values())
    result["speedup_vs_best_transformers"] = {
        k: round(v["tok_s"] / best_hf, 2) for k, v in result["ours"].items()
    }
    machine.print_result(result, indent=None)


if __name__ == "__main__":
    main()
