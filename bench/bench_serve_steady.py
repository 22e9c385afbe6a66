"""1000 requests of one fixed size at a steady concurrency: latency mean, p50, p99 and standard deviation,
and how many requests were lost (no 200, or fewer tokens than asked).

    .venv/bin/python bench/bench_serve_steady.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.append(str(Path(__file__).resolve().parents[1]))
import machine  # noqa: E402

from tests.integration.runtime_server.harness import RuntimeServer, timed_request, write_checkpoint  # noqa: E402

PROMPT_TOKENS, OUTPUT_TOKENS = 32, 16


async def steady_load(url: str, total: int, concurrency: int, body: dict) -> tuple[list, float]:
    """`concurrency` clients send back to back until `total` requests have been answered."""
    remaining = iter(range(total))
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency)) as http:

        async def client() -> list:
            return [await timed_request(http, url, body) for _ in remaining]

        start = time.perf_counter()
        results = [t for ts in await asyncio.gather(*(client() for _ in range(concurrency))) for t in ts]
        return results, time.perf_counter() - start


def find_fixed_size_prompt(url: str, vocab: int) -> dict:
    """A prompt whose greedy answer runs the full OUTPUT_TOKENS (a random model may stop early on eos)."""
    for offset in range(1, 50):
        ids = [(offset + 7 * k) % (vocab - 1) + 1 for k in range(PROMPT_TOKENS)]
        body = {"prompt": ids, "max_tokens": OUTPUT_TOKENS, "temperature": 0}
        if (
            httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()["usage"]["completion_tokens"]
            == OUTPUT_TOKENS
        ):
            return body
    raise RuntimeError("no prompt generates the full output length")


def engine_only_spread(checkpoint: Path, body: dict, concurrency: int, repeats: int = 40) -> float:
    """The machine's own noise: std/mean of the same batch of requests run by the engine in this process,
    with no server, HTTP or scheduler (prefill then decode steps, as in the load)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from moe_runtime.engine.engine import Engine

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    engine = Engine.load(str(checkpoint), dtype="float32")
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        sequences = [engine.new_sequence() for _ in range(concurrency)]
        engine.forward([(s, body["prompt"]) for s in sequences])
        for _ in range(OUTPUT_TOKENS - 1):
            engine.forward([(s, [5]) for s in sequences])
        for s in sequences:
            engine.release(s)
        seconds.append(time.perf_counter() - start)
    return statistics.pstdev(seconds) / statistics.mean(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200 requests instead of 1000")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    total = 200 if args.quick else 1000

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_checkpoint(Path(tmp) / "tiny-qwen2-moe")
        vocab = json.loads((checkpoint / "config.json").read_text())["vocab_size"]
        with RuntimeServer(
            checkpoint, "--dtype", "float32", "--max-batch-seqs", str(args.concurrency)
        ) as server:
            body = find_fixed_size_prompt(server.url, vocab)
            asyncio.run(steady_load(server.url, 4 * args.concurrency, args.concurrency, body))  # warm-up
            results, seconds = asyncio.run(steady_load(server.url, total, args.concurrency, body))
        noise_floor = engine_only_spread(checkpoint, body, args.concurrency)

    latencies = [t.latency_s for t in results if t.status == 200]
    lost = sum(t.status != 200 or t.completion_tokens != OUTPUT_TOKENS for t in results)
    mean, std = statistics.mean(latencies), statistics.pstdev(latencies)
    machine.print_result({
        "benchmark": "serve_steady",
        "requests": total,
        "answered": len(results),
        "lost": lost + total - len(results),
        "concurrency": args.concurrency,
        "prompt_tokens": PROMPT_TOKENS,
        "output_tokens": OUTPUT_TOKENS,
        "seconds": round(seconds, 2),
        "latency_mean_s": round(mean, 4),
        "latency_p50_s": round(statistics.median(latencies), 4),
        "latency_p99_s": round(statistics.quantiles(latencies, n=100, method="inclusive")[98], 4),
        "latency_std_s": round(std, 4),
        "std_over_mean": round(std / mean, 4),
        "goal_std_over_mean": 0.05,
        "engine_only_std_over_mean": round(noise_floor, 4),
        "load_average_1m": os.getloadavg()[0],
    })  # fmt: skip


if __name__ == "__main__":
    main()
