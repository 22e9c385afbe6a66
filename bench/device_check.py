"""The first run on a GPU: parity with transformers in fp32 and bf16, decode and batched throughput, memory.

    .venv/bin/python bench/device_check.py [--device cuda] [--quick]

Nothing is downloaded: every checkpoint is written here with random weights. For each family (Qwen2-MoE,
Qwen3-MoE, Mixtral, the unit tests' shapes) our engine and transformers load the same checkpoint on the same
device in the same dtype; their prefill logits are compared (largest absolute difference, and the positions
where the argmax differs) and so are their greedy decodes (the first token where they part); in bf16, the tokens
whose experts differ from our fp32 run tell routing near-ties flipped by rounding from a bug. Then, on a larger
Qwen3-MoE: single-stream decode tokens/s of ours and of transformers' `generate`, our batched decode at 1 to 64
sequences in one forward pass, and the peak device memory of each phase. Prints one JSON object. Runs on the CPU
too (`--device cpu --quick`), which is how it is checked on machines without a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

import moe_runtime.model.moe

sys.path.append(str(Path(__file__).resolve().parents[1]))
import machine  # noqa: E402
from bench_engine_decode import QUICK  # noqa: E402

from moe_runtime.engine.engine import Engine  # noqa: E402
from moe_runtime.tools.checkpoint import CheckpointSpec, write_checkpoint  # noqa: E402
from tests.unit.runtime.conftest import SPECS  # noqa: E402
from tests.unit.runtime.helpers import hf_greedy  # noqa: E402

# shaped like a scaled-down Qwen3-30B-A3B: many small experts, top-k 4; ~3 GB in fp32
LARGE = CheckpointSpec(
    "qwen3_moe",
    vocab_size=32000,
    hidden_size=2048,
    num_layers=4,
    num_heads=16,
    num_kv_heads=4,
    moe_intermediate_size=768,
    num_experts=32,
    top_k=4,
    norm_topk_prob=True,
)
DTYPES = {"fp32": ("float32", torch.float32), "bf16": ("bfloat16", torch.bfloat16)}
PROMPT = list(range(10, 42))


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory_mb(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.startswith("cuda") else None


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def our_prefill_logits(engine: Engine) -> torch.Tensor:
    seq = engine.new_sequence()
    logits = engine.forward([(seq, PROMPT)], every_position=[True])
    engine.release(seq)
    return logits.float()


@contextlib.contextmanager
def recorded_routing():
    """The router probabilities (fp32, [tokens, experts]) of every MoE layer our engine runs inside, in order."""
    probabilities: list[torch.Tensor] = []
    route = moe_runtime.model.moe.route

    def recording(router_logits: torch.Tensor, top_k: int, normalize: bool):
        probabilities.append(torch.softmax(router_logits.float(), dim=-1).cpu())
        return route(router_logits, top_k, normalize)

    moe_runtime.model.moe.route = recording
    try:
        yield probabilities
    finally:
        moe_runtime.model.moe.route = route


def routing_flips(reference: list[torch.Tensor], other: list[torch.Tensor], top_k: int) -> dict:
    """Per MoE layer, the tokens whose set of chosen experts differs between two runs of the same prompt, and
    how close the reference's k-th and (k+1)-th experts were there: a flip at a near-tie is rounding, a flip
    at a wide gap is a bug."""
    flips, gaps = [], []
    for ref, oth in zip(reference, other, strict=True):
        ref_top, oth_top = (
            ref.topk(top_k, dim=-1).indices.sort(-1).values,
            oth.topk(top_k, -1).indices.sort(-1).values,
        )
        flipped = (ref_top != oth_top).any(-1)
        flips.append(int(flipped.sum()))
        if flipped.any():
            ordered = ref[flipped].sort(-1, descending=True).values
            gaps.append((ordered[:, top_k - 1] - ordered[:, top_k]).max().item())
    return {"per_layer": flips, "largest_gap_at_a_flip": round(max(gaps), 6) if gaps else None}


def our_greedy(engine: Engine, tokens: int) -> list[int]:
    seq = engine.new_sequence()
    logits = engine.forward([(seq, PROMPT)])
    out = []
    for _ in range(tokens):
        out.append(int(logits[0].argmax()))
        logits = engine.forward([(seq, [out[-1]])])
    engine.release(seq)
    return out


def first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)


def parity(path: str, device: str, tokens: int) -> dict:
    result, routing = {}, {}
    for name, (dtype, torch_dtype) in DTYPES.items():
        engine = Engine.load(path, device=device, dtype=dtype)
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device).eval()
        with torch.inference_mode(), recorded_routing() as routing[name]:
            ours = our_prefill_logits(engine)
        with torch.inference_mode():
            theirs = model(torch.tensor([PROMPT], device=device)).logits[0].float()
        ours_greedy, theirs_greedy = our_greedy(engine, tokens), hf_greedy(model, PROMPT, tokens)
        result[name] = {
            "max_abs_logit_diff": round((ours - theirs).abs().max().item(), 6),
            "logit_scale": round(theirs.abs().max().item(), 3),
            "argmax_differs_at_positions": (ours.argmax(-1) != theirs.argmax(-1))
            .nonzero()
            .flatten()
            .tolist(),
            "greedy_tokens": tokens,
            "greedy_first_difference": first_difference(ours_greedy, theirs_greedy),
        }
        if name != "fp32":
            result[name]["routing_flips_against_our_fp32"] = routing_flips(
                routing["fp32"], routing[name], engine.config.top_k
            )
    return result


def median_seconds(run, device: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def decode_rate(generate, device: str, tokens: int, repeats: int) -> float:
    """(tokens - 1) / (time for `tokens` new tokens - time for 1): prefill left out."""
    generate(2)  # warm-up (CUDA kernels, caches)
    many = median_seconds(lambda: generate(tokens), device, repeats)
    one = median_seconds(lambda: generate(1), device, repeats)
    return (tokens - 1) / (many - one)


def batched_rate(engine: Engine, device: str, batch: int, steps: int, repeats: int) -> float:
    """Decode tokens/s of `batch` sequences stepped together (their prompts prefilled first, untimed)."""
    seqs = [engine.new_sequence() for _ in range(batch)]
    logits = engine.forward([(seq, PROMPT) for seq in seqs])
    next_ids = [[int(i)] for i in logits.argmax(-1).tolist()]

    def step_all() -> None:
        for _ in range(steps):
            engine.forward([(seq, ids) for seq, ids in zip(seqs, next_ids, strict=True)])

    try:
        engine.forward([(seq, ids) for seq, ids in zip(seqs, next_ids, strict=True)])  # warm-up
        return batch * steps / median_seconds(step_all, device, repeats)
    finally:
        for seq in seqs:
            engine.release(seq)


def our_throughput(path: str, device: str, dtype: str, tokens: int, batches: list[int], repeats: int) -> dict:
    reset_peak(device)
    engine = Engine.load(path, device=device, dtype=dtype)
    loaded = peak_memory_mb(device)
    single = decode_rate(lambda n: our_greedy(engine, n), device, tokens, repeats)
    batched = {
        str(b): round(batched_rate(engine, device, b, steps=tokens, repeats=repeats), 1) for b in batches
    }
    return {
        "weights_mb": round(engine.weight_bytes() / 2**20, 1),
        "memory_after_load_mb": loaded,
        "ours_decode_tok_s": round(single, 1),
        "ours_batched_tok_s": batched,
        "ours_peak_memory_mb": peak_memory_mb(device),
    }


def hf_throughput(path: str, device: str, torch_dtype: torch.dtype, tokens: int, repeats: int) -> dict:
    reset_peak(device)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device).eval()
    rate = decode_rate(lambda n: hf_greedy(model, PROMPT, n), device, tokens, repeats)
    return {
        "transformers_decode_tok_s": round(rate, 1),
        "transformers_peak_memory_mb": peak_memory_mb(device),
    }


def throughput(path: str, device: str, tokens: int, batches: list[int], repeats: int) -> dict:
    result = {}
    for name, (dtype, torch_dtype) in DTYPES.items():
        entry = our_throughput(path, device, dtype, tokens, batches, repeats)
        entry.update(hf_throughput(path, device, torch_dtype, tokens, repeats))
        entry["ours_vs_transformers_decode"] = round(
            entry["ours_decode_tok_s"] / entry["transformers_decode_tok_s"], 2
        )
        result[name] = entry
        print(f"throughput {name}: {entry}", file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="the small throughput model, fewer tokens")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tokens = 8 if args.quick else 32
    batches = [1, 4] if args.quick else [1, 8, 32, 64]
    result = {"bench": "device_check", "device": args.device, "torch": torch.__version__}
    if args.device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name()
    with tempfile.TemporaryDirectory() as tmp:
        result["parity"] = {}
        for family, spec in SPECS.items():
            path = str(write_checkpoint(spec, Path(tmp) / family))
            result["parity"][family] = parity(path, args.device, tokens=16)
            print(f"parity {family}: {result['parity'][family]}", file=sys.stderr)
        path = str(write_checkpoint(QUICK if args.quick else LARGE, Path(tmp) / "large"))
        result["throughput"] = throughput(path, args.device, tokens, batches, args.repeats)
    machine.print_result(result, indent=None)


if __name__ == "__main__":
    main()
