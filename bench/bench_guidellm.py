"""guidellm, the vLLM project's load generator, run with its own default `run` command against a local
`moe_runtime serve`, next to the project's serving benchmark (bench_serve_batching's closed loop) on the same
server at the same concurrency: 1, 4, 8 and 16 streams.

guidellm runs as its defaults have it: the openai_http backend on /v1/chat/completions, streaming with
stream_options {include_usage, continuous_usage_stats}, and ignore_eos with max_completion_tokens from its
data; nothing overrides its request body (no `extras`). Only the run's shape is given: concurrent streams, a
number of requests, synthetic prompts and outputs of fixed token counts, a JSON output file. Nothing comes
from a hub: its tokenizer (which sizes the synthetic prompts) is the checkpoint directory, and the hub is
switched off (HF_HUB_OFFLINE=1).

The workload is bench_serve_batching's: its prompts (as many tokens reach the engine from guidellm's chat
prompts, the chat template's tokens counted), 32 output tokens, the same requests per stream (at least 64
requests per level, so that even one stream loads the server for seconds). Next to guidellm run
bench_serve_batching's closed loop as it is (whole answers) and the same loop streamed the way guidellm
streams (SSE, usage in every chunk, ignore_eos): a streamed token costs the server a chunk and a send of its
own, which whole answers do not pay, so the streamed loop is the like-for-like figure and the whole-answer
one shows what streaming costs. Per concurrency: whole, streamed, guidellm, streamed, whole (each loop's
figure the mean of its two runs, around guidellm's), and the server process's CPU time per output token of
each kind. With two CPUs or more the server's threads get one CPU and the clients (this process, guidellm)
the others, so that a client's own CPU time cannot slow the server down; the server's busy fraction (its CPU
time over the wall time) then tells whether the server or the client was the limit. Goal: no errors, and
guidellm's output tokens/s within 10% of bench_serve_batching's.

    .venv/bin/python -m pip install -e '.[bench]'
    .venv/bin/python bench/bench_guidellm.py [--quick] [--concurrency 1,4,8,16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import httpx

sys.path.append(str(Path(__file__).resolve().parents[1]))
import machine  # noqa: E402

from bench.bench_serve_batching import closed_loop, prompt  # noqa: E402
from tests.integration.runtime_server.harness import RuntimeServer, write_checkpoint  # noqa: E402

MAX_TOKENS = 32
GUIDELLM_TIMEOUT_S = 900
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def matched_prompt_tokens(checkpoint: Path, prompts: int) -> tuple[int, int]:
    """(tokens bench_serve_batching's prompts reach the engine with, the synthetic prompt length that makes
    guidellm's chat prompts reach it with as many)."""
    from moe_runtime.model.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_dir(checkpoint)
    engine_tokens = round(statistics.median(len(tokenizer.encode(prompt(i))) for i in range(prompts)))
    template = len(tokenizer.encode_chat([{"role": "user", "content": "x"}])) - len(tokenizer.encode("x"))
    return engine_tokens, max(1, engine_tokens - template)


def guidellm_command(url: str, checkpoint: Path, streams: int, requests: int, prompt_tokens: int, out: Path):
    return [
        sys.executable, "-m", "guidellm", "run",
        "--backend", f"kind=openai_http,target={url}",
        "--profile", f"kind=concurrent,streams={streams}",
        "--constraint", f"kind=max_requests,count={requests}",
        "--data", f"kind=synthetic_text,prompt_tokens={prompt_tokens},output_tokens={MAX_TOKENS}",
        "--tokenizer", f"kind=huggingface_auto,model={checkpoint}",
        "--output", f"kind=json,path={out}",
        "--disable-console",
    ]  # fmt: skip


def run_guidellm(command: list[str], out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **OFFLINE}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=GUIDELLM_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(
            f"guidellm failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    (benchmark,) = json.loads(out.read_text())["benchmarks"]
    metrics = benchmark["metrics"]

    def stat(name: str, field: str = "mean") -> float:
        return round(metrics[name]["successful"][field], 3)

    totals = metrics["request_totals"]
    figures = {
        "output_tokens_per_s": stat("output_tokens_per_second"),
        "requests_per_s": stat("requests_per_second"),
        "request_latency_mean_s": stat("request_latency"),
        "ttft_median_ms": stat("time_to_first_token_ms", "median"),
        "itl_median_ms": stat("inter_token_latency_ms", "median"),
        "output_tokens_per_request_median": stat("output_token_count", "median"),
        "prompt_tokens_per_request_median": stat("prompt_token_count", "median"),
        "successful": totals["successful"],
        "errored": totals["errored"],
        "incomplete": totals["incomplete"],
    }
    # what `Metered` counts
    tokens = totals["successful"] * figures["output_tokens_per_request_median"]
    failed = totals["errored"] + totals["incomplete"]
    state = benchmark["scheduler_state"]
    figures["warnings"] = [str(w) for w in benchmark.get("warnings") or []]
    return {**figures, "tokens_per_s": figures["output_tokens_per_s"], "tokens": tokens, "failed": failed,
            "seconds": state["end_requests_time"] - state["start_requests_time"]}  # fmt: skip


async def streamed_loop(url: str, clients: int, requests_per_client: int, max_tokens: int) -> dict:
    """bench_serve_batching's closed loop (its prompts, clients, requests) with its requests streamed the way
    guidellm streams them: SSE, usage in every chunk, ignore_eos. Tokens counted from the final usage."""
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as http:

        async def one(index: int) -> tuple[int, bool]:
            body = {"prompt": prompt(index), "max_tokens": max_tokens, "temperature": 0, "stream": True,
                    "stream_options": {"include_usage": True, "continuous_usage_stats": True},
                    "ignore_eos": True}  # fmt: skip
            tokens, ok = 0, False
            async with http.stream("POST", f"{url}/v1/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        chunk = json.loads(line.removeprefix("data: "))
                        tokens = chunk.get("usage", {}).get("completion_tokens", tokens)
                    ok = ok or line == "data: [DONE]"
            return tokens, ok and response.status_code == 200

        async def client(c: int) -> list:
            return [await one(c * requests_per_client + r) for r in range(requests_per_client)]

        start = time.perf_counter()
        results = [t for ts in await asyncio.gather(*(client(c) for c in range(clients))) for t in ts]
        seconds = time.perf_counter() - start
    tokens = sum(t for t, _ in results)
    return {"tokens_per_s": tokens / seconds, "tokens": tokens, "seconds": seconds,
            "failed": sum(not ok for _, ok in results)}  # fmt: skip


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Metered:
    """Runs of one kind against the server: tokens/s of each, the server's CPU time per output token, and how
    busy the server was (its CPU time over the runs' wall time: near 1 when the server is the limit, lower
    when the client is)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.rates, self.cpu_s, self.wall_s, self.tokens, self.failed = pid, [], 0.0, 0.0, 0, 0

    def run(self, measure, *args):
        cpu = cpu_seconds(self.pid)
        result = measure(*args)
        self.cpu_s += cpu_seconds(self.pid) - cpu
        self.wall_s += result["seconds"]
        self.rates.append(result["tokens_per_s"])
        self.tokens += result["tokens"]
        self.failed += result["failed"]
        return result

    def summary(self) -> dict:
        return {
            "tokens_per_s": round(statistics.mean(self.rates), 1),
            "runs_tokens_per_s": [round(r, 1) for r in self.rates],
            "server_cpu_us_per_output_token": round(1e6 * self.cpu_s / max(1, self.tokens)),
            "server_busy": round(self.cpu_s / self.wall_s, 2),
            "failed": self.failed,
        }


def pin(server_pid: int) -> dict | None:
    """The server's threads on one CPU, this process (the clients, and guidellm after it) on the others: what
    a client burns then does not slow the server down, and a client that cannot keep up shows as an idle
    server. None on a machine of one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {cpus[0]})
    os.sched_setaffinity(0, set(cpus[1:]))
    return {"server": cpus[:1], "clients": cpus[1:]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer requests per stream")
    parser.add_argument("--concurrency", default="1,4,8,16", help="comma-separated stream counts")
    parser.add_argument("--no-pin", action="store_true", help="leave the server and the clients unpinned")
    args = parser.parse_args()
    try:
        version("guidellm")
    except PackageNotFoundError:  # an optional extra: `make bench` goes on without it
        print(
            json.dumps(
                {"benchmark": "guidellm", "skipped": "guidellm is not installed: pip install -e '.[bench]'"}
            )
        )
        return
    levels = [int(c) for c in args.concurrency.split(",")]
    least = 16 if args.quick else 64  # requests per level: 4 per stream at 16 streams, seconds of load at 1
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_checkpoint(Path(tmp) / "tiny-qwen2-moe")
        engine_tokens, synthetic_tokens = matched_prompt_tokens(checkpoint, least)
        options = ("--dtype", "float32", "--max-batch-tokens", "512", "--max-queue", "256")
        results, command = {}, None
        with RuntimeServer(checkpoint, *options, "--max-batch-seqs", str(max(levels))) as server:
            pinned = None if args.no_pin else pin(server.process.pid)
            asyncio.run(closed_loop(server.url, max(levels), 1, 4))  # warm-up: first forward passes are slow
            for streams in levels:
                out = Path(tmp) / f"guidellm-{streams}.json"
                per_stream = -(-least // streams)
                command = guidellm_command(
                    server.url, checkpoint, streams, streams * per_stream, synthetic_tokens, out
                )
                plain, streamed, guided = (Metered(server.process.pid) for _ in range(3))
                loop = (server.url, streams, per_stream, MAX_TOKENS)
                for kind in ("plain", "streamed", "guidellm", "streamed", "plain"):  # both sides of guidellm
                    if kind == "plain":
                        plain.run(asyncio.run, closed_loop(*loop))
                    elif kind == "streamed":
                        streamed.run(asyncio.run, streamed_loop(*loop))
                    else:
                        figures = guided.run(run_guidellm, command, out)
                theirs = figures["output_tokens_per_s"]
                results[str(streams)] = {
                    "guidellm": {
                        **{
                            k: v
                            for k, v in figures.items()
                            if k not in ("tokens_per_s", "tokens", "failed", "seconds")
                        },
                        **{k: guided.summary()[k] for k in ("server_cpu_us_per_output_token", "server_busy")},
                    },
                    "serve_batching": plain.summary(),
                    "serve_batching_streamed": streamed.summary(),
                    "ratio_to_serve_batching": round(theirs / plain.summary()["tokens_per_s"], 3),
                    "ratio_to_serve_batching_streamed": round(theirs / streamed.summary()["tokens_per_s"], 3),
                }
                print(f"concurrency {streams}: {json.dumps(results[str(streams)])}", file=sys.stderr)

    errors = sum(r["guidellm"]["errored"] + r["guidellm"]["incomplete"] for r in results.values())
    machine.print_result({
        "benchmark": "guidellm",
        "guidellm_version": version("guidellm"),
        "command": [part.replace(tmp, "$TMP") for part in command[2:]],  # the last one; streams and count vary
        "requests_per_level": {str(c): c * -(-least // c) for c in levels},
        "prompt_tokens_at_the_engine": engine_tokens,
        "guidellm_synthetic_prompt_tokens": synthetic_tokens,
        "output_tokens": MAX_TOKENS,
        "by_concurrency": results,
        "guidellm_errors": errors,
        "within_10_percent": {
            c: {"serve_batching": abs(r["ratio_to_serve_batching"] - 1) <= 0.10,
                "serve_batching_streamed": abs(r["ratio_to_serve_batching_streamed"] - 1) <= 0.10}
            for c, r in results.items()
        },
        "goal": "no errors; guidellm's output tokens/s within 10% of bench_serve_batching's closed loop",
        "pinned_cpus": pinned,
    })  # fmt: skip


if __name__ == "__main__":
    main()
