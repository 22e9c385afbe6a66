"""vLLM's command line from the spec: `vllm serve <model> <flags>` (the vllm/vllm-openai image's entrypoint is
`vllm serve`). Pure. Flags as spelt by vLLM 0.32.0 (`vllm serve --help=all`).

Spec -> flag, where the meaning differs from our runtime's the docs say so (docs/engines.md):
- batching: maxBatchSequences -> --max-num-seqs; tokenBudget -> --max-num-batched-tokens; prefillChunk ->
  --long-prefill-token-threshold (the longest slice of one prompt per step); maxQueue -> --max-num-queued-reqs,
  which counts running requests too (so maxQueue plus what the data-parallel ranks run) and refuses with 503;
  requestTimeoutSeconds -> --shutdown-timeout (vLLM has no per-request timeout: only the drain is bounded).
- kvCache: memoryBytes -> --kv-cache-memory-bytes, else gpuMemoryUtilization -> --gpu-memory-utilization.
- quantization int8 -> int8_per_channel_weight_only (at load, no calibration; MoE experts, attention stays in
  dtype); dtype auto -> vLLM's own choice (no flag).
- resources.gpu / parallelism -> --tensor-parallel-size, --data-parallel-size, --enable-expert-parallel.
- adapters -> --enable-lora with --max-loras/--max-lora-rank; the adapters themselves are loaded at run time
  through the API (VLLM_ALLOW_RUNTIME_LORA_UPDATING, engine_pod.py), never on this command line, so that
  changing the list restarts no pod.
The port is vLLM's default, 8000 (RUNTIME_PORT). spec.runtime.args come last: vLLM's parser lets a later flag
win, so a user can override any of these.
"""

from __future__ import annotations

from moe_operator.decisions.engine_args import engine_model_path, parallel_sizes, served_model_name
from moe_operator.decisions.spec import ModelDeploymentSpec

QUANTIZATION = {"int8": "int8_per_channel_weight_only"}


def vllm_args(spec: ModelDeploymentSpec, md_name: str) -> list[str]:
    runtime = spec.runtime
    batching = runtime.batching
    sizes = parallel_sizes(spec)
    args = [
        engine_model_path(spec),
        "--served-model-name", served_model_name(spec, md_name),
        "--max-num-seqs", str(batching.max_batch_sequences),
        "--long-prefill-token-threshold", str(batching.prefill_chunk),
        "--max-num-queued-reqs", str(batching.max_queue + batching.max_batch_sequences * sizes.data),
        "--shutdown-timeout", str(batching.request_timeout_seconds),
        "--tensor-parallel-size", str(sizes.tensor),
    ]  # fmt: skip
    if sizes.data > 1:
        args += ["--data-parallel-size", str(sizes.data)]
    if sizes.expert:
        args.append("--enable-expert-parallel")
    if batching.token_budget is not None:
        args += ["--max-num-batched-tokens", str(batching.token_budget)]
    if runtime.max_model_len is not None:
        args += ["--max-model-len", str(runtime.max_model_len)]
    if runtime.dtype != "auto":
        args += ["--dtype", runtime.dtype]
    if runtime.quantization != "none":
        args += ["--quantization", QUANTIZATION[runtime.quantization]]
    if runtime.kv_cache.memory_bytes is not None:
        args += ["--kv-cache-memory-bytes", str(runtime.kv_cache.memory_bytes)]
    else:
        args += ["--gpu-memory-utilization", str(runtime.kv_cache.gpu_memory_utilization)]
    if spec.adapters:
        args += ["--enable-lora", "--max-loras", str(runtime.max_loras)]
        args += ["--max-lora-rank", str(runtime.max_lora_rank)]
    return [*args, *runtime.args]
