"""SGLang's command line from the spec: `python3 -m sglang.launch_server <flags>`, the command SGLang's own docs
give its image (lmsysorg/sglang). Pure. Flags as spelt by SGLang 0.5.23 (`launch_server --help`), read from its
documentation and source: SGLang's CPU engine needs AMX or AVX-512, so no live SGLang server checks them here.

Differences from vLLM's rendering (vllm_args.py): SGLang listens on 127.0.0.1:30000 and exports no metrics
unless told (--host, --port, --enable-metrics); its tensor-parallel size counts the GPUs of one data-parallel
rank as vLLM's does, and its expert parallelism is a size (--ep-size, here the tensor-parallel size); the KV
cache is sized by a fraction of memory (--mem-fraction-static) or in tokens (--max-total-tokens), never in
bytes (the CRD refuses kvCache.memoryBytes); LoRA needs the target modules up front when it starts without
adapters (--lora-target-modules all).
"""

from __future__ import annotations

from moe_operator.decisions.engine_args import engine_model_path, parallel_sizes, served_model_name
from moe_operator.decisions.runtime_config import RUNTIME_PORT
from moe_operator.decisions.spec import ModelDeploymentSpec

COMMAND = ["python3", "-m", "sglang.launch_server"]


def sglang_args(spec: ModelDeploymentSpec, md_name: str) -> list[str]:
    runtime = spec.runtime
    batching = runtime.batching
    sizes = parallel_sizes(spec)
    args = [
        "--model-path", engine_model_path(spec),
        "--served-model-name", served_model_name(spec, md_name),
        "--host", "0.0.0.0",
        "--port", str(RUNTIME_PORT),
        "--enable-metrics",
        "--max-running-requests", str(batching.max_batch_sequences),
        "--max-queued-requests", str(batching.max_queue),
        "--chunked-prefill-size", str(batching.prefill_chunk),
        "--tp-size", str(sizes.tensor),
    ]  # fmt: skip
    if sizes.data > 1:
        args += ["--dp-size", str(sizes.data)]
    if sizes.expert:
        args += ["--ep-size", str(sizes.tensor)]
    if batching.token_budget is not None:
        args += ["--max-prefill-tokens", str(batching.token_budget)]
    if runtime.max_model_len is not None:
        args += ["--context-length", str(runtime.max_model_len)]
    if runtime.dtype != "auto":
        args += ["--dtype", runtime.dtype]
    if runtime.kv_cache.max_tokens is not None:
        args += ["--max-total-tokens", str(runtime.kv_cache.max_tokens)]
    else:
        args += ["--mem-fraction-static", str(runtime.kv_cache.gpu_memory_utilization)]
    if spec.adapters:
        args += ["--enable-lora", "--max-loras-per-batch", str(runtime.max_loras)]
        args += ["--max-lora-rank", str(runtime.max_lora_rank), "--lora-target-modules", "all"]
    return [*args, *runtime.args]
