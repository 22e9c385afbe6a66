"""`python -m moe_runtime serve`: load a checkpoint and serve it over HTTP.

Every option can also come from an environment variable (how the operator configures pods); a flag on the
command line wins over the variable, an empty variable counts as unset.

| flag | environment variable | default | meaning |
|---|---|---|---|
| --model | MOE_RUNTIME_MODEL | (required) | checkpoint directory, or `s3://bucket/prefix` to download first |
| --download-dir | MOE_RUNTIME_DOWNLOAD_DIR | $HOME/.cache/moedeploy/models, else /tmp/moedeploy/models | where s3:// checkpoints are cached (see runtime/download.py) |
| --served-model-name | MOE_RUNTIME_SERVED_MODEL_NAME | the checkpoint's name | `model` the API answers to |
| --host | MOE_RUNTIME_HOST | 0.0.0.0 | listen address |
| --port | MOE_RUNTIME_PORT | 8000 | listen port |
| --max-queue | MOE_RUNTIME_MAX_QUEUE | 256 | waiting requests before 429 |
| --max-batch-seqs | MOE_RUNTIME_MAX_BATCH_SEQS | 32 | sequences running at once (1 = no batching) |
| --max-batch-tokens | MOE_RUNTIME_MAX_BATCH_TOKENS | 512 | tokens per engine step (decodes + prefill chunks) |
| --prefill-chunk | MOE_RUNTIME_PREFILL_CHUNK | 256 | most prompt tokens of one sequence per step |
| --schedule-policy | MOE_RUNTIME_SCHEDULE_POLICY | length_aware | `length_aware` or `fcfs` |
| --aging-tokens-per-s | MOE_RUNTIME_AGING_TOKENS_PER_S | 64 | length_aware: priority a waiting second earns |
| --request-timeout | MOE_RUNTIME_REQUEST_TIMEOUT | 600 | seconds from arrival to last token (0: none) |
| --default-max-tokens | MOE_RUNTIME_DEFAULT_MAX_TOKENS | 256 | chat output limit when the request sets none |
| --window | MOE_RUNTIME_WINDOW | (none) | sliding attention window in tokens |
| --global-tokens | MOE_RUNTIME_GLOBAL_TOKENS | 0 | global (sink) tokens kept besides the window |
| --quantize | MOE_RUNTIME_QUANTIZE | none | `none` or `int8` (weight-only) |
| --dtype | MOE_RUNTIME_DTYPE | (engine's choice) | `float32`, `bfloat16`, `float16` |
| --device | MOE_RUNTIME_DEVICE | (engine's choice) | `cpu`, `cuda`, `cuda:N` |
| --max-kv-tokens | MOE_RUNTIME_MAX_KV_TOKENS | (engine's choice) | KV cache tokens over all sequences; a request
starts only when its prompt + max_tokens fits beside the running ones |
| --log-level | MOE_RUNTIME_LOG_LEVEL | info | `debug`, `info`, `warning`, `error` |

Lifecycle: `/health` answers as soon as the port is open; `/ready` answers 503 while the weights load, 200
once they have, and 503 again after SIGTERM or SIGINT. Then new generation requests get 503, the ones already
accepted finish, and the process exits 0. A second signal exits without waiting.

Torch's own OMP_NUM_THREADS applies too: set it to the CPUs the pod may use. Torch otherwise starts a thread
per host core, and spinning threads that outnumber the CPUs slowed a decode step 30x on a shared host.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass

import uvicorn

from moe_runtime.generation import Limits
from moe_runtime.metrics import RuntimeMetrics
from moe_runtime.scheduler import Policy, SchedulerConfig
from moe_runtime.server import Phase, ServingState, create_app
from moe_runtime.worker import EngineWorker

log = logging.getLogger("moe_runtime.serve")

DRAIN_POLL_S = 0.05


@dataclass(frozen=True)
class _Option:
    flag: str
    env: str
    type: type | object = str
    default: object = None
    help: str = ""
    choices: tuple[str, ...] | None = None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


OPTIONS = (
    _Option("--model", "MOE_RUNTIME_MODEL", help="checkpoint directory, or s3://bucket/prefix"),
    _Option("--download-dir", "MOE_RUNTIME_DOWNLOAD_DIR", help="cache for s3:// checkpoints"),
    _Option("--served-model-name", "MOE_RUNTIME_SERVED_MODEL_NAME", help="model name the API answers to"),
    _Option("--host", "MOE_RUNTIME_HOST", default="0.0.0.0"),
    _Option("--port", "MOE_RUNTIME_PORT", _non_negative_int, 8000),
    _Option("--max-queue", "MOE_RUNTIME_MAX_QUEUE", _positive_int, 256, "waiting requests before 429"),
    _Option("--max-batch-seqs", "MOE_RUNTIME_MAX_BATCH_SEQS", _positive_int, 32, "sequences running at once"),
    _Option(
        "--max-batch-tokens", "MOE_RUNTIME_MAX_BATCH_TOKENS", _positive_int, 512, "tokens per engine step"
    ),
    _Option(
        "--prefill-chunk",
        "MOE_RUNTIME_PREFILL_CHUNK",
        _positive_int,
        256,
        "prompt tokens per sequence per step",
    ),
    _Option(
        "--schedule-policy",
        "MOE_RUNTIME_SCHEDULE_POLICY",
        default="length_aware",
        choices=tuple(p.value for p in Policy),
    ),
    _Option("--aging-tokens-per-s", "MOE_RUNTIME_AGING_TOKENS_PER_S", _non_negative_float, 64.0),
    _Option(
        "--request-timeout", "MOE_RUNTIME_REQUEST_TIMEOUT", _non_negative_float, 600.0, "seconds; 0: none"
    ),
    _Option("--default-max-tokens", "MOE_RUNTIME_DEFAULT_MAX_TOKENS", _positive_int, 256),
    _Option("--window", "MOE_RUNTIME_WINDOW", _positive_int, help="sliding attention window in tokens"),
    _Option("--global-tokens", "MOE_RUNTIME_GLOBAL_TOKENS", _non_negative_int, 0),
    _Option("--quantize", "MOE_RUNTIME_QUANTIZE", default="none", choices=("none", "int8")),
    _Option("--dtype", "MOE_RUNTIME_DTYPE", choices=("float32", "bfloat16", "float16")),
    _Option("--device", "MOE_RUNTIME_DEVICE"),
    _Option(
        "--max-kv-tokens", "MOE_RUNTIME_MAX_KV_TOKENS", _positive_int, help="KV cache capacity in tokens"
    ),
    _Option(
        "--log-level", "MOE_RUNTIME_LOG_LEVEL", default="info", choices=("debug", "info", "warning", "error")
    ),
)


def parse_args(argv: list[str], environ: Mapping[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m moe_runtime serve", description="Serve a checkpoint over HTTP"
    )
    for option in OPTIONS:
        # argparse runs `type` over string defaults, so values from the environment are checked like flags.
        default = environ.get(option.env) or option.default
        parser.add_argument(
            option.flag,
            type=option.type,
            default=default,
            choices=option.choices,
            help=f"{option.help} [env {option.env}]".strip(),
        )
    args = parser.parse_args(argv)
    for option in OPTIONS:  # argparse checks choices on the command line only, not on defaults
        value = getattr(args, option.flag[2:].replace("-", "_"))
        if option.choices and value is not None and value not in option.choices:
            parser.error(f"{option.env}={value!r}: choose from {', '.join(option.choices)}")
    if not args.model:
        parser.error("--model (or MOE_RUNTIME_MODEL) is required")
    if args.max_batch_tokens < args.max_batch_seqs:
        parser.error("--max-batch-tokens must be at least --max-batch-seqs")
    return args


def kv_tokens_per_sequence(engine) -> int | None:
    """The most KV cache one sequence can hold: window + global tokens when every layer is windowed."""
    windows = engine.layer_windows
    return None if None in windows else max(windows) + engine.global_tokens


def scheduler_config(args: argparse.Namespace, engine) -> SchedulerConfig:
    return SchedulerConfig(
        max_queue=args.max_queue,
        max_running=args.max_batch_seqs,
        token_budget=args.max_batch_tokens,
        prefill_chunk=args.prefill_chunk,
        policy=Policy(args.schedule_policy),
        aging_tokens_per_s=args.aging_tokens_per_s,
        kv_capacity_tokens=engine.max_kv_tokens,
        kv_tokens_per_sequence=kv_tokens_per_sequence(engine),
    )


def limits(args: argparse.Namespace, engine) -> Limits:
    return Limits(
        max_context=engine.max_context,
        vocab_size=engine.config.vocab_size,
        default_max_tokens=args.default_max_tokens,
        kv_capacity_tokens=engine.max_kv_tokens,
        kv_tokens_per_sequence=kv_tokens_per_sequence(engine),
    )


def load_engine(args: argparse.Namespace):
    from moe_runtime.download import local_model_dir
    from moe_runtime.engine import Engine
    from moe_runtime.sampling import SamplingParams

    engine = Engine.load(
        local_model_dir(args.model, args.download_dir),
        device=args.device,
        dtype=args.dtype,
        quantize=None if args.quantize == "none" else args.quantize,
        window=args.window,
        global_tokens=args.global_tokens,
        max_kv_tokens=args.max_kv_tokens,
    )
    # The first forward passes pay for lazy initialisation (seconds on CPU): pay it before /ready says 200.
    engine.generate([[0, 0]], SamplingParams(max_tokens=2))
    engine.take_expert_token_counts()
    return engine


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
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._exit_when_idle()))

    async def _exit_when_idle(self) -> None:
        while self._state.worker is not None and not self._state.worker.idle:
            await asyncio.sleep(DRAIN_POLL_S)
        self.should_exit = True

    async def run_with_engine(self, args: argparse.Namespace) -> int:
        self._loop = asyncio.get_running_loop()
        serving = asyncio.create_task(self.serve())
        loaded = asyncio.ensure_future(asyncio.to_thread(load_engine, args))
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
        worker = EngineWorker(engine, scheduler_config(args, engine), self._state.metrics, self._loop)
        worker.start()
        self._state.activate(worker, args.served_model_name or engine.model_name, limits(args, engine))
        log.info("serving %s on %s:%s", self._state.model_name, args.host, args.port)
        try:
            await serving
        finally:
            worker.stop()
        return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv, os.environ)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    state = ServingState(RuntimeMetrics(), request_timeout_s=args.request_timeout or None)
    config = uvicorn.Config(
        create_app(state), host=args.host, port=args.port, log_level=args.log_level, access_log=False
    )
    server = _DrainingServer(config, state)
    return asyncio.run(server.run_with_engine(args))
