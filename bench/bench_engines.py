"""bench_engines: the same checkpoint, workload and machine served by our runtime and by vLLM, one after the
other in one run.

For each engine: start-up (process start until it answers: our /ready, vLLM's /health, which it binds only
once ready), memory of its process tree after a warm-up (RSS and PSS), then closed loops of C clients (1 and
16 by default) sending streamed completions of a `--prompt-words`-word prompt and `--max-tokens` tokens with
`ignore_eos`, greedy, for `--seconds` each: output tokens/s, TTFT p50/p99, end-to-end and per-token latency
(mean, stdev, p99). Ratios ours / vLLM per level. Also the ceiling of our engine without the HTTP server: the
same closed loops driven in-process through the engine thread (`EngineWorker`), so `server_vs_engine` says
how much of the engine's speed the server keeps.

The checkpoint is the performance issue's: a random Qwen3-MoE (hidden 512, 4 layers, 16 experts, top-4) written
by `python -m moe_runtime make-checkpoint`. Both serve fp32 (`--dtype`) with a 2048-token context. Our server
runs with one intra-op thread (OMP_NUM_THREADS=1, what the tests and pods use on a shared machine); vLLM with
its CPU defaults from `make vllm` (it binds its model to one core and keeps the other for its API server and
engine core on a 2-core machine).

    .venv/bin/python bench/bench_engines.py [--quick] [--engines ours,vllm] [--vllm-venv DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.append(str(Path(__file__).resolve().parents[1]))
import machine  # noqa: E402

from moe_runtime.tools.loadgen import WORDS, LoadConfig, LoadGenerator, Shape  # noqa: E402
from tests.integration.runtime_server.harness import free_port  # noqa: E402

MODEL_NAME = "bench-qwen3-moe"
CHECKPOINT = ("--family", "qwen3_moe", "--hidden-size", "512", "--num-layers", "4", "--num-experts", "16",
              "--top-k", "4")  # fmt: skip
MAX_MODEL_LEN = 2048
STARTUP_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class ServerSpec:
    name: str
    command: list[str]
    ready_path: str
    env: dict[str, str]


def make_checkpoint(workdir: Path) -> Path:
    """The issue's random Qwen3-MoE checkpoint (CHECKPOINT), written under `workdir`."""
    checkpoint = workdir / "qwen3-moe"
    subprocess.run([sys.executable, "-m", "moe_runtime", "make-checkpoint", "--out", str(checkpoint), *CHECKPOINT],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    return checkpoint


def our_server(checkpoint: Path, port: int, dtype: str) -> ServerSpec:
    command = [sys.executable, "-m", "moe_runtime", "serve", "--model", str(checkpoint), "--host", "127.0.0.1",
               "--port", str(port), "--dtype", dtype, "--served-model-name", MODEL_NAME,
               "--max-model-len", str(MAX_MODEL_LEN), "--log-level", "warning"]  # fmt: skip
    return ServerSpec("ours", command, "/ready", {"OMP_NUM_THREADS": "1"})


def vllm_server(venv: Path, checkpoint: Path, port: int, dtype: str) -> ServerSpec:
    command = [str(venv / "bin" / "moe-vllm-serve"), str(checkpoint), "--served-model-name", MODEL_NAME,
               "--dtype", dtype, "--max-model-len", str(MAX_MODEL_LEN), "--host", "127.0.0.1",
               "--port", str(port), "--uvicorn-log-level", "warning"]  # fmt: skip
    return ServerSpec("vllm", command, "/health", {})


def find_vllm_venv(given: str | None) -> Path:
    """The environment `make vllm` installs (hack/ensure-vllm.sh): complete ones carry its stamp."""
    if given:
        candidates = [given]
    else:
        cache = os.environ.get("MOEDEPLOY_CACHE") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "moedeploy"
        )
        candidates = sorted(glob.glob(os.path.join(cache, "vllm-*")), reverse=True)
    for candidate in candidates:
        path = Path(candidate)
        if (path / ".moedeploy-complete").exists() and (path / "bin" / "moe-vllm-serve").exists():
            return path
    raise SystemExit(f"no complete vLLM environment in {candidates or 'the cache'}: run `make vllm` first")


