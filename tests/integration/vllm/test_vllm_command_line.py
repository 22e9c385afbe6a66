"""The command lines the operator renders for vLLM, read by vLLM's own parser (its `vllm serve` arguments and
engine arguments, in the environment `make vllm` installs): every flag exists in vLLM 0.32 and lands where the
spec says. No server starts; the unit tests (tests/unit/operator/decisions/test_engine_render.py) check the
rendering itself, this checks it against vLLM.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from moe_operator.decisions.spec import parse_spec
from moe_operator.decisions.vllm_args import vllm_args
from tests.unit.operator.samples import spec

pytestmark = pytest.mark.integration

PARSE = r"""
import json, sys
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.utils.argparse_utils import FlexibleArgumentParser

FIELDS = ("model", "served_model_name", "tensor_parallel_size", "data_parallel_size", "enable_expert_parallel",
          "max_num_seqs", "max_num_batched_tokens", "long_prefill_token_threshold", "max_num_queued_reqs",
          "shutdown_timeout", "max_model_len", "dtype", "quantization", "kv_cache_memory_bytes",
          "gpu_memory_utilization", "enable_lora", "max_loras", "max_lora_rank", "enforce_eager")
out = {}
for name, argv in json.load(sys.stdin).items():
    args = make_arg_parser(FlexibleArgumentParser(prog="vllm serve")).parse_args(argv)
    args.model = args.model_tag
    validate_parsed_serve_args(args)
    engine = AsyncEngineArgs.from_cli_args(args)
    out[name] = {field: getattr(engine, field) for field in FIELDS}
print(json.dumps(out, default=str))
"""

ADAPTER = [{"name": "sql", "source": {"pvc": {"claimName": "weights", "path": "loras/sql"}}}]
CASES = {
    "defaults": spec(),
    "tp8-ep": spec(runtime__resources={"gpu": 8}, runtime__parallelism={"expertParallel": True}),
    "tp4-dp2-ep": spec(runtime__resources={"gpu": 8}, runtime__parallelism={"dataParallelSize": 2, "expertParallel": True}),
    "everything": spec(
        model__name="qwen3-235b-a22b",
        runtime__batching={"maxQueue": 64, "maxBatchSequences": 256, "tokenBudget": 8192, "prefillChunk": 2048,
                           "requestTimeoutSeconds": 120},
        runtime__maxModelLen=32768, runtime__dtype="bfloat16", runtime__quantization="int8",
        runtime__kvCache={"memoryBytes": 16 * 2**30}, runtime__maxLoras=4, runtime__maxLoraRank=64,
        runtime__args=["--enforce-eager"], adapters=ADAPTER,
    ),
}  # fmt: skip


def test_vllms_parser_reads_the_rendered_command_lines_as_the_spec_means_them(vllm_env, tmp_path):
    argv = {name: vllm_args(parse_spec({**raw, "runtime": {**raw["runtime"], "engine": "vllm"}}), "qwen")
            for name, raw in CASES.items()}  # fmt: skip
    # vLLM's engine arguments look the model folder up (a path that is not there would be a hub repo id): the
    # pod's path, /models/qwen3, stands here for a folder that exists
    assert {args[0] for args in argv.values()} == {"/models/qwen3"}
    argv = {name: [str(tmp_path), *args[1:]] for name, args in argv.items()}
    parsed = subprocess.run(
        [str(vllm_env / "bin" / "moe-vllm"), "python3", "-c", PARSE],
        input=json.dumps(argv), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert parsed.returncode == 0, parsed.stderr[-5000:]
    engine = json.loads(parsed.stdout.strip().splitlines()[-1])

    defaults = engine["defaults"]
    assert (defaults["model"], defaults["served_model_name"]) == (str(tmp_path), ["qwen"])
    assert (defaults["tensor_parallel_size"], defaults["data_parallel_size"]) == (1, 1)
    assert (defaults["max_num_seqs"], defaults["long_prefill_token_threshold"]) == (32, 512)
    assert (defaults["max_num_queued_reqs"], defaults["shutdown_timeout"]) == (256 + 32, 300)
    assert defaults["gpu_memory_utilization"] == 0.9 and not defaults["enable_lora"]
    assert defaults["enable_expert_parallel"] is False and defaults["quantization"] is None

    assert (engine["tp8-ep"]["tensor_parallel_size"], engine["tp8-ep"]["enable_expert_parallel"]) == (8, True)
    split = engine["tp4-dp2-ep"]
    assert (split["tensor_parallel_size"], split["data_parallel_size"], split["enable_expert_parallel"]) == (
        4,
        2,
        True,
    )

    every = engine["everything"]
    assert every["served_model_name"] == ["qwen3-235b-a22b"]
    assert (
        every["max_num_seqs"],
        every["max_num_batched_tokens"],
        every["long_prefill_token_threshold"],
    ) == (
        256,
        8192,
        2048,
    )
    assert (every["max_num_queued_reqs"], every["shutdown_timeout"]) == (64 + 256, 120)
    assert (every["max_model_len"], every["dtype"]) == (32768, "bfloat16")
    assert every["quantization"] == "int8_per_channel_weight_only"
    assert every["kv_cache_memory_bytes"] == 16 * 2**30
    assert (every["enable_lora"], every["max_loras"], every["max_lora_rank"]) == (True, 4, 64)
    assert every["enforce_eager"] is True, "spec.runtime.args reach vLLM"
