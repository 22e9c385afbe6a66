"""`python -m moe_runtime serve`: load a checkpoint and serve it over HTTP.

Every option can also come from an environment variable (how the operator configures pods); a flag on the
command line wins over the variable, an empty variable counts as unset. Where vLLM has the same setting the
flag has vLLM's name; the older names still work.

| flag | environment variable | default | meaning |
|---|---|---|---|
| --model | MOE_RUNTIME_MODEL | (required) | checkpoint directory, or `s3://bucket/prefix` to download first |
| --download-dir | MOE_RUNTIME_DOWNLOAD_DIR | $HOME/.cache/moedeploy/models, else /tmp/moedeploy/models | where s3:// checkpoints are cached (see runtime/download.py) |
| --served-model-name | MOE_RUNTIME_SERVED_MODEL_NAME | the checkpoint's name | `model` the API answers to |
| --host | MOE_RUNTIME_HOST | 0.0.0.0 | listen address |
| --port | MOE_RUNTIME_PORT | 8000 | listen port |
| --max-queue | MOE_RUNTIME_MAX_QUEUE | 256 | waiting requests before 429 |
| --max-num-seqs, --max-batch-seqs | MOE_RUNTIME_MAX_BATCH_SEQS | 32 | sequences running at once (1 = no batching) |
| --max-num-batched-tokens, --max-batch-tokens | MOE_RUNTIME_MAX_BATCH_TOKENS | 8192 on CUDA, 512 on CPU | tokens per engine step (decodes + prefill chunks) |
| --prefill-chunk | MOE_RUNTIME_PREFILL_CHUNK | 512 | most prompt tokens of one sequence per step |
| --schedule-policy | MOE_RUNTIME_SCHEDULE_POLICY | length_aware | `length_aware`, `fcfs`, or `static` (static batching: a batch runs to its end before the next starts; a baseline to measure against) |
| --aging-tokens-per-s | MOE_RUNTIME_AGING_TOKENS_PER_S | 64.0 | length_aware: priority a waiting second earns |
| --request-timeout | MOE_RUNTIME_REQUEST_TIMEOUT | 300.0 | seconds from arrival to last token (0: none) |
| --engine-stall-timeout | MOE_RUNTIME_ENGINE_STALL_TIMEOUT | 300.0 | seconds one engine step may run before /health and /ready answer 503 and the liveness probe restarts the pod (0: never) |
| --default-max-tokens | MOE_RUNTIME_DEFAULT_MAX_TOKENS | 256 | chat output limit when the request sets none |
| --max-model-len | MOE_RUNTIME_MAX_MODEL_LEN | the checkpoint's max_position_embeddings | context length (prompt + output) |
| --window | MOE_RUNTIME_WINDOW | the checkpoint's | sliding attention window in tokens |
| --global-tokens | MOE_RUNTIME_GLOBAL_TOKENS | 0 | global (sink) tokens kept besides the window |
| --quantize | MOE_RUNTIME_QUANTIZE | none | `none` or `int8` (weight-only) |
| --dtype | MOE_RUNTIME_DTYPE | auto | `auto` (bfloat16 on CUDA, float32 on CPU), `float32`, `bfloat16`, `float16` |
| --device | MOE_RUNTIME_DEVICE | cuda when present | `cpu`, `cuda`, `cuda:N` |
| --gpu-memory-utilization | MOE_RUNTIME_GPU_MEMORY_UTILIZATION | 0.9 | CUDA: fraction of the device's memory to use; the KV cache gets what weights and activations leave |
| --kv-cache-memory-bytes | MOE_RUNTIME_KV_CACHE_MEMORY_BYTES | CUDA: from --gpu-memory-utilization; CPU: half the available memory, at most 4 GiB | KV cache bytes |
| --max-kv-tokens | MOE_RUNTIME_MAX_KV_TOKENS | sized from memory | KV cache tokens over all sequences (overrides the byte sizing) |
| --block-size | MOE_RUNTIME_BLOCK_SIZE | 16 | tokens per KV cache block: a sequence holds whole blocks, and prefix caching shares full ones |
| --enable-prefix-caching, --no-enable-prefix-caching | MOE_RUNTIME_ENABLE_PREFIX_CACHING | on | a prompt starting with the full KV cache blocks of an earlier one takes them instead of computing them (off for windowed attention); the variable takes true/false |
| --max-request-bytes | MOE_RUNTIME_MAX_REQUEST_BYTES | 4194304 | largest request body (413 above) |
| --max-prompt-chars | MOE_RUNTIME_MAX_PROMPT_CHARS | 1048576 | longest prompt text, or all messages together |
| --max-messages | MOE_RUNTIME_MAX_MESSAGES | 2048 | most messages in a chat request |
| --max-stop-strings | MOE_RUNTIME_MAX_STOP_STRINGS | 4 | most stop strings in a request |
| --max-stop-string-chars | MOE_RUNTIME_MAX_STOP_STRING_CHARS | 256 | longest stop string |
| --lora-modules | MOE_RUNTIME_LORA_MODULES | none | LoRA adapters besides the base model: NAME=PATH or `{"name": ..., "path": ...}`, repeatable (the variable: a JSON list, or NAME=PATH items separated by spaces) |
| --lora-list | MOE_RUNTIME_LORA_LIST | none | JSON file `[{"name": ..., "path": ...}]` of LoRA adapters, watched while serving (a mounted ConfigMap in a pod) |
| --max-loras | MOE_RUNTIME_MAX_LORAS | 4 | LoRA adapters in memory at once (the least recently used idle one makes room) |
| --max-lora-rank | MOE_RUNTIME_MAX_LORA_RANK | 16 | highest rank a LoRA adapter may have |
| --lora-load-timeout | MOE_RUNTIME_LORA_LOAD_TIMEOUT | 120.0 | seconds one try to load a LoRA adapter may take before it counts as failed |
| --max-logprobs | MOE_RUNTIME_MAX_LOGPROBS | 20 | most log-probabilities per token a request may ask for |
| --expert-metrics | MOE_RUNTIME_EXPERT_METRICS | expert | `off`, `expert` (summed over layers) or `layer_expert` |
| --inject-faults | MOE_RUNTIME_INJECT_FAULTS | none | faults to have on purpose, to rehearse a rollout: `token_delay=S`, `long_prompt=N:S`, `hang_every=N:S`, `unhealthy_after=N`, comma-separated (runtime/moe_runtime/faults.py) |
| --log-level | MOE_RUNTIME_LOG_LEVEL | info | `debug`, `info`, `warning`, `error` |
| --log-format | MOE_RUNTIME_LOG_FORMAT | text | `text`, or `json` (one object per line) |

KV cache: a request starts only when its prompt + max_tokens fits in the cache beside the running ones; the
capacity comes from memory (`moe_runtime.engine.kv_budget`). A step that runs out of memory anyway fails nobody: its
requests wait again and the following steps are smaller.

LoRA adapters: a request selects one by its `model` field (the served model name selects none); `/v1/models`
lists the adapters that loaded, each with `parent` set to the base model; any other name is a 404
(`model_not_found`). Adapters load on a thread of their own, never stalling the decode steps. Of the
`--lora-list` file (re-read when its content changes, checked every second), added entries load, removed
ones unload once their accepted requests finish, and a failed load is logged, counted in the metrics and
retried with back-off, while the other adapters serve on. Beyond `--max-loras` adapters in memory, the least
recently used one without requests makes room and loads again when asked for; requests for an adapter that is
not in memory wait for it, they do not fail (adapters/residency.py). `/ready` turns 200 only after every adapter
configured at startup was tried once (loaded, failed, or still loading after `--lora-load-timeout`), so a
restarted pod comes back with its adapters, and one adapter on a dead volume cannot keep it unready. Adapters load
side by side; an error about one of them fails that adapter alone.

Lifecycle: `/health` answers as soon as the port is open; `/ready` answers 503 while the weights load, 200
once they have, and 503 again after SIGTERM or SIGINT. Then new generation requests get 503, the ones already
accepted finish, and the process exits 0. Draining, the server closes its idle keep-alive connections at once,
closes the others when their answer ends, and sends `Connection: close` with every answer, so that clients
holding a connection to it (kube-proxy picks a pod per connection) reconnect to a pod that serves. A second signal exits without waiting. If the engine loop dies,
every open request gets a 500, `/health` and `/ready` answer 503, and the process exits 1 at the next signal.

Torch's own OMP_NUM_THREADS applies too: set it to the CPUs the pod may use. Torch otherwise starts a thread
per host core, and spinning threads that outnumber the CPUs slowed a decode step 30x on a shared host.

On the CPU with one intra-op thread (OMP_NUM_THREADS=1) the model's decode attention, RMSNorm, rotary
embeddings and one token's experts run in native kernels, built with the C compiler (CC, else cc) when the
server first starts on a machine and cached (model/native.py); the log line "serving ..." says which. Without a compiler, or with
MOE_RUNTIME_NATIVE_KERNELS=0, they run on torch's operations: the same results to rounding, a decode step
1.3-1.9x slower (bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import threading

import uvicorn

from moe_runtime import logs
from moe_runtime.adapters.manager import LoraManager
from moe_runtime.adapters.watch import LoraListWatcher
from moe_runtime.api.app import Phase, ServingState, create_app
from moe_runtime.api.choices import Limits
from moe_runtime.draining import close_connections
from moe_runtime.engine import kv_budget
from moe_runtime.engine.scheduler import Policy, SchedulerConfig
from moe_runtime.engine.worker import EngineWorker
from moe_runtime.faults import Faults, FaultSpec
from moe_runtime.metrics import ExpertMetrics, RuntimeMetrics
from moe_runtime.serve.options import OPTIONS, parse_args, request_limits

__all__ = ["OPTIONS", "main", "parse_args"]

log = logging.getLogger("moe_runtime.serve.command")

DRAIN_POLL_S = 0.05
LOADER_THREAD = "load-engine"
CUDA_TOKEN_BUDGET = 8192  # vLLM's default max-num-batched-tokens
CPU_TOKEN_BUDGET = 512


def kv_tokens_per_sequence(engine, prefill_chunk: int) -> int | None:
    """The most KV cache one sequence can hold when every layer is windowed (its sink blocks, and the window
    behind a prefill chunk and the chunk, in whole blocks); None when it grows with the sequence."""
    if engine.window is None:
        return None
    return engine.blocks.blocks_for(engine.max_context, prefill_chunk) * engine.block_size


def resolve_token_budget(args: argparse.Namespace, engine) -> int:
    """--max-num-batched-tokens, or the device's default when it is unset: a GPU step runs thousands of
    tokens in the time a CPU step runs hundreds."""
    if args.max_batch_tokens is None:
        default = CUDA_TOKEN_BUDGET if engine.device.type == "cuda" else CPU_TOKEN_BUDGET
        args.max_batch_tokens = max(default, args.max_batch_seqs)
    return args.max_batch_tokens


def scheduler_config(args: argparse.Namespace, engine) -> SchedulerConfig:
    return SchedulerConfig(
        max_queue=args.max_queue,
        max_running=args.max_batch_seqs,
        token_budget=args.max_batch_tokens,
        prefill_chunk=args.prefill_chunk,
        policy=Policy(args.schedule_policy),
        aging_tokens_per_s=args.aging_tokens_per_s,
        kv_capacity_tokens=engine.max_kv_tokens,
        kv_tokens_per_sequence=kv_tokens_per_sequence(engine, args.prefill_chunk),
        block_size=engine.block_size,
    )


def limits(args: argparse.Namespace, engine) -> Limits:
    return Limits(
        max_context=engine.max_context,
        vocab_size=engine.config.vocab_size,
        default_max_tokens=args.default_max_tokens,
        kv_capacity_tokens=engine.max_kv_tokens,
        kv_tokens_per_sequence=kv_tokens_per_sequence(engine, args.prefill_chunk),
        request=request_limits(args),
        max_sequences=args.max_queue,
        block_size=engine.block_size,
    )


def load_engine(args: argparse.Namespace):
    from moe_runtime.download.s3 import local_model_dir
    from moe_runtime.engine.engine import Engine
    from moe_runtime.engine.sampling import SamplingParams

    engine = Engine.load(
        local_model_dir(args.model, args.download_dir),
        device=args.device,
        dtype=None if args.dtype == "auto" else args.dtype,
        quantize=None if args.quantize == "none" else args.quantize,
        window=args.window,
        global_tokens=args.global_tokens,
        max_model_len=args.max_model_len,
        block_size=args.block_size,
        prefix_caching=args.enable_prefix_caching,
    )
    # The first forward passes pay for lazy initialisation (seconds on CPU): pay it before /ready says 200.
    engine.generate([[0, 0]], SamplingParams(max_tokens=2))
    engine.max_kv_tokens = kv_budget.capacity_tokens(
        engine,
        max_kv_tokens=args.max_kv_tokens,
        kv_cache_memory_bytes=args.kv_cache_memory_bytes,
        gpu_memory_utilization=args.gpu_memory_utilization,
        step_tokens=resolve_token_budget(args, engine),
        tokens_per_sequence=kv_tokens_per_sequence(engine, args.prefill_chunk),
    )
    engine.take_expert_token_counts()
    engine.max_lora_rank = args.max_lora_rank
    return engine


def _in_daemon_thread(function, *args) -> asyncio.Future:
    """`function(*args)` on a daemon thread: unlike asyncio.to_thread, a stop while it runs (a SIGTERM
    during a long download or load) does not wait for it."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(setter, value) -> None:
        if not future.done():
            setter(value)

    def run() -> None:
        try:
            outcome = (future.set_result, function(*args))
        except BaseException as err:  # noqa: BLE001 - handed to the awaiting side
            outcome = (future.set_exception, err)
        with contextlib.suppress(RuntimeError):  # the loop is gone: the server stopped meanwhile
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, name=LOADER_THREAD, daemon=True).start()
    return future


