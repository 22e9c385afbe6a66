"""How many tokens of KV cache the server admits requests against, sized from the memory there is.

- `--max-kv-tokens`: taken as it is (an explicit override).
- `--kv-cache-memory-bytes` (vLLM's name and meaning): that many bytes of cache.
- CUDA: vLLM's `--gpu-memory-utilization` rule. The process may use that fraction of the device's memory;
  what is left of it after the weights, everything else already on the device, and the activations of the
  largest step (measured by running one) is the cache.
- CPU: half the memory available after loading (MemAvailable, or the container's memory limit less its
  usage when that is lower), at most 4 GiB: vLLM's CPU backend reserves 4 GiB by default, and the other half
  stays free for activations, the tokenizer and the allocator's slack. A cache sequence grows as it fills, so
  the budget is an upper bound on what is used, not memory taken at start.

A budget that cannot hold one sequence of the longest context is refused at start with the settings to change,
as vLLM does.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CPU_CACHE_CAP_BYTES = 4 * 2**30
CPU_AVAILABLE_FRACTION = 0.5


class KvBudgetError(ValueError):
    """The memory left cannot hold even one sequence of the longest context."""


def cuda_cache_bytes(total: int, used: int, activation_peak: int, utilization: float) -> int:
    """`total * utilization` less what is in use (weights, CUDA context, other processes) and less the
    activations of the largest step."""
    return int(total * utilization) - used - activation_peak


def cpu_cache_bytes(available: int) -> int:
    return min(CPU_CACHE_CAP_BYTES, int(available * CPU_AVAILABLE_FRACTION))


def capacity_tokens(
    engine, *, max_kv_tokens: int | None, kv_cache_memory_bytes: int | None, gpu_memory_utilization: float,
    step_tokens: int, tokens_per_sequence: int | None,
) -> int:  # fmt: skip
    """The KV cache capacity in tokens for `engine`; raises `KvBudgetError` when one longest sequence
    (`max_context`, or `tokens_per_sequence` for windowed attention) does not fit."""
    if max_kv_tokens is not None:
        return max_kv_tokens
    if kv_cache_memory_bytes is not None:
        budget, source = kv_cache_memory_bytes, "--kv-cache-memory-bytes"
    elif engine.device.type == "cuda":
        free, total = torch.cuda.mem_get_info(engine.device)
        peak = activation_peak_bytes(engine, min(step_tokens, engine.max_context))
        budget = cuda_cache_bytes(total, total - free, peak, gpu_memory_utilization)
        source = f"--gpu-memory-utilization {gpu_memory_utilization} of {total} bytes"
    else:
        budget, source = cpu_cache_bytes(available_cpu_memory()), "the memory available (CPU)"
    tokens = max(0, budget) // engine.kv_bytes_per_token()
    longest = (
        engine.max_context if tokens_per_sequence is None else min(engine.max_context, tokens_per_sequence)
    )
    if tokens < longest:
        raise KvBudgetError(
            f"the KV cache from {source} holds {tokens} tokens, fewer than one sequence of {longest}: raise "
            "--gpu-memory-utilization or --kv-cache-memory-bytes, or lower --max-model-len"
        )
    log.info("KV cache: %d tokens (%d bytes, from %s)", tokens, budget, source)
    return tokens


def activation_peak_bytes(engine, tokens: int) -> int:
    """Device memory one step of `tokens` prompt tokens takes beyond what is allocated already."""
    device = engine.device
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    sequence = engine.new_sequence()
    try:
        engine.forward([(sequence, [0] * tokens)])
    finally:
        engine.release(sequence)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def available_cpu_memory(proc: Path = Path("/proc"), cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """Bytes this process could still allocate: MemAvailable, or less when a cgroup (v2 or v1) limits it."""
    available = _meminfo_available(proc / "meminfo")
    for limit_file, usage_file in (
        (cgroup / "memory.max", cgroup / "memory.current"),
        (cgroup / "memory" / "memory.limit_in_bytes", cgroup / "memory" / "memory.usage_in_bytes"),
    ):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 2**60:
            available = min(available, max(0, limit - usage))
    return available


def _meminfo_available(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no MemAvailable in {path}")


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
