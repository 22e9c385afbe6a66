"""The seed's promise as one measurement: does dynamic batching keep latency stable? The same Poisson workload
of mixed prompt and output lengths (the same arrival times and shapes, from one seed) served three times by
our runtime: static batching (`--schedule-policy static`: a batch runs to its end before the next starts),
FCFS continuous batching, and length-aware continuous batching (the default).

Per policy, from the client's side (streamed completions, `ignore_eos`): time to first token, inter-token
latency (every gap between two tokens of a stream, pooled) and time per output token (per request: its
decode time over its tokens after the first), each as mean, stdev, p50, p99; and the ratio static /
length-aware of every stdev and p99. Checkpoint and machine as in bench_engines (the performance issue's
Qwen3-MoE, one intra-op thread).

    .venv/bin/python bench/bench_serve_stability.py [--quick] [--rate 3] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.append(str(Path(__file__).resolve().parents[1]))
import machine  # noqa: E402
from bench_engines import MODEL_NAME, make_checkpoint, our_server, start, stop  # noqa: E402

from moe_runtime.tools.loadgen import WORDS  # noqa: E402
from tests.integration.runtime_server.harness import free_port  # noqa: E402

POLICIES = ("static", "fcfs", "length_aware")
# (prompt words, output tokens, weight): short and long prompts, short and long answers
MIX = ((12, 16, 3), (12, 128, 2), (160, 16, 2), (160, 128, 1))


def workload(rate: float, seconds: float, seed: int) -> list[tuple[float, str, int]]:
    """(send time, prompt, max_tokens) of a Poisson process at `rate` per second."""
    rng = random.Random(seed)
    out, at = [], 0.0
    while True:
        at += rng.expovariate(rate)
        if at >= seconds:
            return out
        words, tokens, _ = rng.choices(MIX, weights=[w for *_, w in MIX])[0]
        out.append((at, " ".join(rng.choice(WORDS) for _ in range(words)), tokens))


async def one(http: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> dict:
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True}  # fmt: skip
    start_at = time.perf_counter()
    arrivals = []
    async with http.stream("POST", f"{url}/v1/completions", json=body) as response:
        if response.status_code != 200:
            return {"error": response.status_code}
        async for line in response.aiter_lines():
            if line.startswith("data: {") and json.loads(line[6:]).get("choices"):
                arrivals.append(time.perf_counter() - start_at)
    return {"arrivals": arrivals, "max_tokens": max_tokens}


async def drive(url: str, schedule: list[tuple[float, str, int]]) -> list[dict]:
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=1000)) as http:
        began = time.perf_counter()

        async def at(send: float, prompt: str, max_tokens: int) -> dict:
            await asyncio.sleep(max(0.0, began + send - time.perf_counter()))
            return await one(http, url, prompt, max_tokens)

        return await asyncio.gather(*(at(*item) for item in schedule))


def stats(values: list[float]) -> dict:
    ordered = sorted(values)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    return {"mean": round(statistics.mean(ordered), 4), "stdev": round(statistics.pstdev(ordered), 4),
            "p50": round(pct(50), 4), "p99": round(pct(99), 4), "n": len(ordered)}  # fmt: skip


def figures(results: list[dict]) -> dict:
    done = [r for r in results if "arrivals" in r and r["arrivals"]]
    ttft = [r["arrivals"][0] for r in done]
    itl = [b - a for r in done for a, b in zip(r["arrivals"], r["arrivals"][1:], strict=False)]
    tpot = [
        (r["arrivals"][-1] - r["arrivals"][0]) / (len(r["arrivals"]) - 1)
        for r in done
        if len(r["arrivals"]) > 1
    ]
    return {"requests": len(results), "failed": len(results) - len(done), "ttft_s": stats(ttft),
            "inter_token_s": stats(itl), "tpot_s": stats(tpot), "e2e_s": stats([r["arrivals"][-1] for r in done])}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 s of arrivals instead of 60")
    parser.add_argument("--seconds", type=float, help="seconds of arrivals per policy")
    parser.add_argument("--rate", type=float, default=3.0, help="requests per second (Poisson)")
    parser.add_argument("--max-num-seqs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    seconds = args.seconds or (20.0 if args.quick else 60.0)
    schedule = workload(args.rate, seconds, args.seed)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        checkpoint = make_checkpoint(workdir)
        for policy in POLICIES:
            port = free_port()
            spec = our_server(checkpoint, port, "float32")
            spec.command.extend(["--schedule-policy", policy, "--max-num-seqs", str(args.max_num_seqs)])
            print(f"bench_serve_stability: {policy}", file=sys.stderr, flush=True)
            process, _ = start(spec, port, workdir / f"{policy}.log")
            try:
                asyncio.run(drive(f"http://127.0.0.1:{port}", workload(2.0, 3.0, args.seed + 1)))  # warm-up
                results[policy] = figures(asyncio.run(drive(f"http://127.0.0.1:{port}", schedule)))
            finally:
                stop(process)
    ratio = {
        f"{metric}_{key}": round(results["static"][metric][key] / max(results["length_aware"][metric][key], 1e-9), 2)
        for metric in ("ttft_s", "inter_token_s", "tpot_s", "e2e_s")
        for key in ("stdev", "p99")
    }  # fmt: skip
    machine.print_result({
        "benchmark": "serve_stability",
        "workload": {"rate_per_s": args.rate, "seconds": seconds, "requests": len(schedule), "seed": args.seed,
                     "mix_prompt_words_max_tokens_weight": MIX, "max_num_seqs": args.max_num_seqs},
        "policies": results,
        "static_over_length_aware": ratio,
        "goal_stdev_ratio": 2.9,
    })  # fmt: skip


if __name__ == "__main__":
    main()