class _DrainingServer(uvicorn.Server):
    """Turns the first SIGTERM/SIGINT into a drain instead of uvicorn's immediate stop."""

    def __init__(self, config: uvicorn.Config, state: ServingState) -> None:
        super().__init__(config)
        self._state = state
        self._loop: asyncio.AbstractEventLoop | None = None

    def handle_exit(self, sig: int, frame) -> None:
        if self._state.phase is Phase.DRAINING or self._loop is None:
            self.should_exit = True
            return
        log.info("received %s: draining", signal.Signals(sig).name)
        self._state.phase = Phase.DRAINING
        self._loop.call_soon_threadsafe(self._close_connections)
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._exit_when_idle()))

    def _close_connections(self) -> None:
        """Clients on kept connections reconnect, and their Service sends them to a pod that serves."""
        close_connections(self)

    async def _exit_when_idle(self) -> None:
        while self._state.worker is not None and not self._state.worker.idle:
            await asyncio.sleep(DRAIN_POLL_S)
        self.should_exit = True

    async def run_with_engine(self, args: argparse.Namespace) -> int:
        self._loop = asyncio.get_running_loop()
        serving = asyncio.create_task(self.serve())
        loaded = _in_daemon_thread(load_engine, args)
        await asyncio.wait([serving, loaded], return_when=asyncio.FIRST_COMPLETED)
        if not loaded.done():  # the server stopped first (port taken, or a signal while loading)
            loaded.cancel()
            await serving
            return 0 if self.started else 1
        if loaded.exception() is not None:
            log.error("failed to load %s: %s", args.model, loaded.exception())
            self.should_exit = True
            await serving
            return 1
        engine = loaded.result()
        model_name = args.served_model_name or engine.model_name
        metrics = self._state.metrics
        adapters = LoraManager(
            engine, metrics.lora, base_model=model_name, max_loras=args.max_loras, fixed=args.lora_modules,
            watched=args.lora_list is not None, load_timeout_s=args.lora_load_timeout,
        )  # fmt: skip
        worker = EngineWorker(
            engine, scheduler_config(args, engine), metrics, self._loop, adapters, self._state.faults
        )
        watcher = LoraListWatcher(args.lora_list, adapters.set_listed) if args.lora_list else None
        if watcher is not None:
            watcher.start()
        worker.start()
        try:
            # /ready waits until every adapter configured now was tried once
            while not adapters.ready.is_set() and worker.failure is None and not self.should_exit:
                await asyncio.sleep(DRAIN_POLL_S)
            self._state.activate(worker, model_name, limits(args, engine))
            log.info(
                "serving %s on %s:%s (%s, %s kernels)",
                self._state.model_name,
                args.host,
                args.port,
                engine.dtype,
                "native" if engine.native_kernels else "torch",
            )
            await serving
        finally:
            if watcher is not None:
                watcher.stop()
            worker.stop()
        return 1 if worker.failure is not None else 0


def main(argv: list[str]) -> int:
    args = parse_args(argv, os.environ)
    logs.configure(args.log_level, args.log_format)
    timeout = args.request_timeout or None
    metrics = RuntimeMetrics(request_timeout_s=timeout, expert_metrics=ExpertMetrics(args.expert_metrics))
    state = ServingState(
        metrics,
        request_timeout_s=timeout,
        max_request_bytes=args.max_request_bytes,
        engine_stall_timeout_s=args.engine_stall_timeout or None,
        faults=Faults(args.inject_faults or FaultSpec()),
    )
    if state.faults.active:
        log.warning("injecting faults on purpose: %s", state.faults.spec)
    config = uvicorn.Config(
        create_app(state), host=args.host, port=args.port, log_level=args.log_level, access_log=False,
        log_config=None,  # uvicorn's loggers go through ours (and its format)
    )  # fmt: skip
    server = _DrainingServer(config, state)
    code = asyncio.run(server.run_with_engine(args))
    if any(thread.name == LOADER_THREAD for thread in threading.enumerate()):
        # stopped while still downloading or loading: the download's worker threads would hold the exit
        logging.shutdown()
        os._exit(code)
    return code
