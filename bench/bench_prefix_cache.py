"""Prefix caching: every request starts with the same 1,024-token prefix (a system prompt) and adds a short
suffix of its own. The same closed loop against our server with `--enable-prefix-caching` (the default) and
with `--no-enable-prefix-caching`, one after the other in one run: time to first token (p50, p99), output
tokens/s, and the hit rate the server exports (`vllm:prefix_cache_hits_total` / `..._queries_total`).

Prompts are token ids (the completions API takes them), so the prefix is exactly `--prefix-tokens` long.
Checkpoint and machine as in bench_engines.

    .venv/bin/python bench/bench_prefix_cache.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.append(str(Path(__file__).resolve().parents[1]))
import machine  # noqa: E402
from bench_engines import MODEL_NAME, make_checkpoint, our_server, start, stop  # noqa: E402
from bench_serve_stability import stats  # noqa: E402

from tests.integration.runtime_server.harness import free_port, timed_completion  # noqa: E402

VOCAB = 512  # the checkpoint's


async def closed_loop(url: str, prefix: list[int], args, seconds: float, seed: int) -> dict:
    rng = random.Random(seed)
    results = []
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=args.clients)) as http:
        began = time.perf_counter()

        async def client() -> None:
            while time.perf_counter() - began < seconds:
                suffix = [rng.randrange(1, VOCAB) for _ in range(args.suffix_tokens)]
                body = {"model": MODEL_NAME, "prompt": prefix + suffix, "max_tokens": args.max_tokens,
                        "temperature": 0, "ignore_eos": True}  # fmt: skip
                results.append(await timed_completion(http, url, body))

        await asyncio.gather(*(client() for _ in range(args.clients)))
        elapsed = time.perf_counter() - began
    done = [r for r in results if r.status == 200]
    return {"requests": len(results), "failed": len(results) - len(done),
            "ttft_s": stats([r.ttft_s for r in done]),
            "tokens_per_s": round(sum(r.completion_tokens for r in done) / elapsed, 1)}  # fmt: skip


def prefix_counts(url: str) -> dict:
    text = httpx.get(f"{url}/metrics").text
    values = {}
    for line in text.splitlines():
        for name in ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"):
            if line.startswith(name + " "):
                values[name] = float(line.split()[1])
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 s per server instead of 30")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--prefix-tokens", type=int, default=1024)
    parser.add_argument("--suffix-tokens", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    seconds = args.seconds or (10.0 if args.quick else 30.0)
    prefix = [random.Random(7).randrange(1, VOCAB) for _ in range(args.prefix_tokens)]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        checkpoint = make_checkpoint(workdir)
        for name, flag in (
            ("caching_on", "--enable-prefix-caching"),
            ("caching_off", "--no-enable-prefix-caching"),
        ):
            port = free_port()
            spec = our_server(checkpoint, port, "float32")
            spec.command.append(flag)
            print(f"bench_prefix_cache: {name}", file=sys.stderr, flush=True)
            process, _ = start(spec, port, workdir / f"{name}.log")
            url = f"http://127.0.0.1:{port}"
            try:
                asyncio.run(closed_loop(url, prefix, args, 2.0, seed=1))  # warm-up (and the prefix cached)
                before = prefix_counts(url)
                results[name] = asyncio.run(closed_loop(url, prefix, args, seconds, seed=2))
                after = prefix_counts(url)
                queries = after["vllm:prefix_cache_queries_total"] - before["vllm:prefix_cache_queries_total"]
                hits = after["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"]
                results[name]["hit_rate"] = round(hits / queries, 3) if queries else None
            finally:
                stop(process)
    on, off = results["caching_on"], results["caching_off"]
    machine.print_result({
        "benchmark": "prefix_cache",
        "workload": {"prefix_tokens": args.prefix_tokens, "suffix_tokens": args.suffix_tokens,
                     "max_tokens": args.max_tokens, "clients": args.clients, "seconds": seconds},
        **results,
        "ttft_p50_off_over_on": round(off["ttft_s"]["p50"] / on["ttft_s"]["p50"], 2),
        "ttft_p99_off_over_on": round(off["ttft_s"]["p99"] / on["ttft_s"]["p99"], 2),
        "tokens_per_s_on_over_off": round(on["tokens_per_s"] / off["tokens_per_s"], 2),
        "goal_ttft_p50_cut": 3.0,
    })  # fmt: skip


if __name__ == "__main__":
    main()