def tree_memory_mib(root: int) -> dict:
    """RSS and PSS summed over a process and all its descendants (vLLM runs three processes)."""
    parents: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
    pids, stack = [], [root]
    while stack:
        pid = stack.pop()
        pids.append(pid)
        stack.extend(parents.get(pid, []))
    rss = pss = 0
    for pid in pids:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
        except OSError:
            continue
        values = {line.split(":")[0]: int(line.split()[1]) for line in rollup}
        rss, pss = rss + values.get("Rss", 0), pss + values.get("Pss", 0)
    return {"processes": len(pids), "rss_mib": round(rss / 1024, 1), "pss_mib": round(pss / 1024, 1)}


def start(spec: ServerSpec, port: int, log: Path) -> tuple[subprocess.Popen, float]:
    """Starts the server; returns it and the seconds until its readiness path answered 200."""
    started = time.monotonic()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            spec.command, env={**os.environ, **spec.env}, stdout=out, stderr=out, start_new_session=True
        )
    deadline = started + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{spec.name} exited with {process.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{spec.ready_path}", timeout=2).status_code == 200:
                return process, time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    stop(process)
    raise TimeoutError(f"{spec.name} did not answer within {STARTUP_TIMEOUT_S}s")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to its process group (vLLM's engine core and worker too), then SIGKILL after 60 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def load(url: str, clients: int, seconds: float, args) -> dict:
    config = LoadConfig(
        urls=(url,), concurrency=clients, duration_s=seconds, mix=(Shape(args.prompt_words, args.max_tokens),),
        timeout_s=300, model=MODEL_NAME, temperature=0.0, ignore_eos=True, seed=clients,
    )  # fmt: skip
    generator = LoadGenerator(config)
    summary = asyncio.run(generator.run())
    return level_figures(summary)


def level_figures(summary: dict) -> dict:
    def pick(stats: dict | None, *keys: str) -> dict | None:
        return None if stats is None else {key: stats[key] for key in keys}

    return {
        "tokens_per_s": summary["output_tokens_per_s"],
        "completed": summary["completed"],
        "errors": summary["errors"],
        "ttft_s": pick(summary["ttft_s"], "p50", "p99", "mean", "stdev"),
        "e2e_s": pick(summary["latency_s"], "mean", "stdev", "p99"),
        "tpot_s": pick(summary["tpot_s"], "mean", "stdev", "p99"),
    }


def serve_and_measure(spec: ServerSpec, port: int, workdir: Path, args) -> dict:
    log = workdir / f"{spec.name}.log"
    process, startup_s = start(spec, port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        load(url, max(args.clients), 3.0, args)  # warm-up: first steps of each batch size are slow
        memory = tree_memory_mib(process.pid)
        levels = {str(c): load(url, c, args.seconds, args) for c in args.clients}
    finally:
        stop(process)
    return {"startup_s": round(startup_s, 2), "memory": memory, "levels": levels}


def engine_ceiling(checkpoint: Path, args) -> dict:
    """The same closed loops through our engine thread in this process, with no HTTP server: the most a
    server on this engine could deliver."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    from moe_runtime.engine.sampling import SamplingParams
    from moe_runtime.engine.scheduler import SchedulerConfig
    from moe_runtime.engine.streams import Finished, Tokens
    from moe_runtime.engine.worker import EngineWorker
    from moe_runtime.metrics import RuntimeMetrics
    from moe_runtime.serve.command import load_engine
    from moe_runtime.serve.options import parse_args

    torch.set_num_threads(1)
    options = parse_args(["--model", str(checkpoint), "--dtype", args.dtype, "--max-model-len",
                          str(MAX_MODEL_LEN)], {})  # fmt: skip
    engine = load_engine(options)
    rng = random.Random(0)
    prompts = [engine.tokenizer.encode(" ".join(rng.choice(WORDS) for _ in range(args.prompt_words)))
               for _ in range(256)]  # fmt: skip
    params = SamplingParams(max_tokens=args.max_tokens, ignore_eos=True)

    async def closed_loop(clients: int, seconds: float) -> float:
        config = SchedulerConfig(max_running=options.max_batch_seqs, token_budget=options.max_batch_tokens,
                                 prefill_chunk=options.prefill_chunk, kv_capacity_tokens=engine.max_kv_tokens)  # fmt: skip
        worker = EngineWorker(engine, config, RuntimeMetrics(), asyncio.get_running_loop())
        worker.start()
        tokens, started, sent = 0, time.perf_counter(), 0

        async def client() -> None:
            nonlocal tokens, sent
            while time.perf_counter() - started < seconds:
                sent += 1  # a different prompt each time, as the HTTP clients send
                async for event in worker.submit(prompts[sent % len(prompts)], params, None):
                    if isinstance(event, Tokens):
                        tokens += len(event.ids)
                    elif isinstance(event, Finished):
                        break

        try:
            await asyncio.gather(*(client() for _ in range(clients)))
        finally:
            await asyncio.to_thread(worker.stop)
        return tokens / (time.perf_counter() - started)

    asyncio.run(closed_loop(max(args.clients), 3.0))
    return {str(c): round(asyncio.run(closed_loop(c, args.seconds)), 1) for c in args.clients}


def ratios(ours: dict, vllm: dict) -> dict:
    out = {"startup_s": round(ours["startup_s"] / vllm["startup_s"], 3),
           "rss": round(ours["memory"]["rss_mib"] / vllm["memory"]["rss_mib"], 3)}  # fmt: skip
    for level, figures in ours["levels"].items():
        theirs = vllm["levels"][level]
        out[f"tokens_per_s_at_{level}"] = round(figures["tokens_per_s"] / theirs["tokens_per_s"], 3)
        if figures["ttft_s"] and theirs["ttft_s"]:
            out[f"ttft_p99_at_{level}"] = round(figures["ttft_s"]["p99"] / theirs["ttft_s"]["p99"], 3)
            out[f"e2e_stdev_at_{level}"] = round(
                figures["e2e_s"]["stdev"] / max(theirs["e2e_s"]["stdev"], 1e-9), 3
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 s per level instead of 30")
    parser.add_argument("--seconds", type=float, help="seconds per load level")
    parser.add_argument("--clients", default="1,16", help="load levels (concurrent clients), comma-separated")
    parser.add_argument("--prompt-words", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--engines", default="ours,vllm", help="which to run: ours, vllm or both")
    parser.add_argument("--vllm-venv", help="vLLM's environment (default: the one `make vllm` installed)")
    parser.add_argument("--no-ceiling", action="store_true", help="skip our engine's in-process ceiling")
    args = parser.parse_args()
    args.seconds = args.seconds or (10.0 if args.quick else 30.0)
    args.clients = [int(c) for c in args.clients.split(",")]
    engines = args.engines.split(",")
    vllm_venv = find_vllm_venv(args.vllm_venv) if "vllm" in engines else None

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        checkpoint = make_checkpoint(workdir)
        for name in engines:
            port = free_port()
            spec = (our_server(checkpoint, port, args.dtype) if name == "ours"
                    else vllm_server(vllm_venv, checkpoint, port, args.dtype))  # fmt: skip
            print(f"bench_engines: {name}", file=sys.stderr, flush=True)
            results[name] = serve_and_measure(spec, port, workdir, args)
        if "ours" in engines and not args.no_ceiling:
            print("bench_engines: our engine without the server", file=sys.stderr, flush=True)
            ceiling = engine_ceiling(checkpoint, args)
            results["ours"]["engine_ceiling_tokens_per_s"] = ceiling
            results["ours"]["server_vs_engine"] = {
                level: round(results["ours"]["levels"][level]["tokens_per_s"] / ceiling[level], 3)
                for level in ceiling
            }
    out = {
        "benchmark": "engines",
        "workload": {
            "prompt_words": args.prompt_words,
            "max_tokens": args.max_tokens,
            "ignore_eos": True,
            "temperature": 0,
            "stream": True,
            "seconds_per_level": args.seconds,
            "dtype": args.dtype,
            "checkpoint": " ".join(CHECKPOINT),
            "max_model_len": MAX_MODEL_LEN,
        },  # fmt: skip
        **results,
    }
    if "ours" in results and "vllm" in results:
        out["ours_over_vllm"] = ratios(results["ours"], results["vllm"])
        out["goals"] = {
            "tokens_per_s_at_1_and_16_at_least_vllm": all(
                out["ours_over_vllm"].get(f"tokens_per_s_at_{c}", 0) >= 1 for c in (1, 16)
            ),
            "ttft_p99_at_16_at_most_vllm": out["ours_over_vllm"].get("ttft_p99_at_16", 2) <= 1,
        }
    if "ours" in results and "server_vs_engine" in results["ours"]:
        out.setdefault("goals", {})["server_at_least_80_percent_of_engine_at_16"] = (
            results["ours"]["server_vs_engine"].get("16", 0) >= 0.8
        )
    machine.print_result(out)


if __name__ == "__main__":
    main()
