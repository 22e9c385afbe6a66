"""Long inputs: KV-cache memory and prefill time at 16K and 32K tokens, sliding window 4096 + global (sink)
tokens against full attention, on a small model where attention dominates.

    python bench/bench_engine_long.py [--quick] [--threads N] [--chunk N]

The prompt is fed in chunks of --chunk tokens (as a serving loop does); memory is the bytes the sequence's
cache holds afterwards. Goal: windowed memory at most 15% of full at 32K. One run per length (each takes
seconds to tens of seconds). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import machine
import torch

from moe_runtime.engine.engine import Engine
from moe_runtime.tools.checkpoint import CheckpointSpec, write_checkpoint

SPEC = CheckpointSpec(
    "mixtral",
    vocab_size=512,
    hidden_size=256,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=256,
    num_experts=4,
    top_k=2,
    max_position_embeddings=65536,
)


def prefill(engine: Engine, tokens: list[int], chunk: int) -> tuple[float, int, torch.Tensor]:
    seq = engine.new_sequence()
    start = time.perf_counter()
    for i in range(0, len(tokens), chunk):
        logits = engine.forward([(seq, tokens[i : i + chunk])])
    elapsed = time.perf_counter() - start
    nbytes = engine.sequence_bytes(seq)
    engine.release(seq)
    return elapsed, nbytes, logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8K and 16K tokens instead of 16K and 32K")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)"
    )
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--window", type=int, default=4096)
    parser.add_argument("--global-tokens", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lengths = (8192, 16384) if args.quick else (16384, 32768)
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        path = str(write_checkpoint(SPEC, f"{tmp}/model"))
        full = Engine.load(path)
        windowed = Engine.load(path, window=args.window, global_tokens=args.global_tokens)
        prefill(full, list(range(3, 259)), args.chunk)  # warm-up
        for length in lengths:
            tokens = torch.randint(
                3, 500, (length,), generator=torch.Generator().manual_seed(length)
            ).tolist()
            full_s, full_bytes, _ = prefill(full, tokens, args.chunk)
            window_s, window_bytes, _ = prefill(windowed, tokens, args.chunk)
            cases.append(
                {
                    "tokens": length,
                    "full": {"kv_mb": round(full_bytes / 2**20, 2), "prefill_s": round(full_s, 2)},
                    "windowed": {"kv_mb": round(window_bytes / 2**20, 2), "prefill_s": round(window_s, 2)},
                    "memory_ratio": round(window_bytes / full_bytes, 4),
                    "prefill_speedup": round(full_s / window_s, 2),
                }
            )
    machine.print_result(
        {
            "bench": "engine_long",
            "threads": args.threads,
            "window": args.window,
            "global_tokens": args.global_tokens,
            "chunk": args.chunk,
            "cases": cases,
            "goal_memory_ratio_at_most": 0.15,
        }
    )


if __name__ == "__main__":
    main()
