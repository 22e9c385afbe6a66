"""Decode over caches of different lengths: one step of 16 sequences whose caches are spread up to 8K tokens
(512, 1024, ... 8192) against the same batch at one uniform length: the mean of the spread (the same tokens
held, the fair comparison for an engine whose cost follows what each sequence holds) and the longest (what an
engine that pads every cache to the longest pays). Steps of the three batches alternate; medians of each.

The performance issue's Qwen3-MoE shape with an 8K+ context (`--max-position-embeddings`), one intra-op thread.

    .venv/bin/python bench/bench_engine_spread.py [--quick]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))
import machine  # noqa: E402

from moe_runtime.engine.engine import Engine  # noqa: E402
from moe_runtime.tools.checkpoint import CheckpointSpec, write_checkpoint  # noqa: E402

SPEC = CheckpointSpec("qwen3_moe", vocab_size=512, hidden_size=512, num_layers=4, num_heads=4, num_kv_heads=2,
                      head_dim=128, moe_intermediate_size=64, num_experts=16, top_k=4,
                      max_position_embeddings=8192 + 256)  # fmt: skip


def filled(engine: Engine, lengths: list[int], rng: random.Random) -> list:
    sequences = []
    for length in lengths:
        seq = engine.new_sequence()
        for start in range(0, length, 2048):  # chunked, as the server prefills
            engine.forward([(seq, [rng.randrange(1, 512) for _ in range(min(2048, length - start))])])
        sequences.append(seq)
    return sequences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="caches up to 4K, fewer steps")
    parser.add_argument("--steps", type=int)
    args = parser.parse_args()
    torch.set_num_threads(1)
    longest = 4096 if args.quick else 8192
    steps = args.steps or (10 if args.quick else 30)
    spread = [longest * (i + 1) // 16 for i in range(16)]
    mean = round(statistics.mean(spread))
    batches = {"spread": spread, "uniform_mean": [mean] * 16, "uniform_longest": [longest] * 16}
    rng = random.Random(0)
    engine_block = 16  # a block of rounding per sequence
    with tempfile.TemporaryDirectory() as tmp:
        held = sum(sum(lengths) + 16 * (steps + 2 + engine_block) for lengths in batches.values())
        engine = Engine.load(
            str(write_checkpoint(SPEC, Path(tmp) / "qwen3-moe")), dtype="float32", max_kv_tokens=held
        )
        sequences = {name: filled(engine, lengths, rng) for name, lengths in batches.items()}
        times: dict[str, list[float]] = {name: [] for name in batches}
        with torch.inference_mode():
            for step in range(steps + 2):
                for name, seqs in sequences.items():
                    items = [(seq, [rng.randrange(1, 512)]) for seq in seqs]
                    began = time.perf_counter()
                    engine.forward(items)
                    if step >= 2:  # the first steps warm up
                        times[name].append(time.perf_counter() - began)
    median = {name: statistics.median(t) for name, t in times.items()}
    machine.print_result({
        "benchmark": "engine_spread",
        "batch": 16, "spread_lengths": spread, "uniform_mean_length": mean, "longest": longest, "steps": steps,
        "step_ms_median": {name: round(m * 1e3, 2) for name, m in median.items()},
        "spread_over_uniform_mean": round(median["spread"] / median["uniform_mean"], 3),
        "spread_over_uniform_longest": round(median["spread"] / median["uniform_longest"], 3),
        "goal_spread_over_uniform_at_most": 1.2,
    })  # fmt: skip


if __name__ == "__main__":
    main()
