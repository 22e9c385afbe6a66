"""The options of `serve`: each a flag (vLLM's name where vLLM has the concept, older names kept as aliases)
and a MOE_RUNTIME_* environment variable; the table in `moe_runtime.serve.command`'s docstring lists them all."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from moe_runtime.adapters.sources import SourceError, parse_lora_module, parse_lora_modules_variable
from moe_runtime.api.limits import RequestLimits
from moe_runtime.engine.scheduler import Policy
from moe_runtime.faults import FaultError, FaultSpec
from moe_runtime.metrics import ExpertMetrics


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]
    env: str
    type: type | object = str
    default: object = None
    help: str = ""
    choices: tuple[str, ...] | None = None
    default_text: str | None = None  # what --help says when `default` is None
    dest_name: str | None = None  # the attribute, when not the first flag's name (kept for older callers)
    # repeatable, each flag taking one value or more (a list); the variable's whole value goes to `parse_all`
    parse_all: Callable[[str], list] | None = None

    @property
    def dest(self) -> str:
        return self.dest_name or self.flags[0].removeprefix("--").replace("-", "_")

    def shown_default(self) -> str:
        return self.default_text if self.default is None else str(self.default)


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


def _lora_module(text: str):
    try:
        return parse_lora_module(text)
    except SourceError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _faults(text: str) -> FaultSpec:
    try:
        return FaultSpec.parse(text)
    except FaultError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


LIMITS = RequestLimits()
ENGINE = "(engine's choice)"

OPTIONS = (
    Option(("--model",), "MOE_RUNTIME_MODEL", help="checkpoint directory, or s3://bucket/prefix",
           default_text="(required)"),
    Option(("--download-dir",), "MOE_RUNTIME_DOWNLOAD_DIR", help="cache for s3:// checkpoints",
           default_text="$HOME/.cache/moedeploy/models, else /tmp/moedeploy/models"),
    Option(("--served-model-name",), "MOE_RUNTIME_SERVED_MODEL_NAME", help="`model` the API answers to",
           default_text="the checkpoint's name"),
    Option(("--host",), "MOE_RUNTIME_HOST", default="0.0.0.0", help="listen address"),
    Option(("--port",), "MOE_RUNTIME_PORT", _non_negative_int, 8000, "listen port"),
    Option(("--max-queue",), "MOE_RUNTIME_MAX_QUEUE", _positive_int, 256, "waiting requests before 429"),
    Option(("--max-num-seqs", "--max-batch-seqs"), "MOE_RUNTIME_MAX_BATCH_SEQS", _positive_int, 32,
           "sequences running at once (1 = no batching)", dest_name="max_batch_seqs"),
    Option(("--max-num-batched-tokens", "--max-batch-tokens"), "MOE_RUNTIME_MAX_BATCH_TOKENS", _positive_int,
           help="tokens per engine step (decodes + prefill chunks)", dest_name="max_batch_tokens",
           default_text="8192 on CUDA, 512 on CPU"),
    Option(("--prefill-chunk",), "MOE_RUNTIME_PREFILL_CHUNK", _positive_int, 512,
           "most prompt tokens of one sequence per step"),
    Option(("--schedule-policy",), "MOE_RUNTIME_SCHEDULE_POLICY", default="length_aware",
           choices=tuple(p.value for p in Policy), help="prefill order"),
    Option(("--aging-tokens-per-s",), "MOE_RUNTIME_AGING_TOKENS_PER_S", _non_negative_float, 64.0,
           "length_aware: priority a waiting second earns"),
    Option(("--request-timeout",), "MOE_RUNTIME_REQUEST_TIMEOUT", _non_negative_float, 300.0,
           "seconds from arrival to last token (0: none)"),
    Option(("--engine-stall-timeout",), "MOE_RUNTIME_ENGINE_STALL_TIMEOUT", _non_negative_float, 300.0,
           "seconds one engine step may run before /health and /ready answer 503 and the liveness probe "
           "restarts the pod (0: never)"),
    Option(("--default-max-tokens",), "MOE_RUNTIME_DEFAULT_MAX_TOKENS", _positive_int, 256,
           "chat output limit when the request sets none"),
    Option(("--max-model-len",), "MOE_RUNTIME_MAX_MODEL_LEN", _positive_int,
           help="context length (prompt + output), at most the checkpoint's",
           default_text="the checkpoint's max_position_embeddings"),
    Option(("--window",), "MOE_RUNTIME_WINDOW", _positive_int, help="sliding attention window in tokens",
           default_text="the checkpoint's"),
    Option(("--global-tokens",), "MOE_RUNTIME_GLOBAL_TOKENS", _non_negative_int, 0,
           "global (sink) tokens kept besides the window"),
    Option(("--quantize",), "MOE_RUNTIME_QUANTIZE", default="none", choices=("none", "int8"),
           help="weight-only quantisation"),
    Option(("--dtype",), "MOE_RUNTIME_DTYPE", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
           help="auto: bfloat16 on CUDA, float32 on CPU"),
    Option(("--device",), "MOE_RUNTIME_DEVICE", help="`cpu`, `cuda`, `cuda:N`", default_text="cuda when present"),
    Option(("--gpu-memory-utilization",), "MOE_RUNTIME_GPU_MEMORY_UTILIZATION", _fraction, 0.9,
           "CUDA: fraction of the device's memory this process may use; the KV cache gets what the weights "
           "and activations leave of it"),
    Option(("--kv-cache-memory-bytes",), "MOE_RUNTIME_KV_CACHE_MEMORY_BYTES", _positive_int,
           help="KV cache size in bytes (overrides --gpu-memory-utilization)",
           default_text="CUDA: from --gpu-memory-utilization; CPU: half the available memory, at most 4 GiB"),
    Option(("--max-kv-tokens",), "MOE_RUNTIME_MAX_KV_TOKENS", _positive_int,
           help="KV cache tokens over all sequences (overrides the byte sizing); a request starts only when "
           "its prompt + max_tokens fits beside the running ones", default_text="sized from memory"),
    Option(("--max-request-bytes",), "MOE_RUNTIME_MAX_REQUEST_BYTES", _positive_int, LIMITS.max_request_bytes,
           "largest request body (413 above)"),
    Option(("--max-prompt-chars",), "MOE_RUNTIME_MAX_PROMPT_CHARS", _positive_int, LIMITS.max_prompt_chars,
           "longest prompt text, or all messages together, in characters"),
    Option(("--max-messages",), "MOE_RUNTIME_MAX_MESSAGES", _positive_int, LIMITS.max_messages,
           "most messages in a chat request"),
    Option(("--max-stop-strings",), "MOE_RUNTIME_MAX_STOP_STRINGS", _non_negative_int, LIMITS.max_stop_strings,
           "most stop strings in a request"),
    Option(("--max-stop-string-chars",), "MOE_RUNTIME_MAX_STOP_STRING_CHARS", _positive_int,
           LIMITS.max_stop_string_chars, "longest stop string in characters"),
    Option(("--lora-modules",), "MOE_RUNTIME_LORA_MODULES", _lora_module,
           help="LoRA adapters served besides the base model, each NAME=PATH or vLLM's JSON form "
           '{"name": ..., "path": ...}; repeatable, several per flag; the variable takes a JSON list or '
           "whitespace-separated NAME=PATH items", default_text="none", parse_all=parse_lora_modules_variable),
    Option(("--lora-list",), "MOE_RUNTIME_LORA_LIST",
           help="a JSON file listing LoRA adapters as [{\"name\": ..., \"path\": ...}], watched while serving: "
           "added ones load, removed ones unload once their requests finish", default_text="none"),
    Option(("--max-loras",), "MOE_RUNTIME_MAX_LORAS", _positive_int, 4,
           "LoRA adapters in memory at once; beyond it the least recently used idle one is evicted and loaded "
           "again on demand (vLLM's default is 1: each swap costs a load, so a few more are kept here)"),
    Option(("--max-lora-rank",), "MOE_RUNTIME_MAX_LORA_RANK", _positive_int, 16,
           "highest LoRA rank an adapter may have"),
    Option(("--max-logprobs",), "MOE_RUNTIME_MAX_LOGPROBS", _non_negative_int, LIMITS.max_logprobs,
           "most log-probabilities per token a request may ask for (`logprobs`, `top_logprobs`)"),
    Option(("--expert-metrics",), "MOE_RUNTIME_EXPERT_METRICS", default=ExpertMetrics.EXPERT.value,
           choices=tuple(m.value for m in ExpertMetrics), help="expert token counters: off, per expert "
           "(layer=\"all\") or per layer and expert"),
    Option(("--inject-faults",), "MOE_RUNTIME_INJECT_FAULTS", _faults,
           help="faults to have on purpose, to rehearse a rollout: token_delay=S, long_prompt=N:S, hang_every=N:S, "
                "unhealthy_after=N (comma-separated; see moe_runtime.faults)", default_text="none"),
    Option(("--log-level",), "MOE_RUNTIME_LOG_LEVEL", default="info",
           choices=("debug", "info", "warning", "error"), help="least severe level logged"),
    Option(("--log-format",), "MOE_RUNTIME_LOG_FORMAT", default="text", choices=("text", "json"),
           help="json: one object per line"),
)  # fmt: skip


class _HelpFormatter(argparse.HelpFormatter):
    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)  # keep --flag-names whole


def parse_args(argv: list[str], environ: Mapping[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m moe_runtime serve",
        formatter_class=_HelpFormatter,
        description="Serve a checkpoint over HTTP. Every option can also come from its environment variable; "
        "a flag wins over the variable, an empty variable counts as unset.",
    )
    for option in OPTIONS:
        # argparse runs `type` over string defaults, so values from the environment are checked like flags.
        parser.add_argument(
            *option.flags,
            dest=option.dest,
            type=option.type,
            default=None if option.parse_all else environ.get(option.env) or option.default,
            choices=option.choices,
            metavar=None if option.choices else option.flags[0].removeprefix("--").replace("-", "_").upper(),
            help=f"{option.help} (default: {option.shown_default()}) [env {option.env}]".lstrip(),
            **({"action": "extend", "nargs": "+"} if option.parse_all else {}),
        )
    args = parser.parse_args(argv)
    for option in OPTIONS:  # repeatable: the flags, else the variable (a flag wins, as for the others)
        if option.parse_all and getattr(args, option.dest) is None:
            try:
                setattr(args, option.dest, option.parse_all(environ.get(option.env) or ""))
            except SourceError as err:
                parser.error(f"{option.env}: {err}")
    names = [module.name for module in args.lora_modules]
    if repeated := sorted({name for name in names if names.count(name) > 1}):
        parser.error(f"--lora-modules names {', '.join(repeated)} more than once")
    for option in OPTIONS:  # argparse checks choices on the command line only, not on defaults
        value = getattr(args, option.dest)
        if option.choices and value is not None and value not in option.choices:
            parser.error(f"{option.env}={value!r}: choose from {', '.join(option.choices)}")
    if not args.model:
        parser.error("--model (or MOE_RUNTIME_MODEL) is required")
    if args.max_batch_tokens is not None and args.max_batch_tokens < args.max_batch_seqs:
        parser.error("--max-num-batched-tokens must be at least --max-num-seqs")
    return args


def request_limits(args: argparse.Namespace) -> RequestLimits:
    return RequestLimits(
        max_request_bytes=args.max_request_bytes,
        max_prompt_chars=args.max_prompt_chars,
        max_messages=args.max_messages,
        max_stop_strings=args.max_stop_strings,
        max_stop_string_chars=args.max_stop_string_chars,
        max_logprobs=args.max_logprobs,
    )
