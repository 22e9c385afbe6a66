"""Output tokens/s of 16 concurrent clients: dynamic batching against the same server limited to one
sequence at a time. Both servers run from the same checkpoint in the same run, measured alternately.

    .venv/bin/python bench/bench_serve_batching.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
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

WORDS = [
    "readability",
    "counts",
    "experts",
    "route",
    "tokens",
    "to",
    "the",
    "best",
    "of",
    "them",
    "and",
    "cost",
    "nothing",
    "when",
    "idle",
]


def prompt(i: int) -> str:
    return " ".join(WORDS[i % len(WORDS) :] + WORDS[: i % len(WORDS)])


async def closed_loop(url: str, clients: int, requests_per_client: int, max_tokens: int) -> dict:
    """Each client sends its requests back to back; returns generated tokens per second of wall time."""
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as http:

        async def client(c: int) -> list:
            bodies = [{"prompt": prompt(c * requests_per_client + r), "max_tokens": max_tokens, "temperature": 0}
                      for r in range(requests_per_client)]  # fmt: skip
            return [await timed_request(http, url, body) for body in bodies]

        start = time.perf_counter()
        results = [t for ts in await asyncio.gather(*(client(c) for c in range(clients))) for t in ts]
        seconds = time.perf_counter() - start
    tokens = sum(t.completion_tokens for t in results)
    return {"tokens_per_s": tokens / seconds, "tokens": tokens, "seconds": seconds,
            "failed": sum(t.status != 200 for t in results)}  # fmt: skip


def engine_step_speedup(checkpoint: Path, batch: int) -> float:
    """The ceiling batching can reach: tokens per second of one decode step over `batch` sequences against
    a step over one, measured in this process on the same checkpoint with no server in between (steps of
    both sizes alternate, so both see the same machine)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from moe_runtime.engine.engine import Engine

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    engine = Engine.load(str(checkpoint), dtype="float32")
    prompt_ids = engine.tokenizer.encode(prompt(0))
    one, many = [engine.new_sequence()], [engine.new_sequence() for _ in range(batch)]
    times: dict[int, list[float]] = {1: [], batch: []}
    for sequences in (one, many):
        engine.forward([(s, prompt_ids) for s in sequences])
    for _ in range(40):
        for sequences in (one, many):
            start = time.perf_counter()
            engine.forward([(s, [5]) for s in sequences])
            times[len(sequences)].append(time.perf_counter() - start)
    return batch * statistics.median(times[1]) / statistics.median(times[batch])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer requests and repeats")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    requests_per_client, repeats = (2, 1) if args.quick else (4, 3)

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_checkpoint(Path(tmp) / "tiny-qwen2-moe")
        engine_ceiling = engine_step_speedup(checkpoint, args.clients)
        common = ("--dtype", "float32", "--max-batch-tokens", "512", "--max-queue", "256")
        with (
            RuntimeServer(checkpoint, *common, "--max-batch-seqs", str(args.clients)) as batched,
            RuntimeServer(checkpoint, *common, "--max-batch-seqs", "1") as single,
        ):
            runs = {"batched": [], "one_at_a_time": []}
            for server in (batched, single):  # warm-up: first forward passes are slow
                asyncio.run(closed_loop(server.url, args.clients, 1, 4))
            for _ in range(repeats):
                runs["batched"].append(
                    asyncio.run(closed_loop(batched.url, args.clients, requests_per_client, args.max_tokens))
                )
                runs["one_at_a_time"].append(
                    asyncio.run(closed_loop(single.url, args.clients, requests_per_client, args.max_tokens))
                )

    median = {name: statistics.median(r["tokens_per_s"] for r in rs) for name, rs in runs.items()}
    machine.print_result({
        "benchmark": "serve_batching",
        "clients": args.clients,
        "requests_per_client": requests_per_client,
        "max_tokens": args.max_tokens,
        "repeats": repeats,
        "batched_tokens_per_s_median": round(median["batched"], 1),
        "one_at_a_time_tokens_per_s_median": round(median["one_at_a_time"], 1),
        "speedup": round(median["batched"] / median["one_at_a_time"], 2),
        "goal_speedup": 5.0,
        "engine_step_speedup_at_this_batch": round(engine_ceiling, 2),
        "load_average_1m": os.getloadavg()[0],
        "failed_requests": sum(r["failed"] for rs in runs.values() for r in rs),
        "runs": runs,
    })  # fmt: skip


if __name__ == "__main__":
    main()
