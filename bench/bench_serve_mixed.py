"""Mixed prompt lengths (a steady stream of short prompts, bursts of very long ones): p99 time to first token
of the short requests with length-aware scheduling against first-come-first-served. The same server code
runs both policies, from the same checkpoint, in the same run, measured alternately.

    .venv/bin/python bench/bench_serve_mixed.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.append(str(Path(__file__).resolve().parents[1]))
import machine  # noqa: E402

from tests.integration.runtime_server.harness import RuntimeServer, timed_completion, write_checkpoint  # noqa: E402

SHORT_TOKENS, LONG_TOKENS, OUTPUT_TOKENS = 16, 3000, 8
SERVER_OPTIONS = (
    "--dtype",
    "float32",
    "--max-batch-seqs",
    "32",
    "--max-batch-tokens",
    "512",
    "--prefill-chunk",
    "512",
)


def arrivals(seconds: float) -> list[tuple[float, str]]:
    """A short request every 100 ms; three long ones at once every 2.5 s, starting at 0.5 s."""
    shorts = [(i * 0.1, "short") for i in range(int(seconds / 0.1))]
    longs = [(0.5 + burst * 2.5, "long") for burst in range(int(seconds / 2.5)) for _ in range(3)]
    return sorted(shorts + longs)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


async def run_load(url: str, seconds: float, vocab: int) -> dict:
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=500)) as http:

        async def send(at: float, kind: str, i: int):
            await asyncio.sleep(at)
            length = SHORT_TOKENS if kind == "short" else LONG_TOKENS
            # Distinct token ids per request, so no two prompts are alike.
            ids = [(i * 31 + k * 7) % (vocab - 1) + 1 for k in range(length)]
            body = {"prompt": ids, "max_tokens": OUTPUT_TOKENS, "temperature": 0}
            return kind, await timed_completion(http, url, body)

        results = await asyncio.gather(*(send(at, kind, i) for i, (at, kind) in enumerate(arrivals(seconds))))
    short = [t.ttft_s for kind, t in results if kind == "short" and t.status == 200]
    long = [t.ttft_s for kind, t in results if kind == "long" and t.status == 200]
    return {
        "short_ttft_p99_s": p99(short),
        "short_ttft_p50_s": statistics.median(short),
        "long_ttft_p50_s": statistics.median(long) if long else None,
        "failed": sum(t.status != 200 for _, t in results),
        "requests": len(results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a shorter load and one repeat")
    args = parser.parse_args()
    seconds, repeats = (5.0, 1) if args.quick else (10.0, 3)

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_checkpoint(Path(tmp) / "tiny-qwen2-moe")
        vocab = json.loads((checkpoint / "config.json").read_text())["vocab_size"]
        with (
            RuntimeServer(checkpoint, *SERVER_OPTIONS, "--schedule-policy", "length_aware") as length_aware,
            RuntimeServer(checkpoint, *SERVER_OPTIONS, "--schedule-policy", "fcfs") as fcfs,
        ):
            servers = {"length_aware": length_aware, "fcfs": fcfs}
            for server in servers.values():  # warm-up: first forward passes are slow
                asyncio.run(run_load(server.url, 1.0, vocab))
            runs = {name: [] for name in servers}
            for _ in range(repeats):
                for name, server in servers.items():
                    runs[name].append(asyncio.run(run_load(server.url, seconds, vocab)))

    median = {name: statistics.median(r["short_ttft_p99_s"] for r in rs) for name, rs in runs.items()}
    machine.print_result({
        "benchmark": "serve_mixed_lengths",
        "short_prompt_tokens": SHORT_TOKENS,
        "long_prompt_tokens": LONG_TOKENS,
        "load_seconds": seconds,
        "repeats": repeats,
        "server_options": SERVER_OPTIONS,
        "length_aware_short_ttft_p99_s_median": round(median["length_aware"], 4),
        "fcfs_short_ttft_p99_s_median": round(median["fcfs"], 4),
        "improvement": round(median["fcfs"] / median["length_aware"], 2),
        "goal_improvement": 3.0,
        "load_average_1m": os.getloadavg()[0],
        "failed_requests": sum(r["failed"] for rs in runs.values() for r in rs),
        "runs": runs,
    })  # fmt: skip


if __name__ == "__main__":
    main()
