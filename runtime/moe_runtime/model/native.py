"""The runtime's native CPU kernels (native.c): decode attention over the paged cache, RMSNorm and rotary
embeddings, and one token's routed experts, each one call where torch takes many small ones.

On the CPU a decode step is mostly per-operation overhead and small GEMMs: torch's decode attention costs
about ten calls per sequence and layer (at 16 sequences half of a step), an RMSNorm eight. The kernels read
each key and value once for all query heads that share it, and round where torch's operations round.
Built on first use with the C compiler (`CC`, else cc) for this CPU, cached under MOEDEPLOY_CACHE (else
~/.cache/moedeploy)/kernels by a hash of their source, flags and the CPU's flags, and loaded with ctypes, which
lets other threads run while a kernel works. Where they cannot be built (no compiler), or with
MOE_RUNTIME_NATIVE_KERNELS=0, the model keeps torch's operations: the results agree to rounding.
Float32 and bfloat16 on the CPU with one intra-op thread (OMP_NUM_THREADS=1: what a pod given one CPU runs);
other dtypes, more threads and GPUs use torch.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native.c")
FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-fPIC", "-shared")
_SUFFIXES = {torch.float32: "float32", torch.bfloat16: "bfloat16"}


@dataclass(frozen=True)
class DecodeBatch:
    """A step's decode items for one layer window: item i is query row rows[i] against the slots in
    runs[run_offsets[i]:run_offsets[i + 1]] ((first slot, count) pairs, in position order)."""

    rows: torch.Tensor  # int64 [items]
    run_offsets: torch.Tensor  # int64 [items + 1]
    runs: torch.Tensor  # int64 [runs, 2]
    max_keys: int  # the most keys one item reads


def decode_batch(reads: list[tuple[int, tuple[tuple[int, int], ...]]]) -> DecodeBatch:
    """From (row, runs) per decode item."""
    offsets, flat = [0], []
    max_keys = 0
    for _, runs in reads:
        offsets.append(offsets[-1] + len(runs))
        max_keys = max(max_keys, sum(count for _, count in runs))
        for start, count in runs:
            flat += (start, count)
    return DecodeBatch(
        torch.tensor([row for row, _ in reads], dtype=torch.int64),
        torch.tensor(offsets, dtype=torch.int64),
        torch.tensor(flat, dtype=torch.int64),
        max_keys,
    )


def applies(tensor: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether the kernels serve these tensors here: on the CPU, of one dtype they take, with torch on one
    intra-op thread. The kernels run on the calling thread; with more, torch's operations spread over them
    (a large prefill's norms, a big expert's GEMVs) and are kept, as nothing else was measured."""
    return (
        tensor.device.type == "cpu"
        and tensor.dtype in _SUFFIXES
        and all(other.device.type == "cpu" and other.dtype == tensor.dtype for other in others)
        and torch.get_num_threads() == 1
        and _library() is not None
    )


def attend_decodes(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    batch: DecodeBatch,
    scale: float,
    out: torch.Tensor,
) -> None:
    """q [T, heads, d] (rows of a step), keys/values [kv_heads, slots, d] contiguous -> writes the decode rows
    of `out` [T, heads, d] (contiguous)."""
    if q.stride(2) != 1 or q.stride(1) != q.shape[2]:
        q = q.contiguous()
    kv_heads, num_slots, head_dim = keys.shape
    status = _function("decode_attention", keys.dtype)(
        q.data_ptr(), q.stride(0), keys.data_ptr(), values.data_ptr(), num_slots, kv_heads,
        q.shape[1] // kv_heads, head_dim, ctypes.c_float(scale), batch.rows.shape[0], batch.rows.data_ptr(),
        batch.run_offsets.data_ptr(), batch.runs.data_ptr(), batch.max_keys, out.data_ptr(),
    )  # fmt: skip
    if status != 0:
        raise MemoryError("decode attention could not allocate its scratch")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., n] (rows contiguous) -> RMSNorm(x) * weight [n], as decoder.rms_norm computes it."""
    n = x.shape[-1]
    x, weight = x.contiguous(), weight.contiguous()
    out = torch.empty(x.shape, dtype=x.dtype)
    rows = x.numel() // n
    _function("norm_rope", x.dtype)(
        x.data_ptr(), rows, 1, n, 0, n, weight.data_ptr(), 1, ctypes.c_float(eps), None, None, out.data_ptr()
    )
    return out


def norm_rope(
    x: torch.Tensor, weight: torch.Tensor | None, eps: float, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """x [T, heads, d] (a view: rows may be strided, each head row contiguous) -> rotary(RMSNorm(x) * weight)
    with weight [heads, d] (None: rotary only) and cos/sin [T, 1, d] contiguous, as decoder.apply_rope."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    cos, sin = cos.contiguous(), sin.contiguous()
    weight = None if weight is None else weight.contiguous()
    outer, inner, n = x.shape
    out = torch.empty(x.shape, dtype=x.dtype)
    _function("norm_rope", x.dtype)(
        x.data_ptr(), outer, inner, x.stride(0), x.stride(1), n,
        None if weight is None else weight.data_ptr(), 1 if weight is None else weight.shape[0],
        ctypes.c_float(eps), cos.data_ptr(), sin.data_ptr(), out.data_ptr(),
    )  # fmt: skip
    return out


def experts_one_token(
    x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """x [1, D] through experts [k] (int64) weighted by weights [k] (x's dtype), gate_up [E, 2I, D] and down
    [E, D, I] contiguous -> [1, D], as moe._one_token computes it."""
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    x, experts, weights = x.contiguous(), experts.contiguous(), weights.contiguous()
    _function("experts_one_token", x.dtype)(
        x.data_ptr(), gate_up.data_ptr(), down.data_ptr(), x.shape[-1], down.shape[-1], experts.numel(),
        experts.data_ptr(), weights.data_ptr(), out.data_ptr(),
    )  # fmt: skip
    return out


def _function(name: str, dtype: torch.dtype):
    return getattr(_library(), f"{name}_{_SUFFIXES[dtype]}")


_POINTER, _I64, _F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
_SIGNATURES = {
    "decode_attention": (ctypes.c_int, [_POINTER, _I64, _POINTER, _POINTER, _I64, _I64, _I64, _I64, _F32, _I64,
                                        _POINTER, _POINTER, _POINTER, _I64, _POINTER]),
    "norm_rope": (None, [_POINTER, _I64, _I64, _I64, _I64, _I64, _POINTER, _I64, _F32, _POINTER, _POINTER,
                         _POINTER]),
    "experts_one_token": (None, [_POINTER, _POINTER, _POINTER, _I64, _I64, _I64, _POINTER, _POINTER, _POINTER]),
}  # fmt: skip


@functools.cache
def _library() -> ctypes.CDLL | None:
    if os.environ.get("MOE_RUNTIME_NATIVE_KERNELS", "1") == "0":
        return None
    try:
        library = ctypes.CDLL(str(_build()))
    except (OSError, subprocess.SubprocessError) as error:
        compiler_said = (getattr(error, "stderr", None) or b"").decode(errors="replace")[-2000:]
        log.warning(
            "native kernels unavailable, the model runs on torch's operations: %s %s", error, compiler_said
        )
        return None
    for name, (result, arguments) in _SIGNATURES.items():
        for suffix in _SUFFIXES.values():
            function = getattr(library, f"{name}_{suffix}")
            function.restype, function.argtypes = result, arguments
    return library


def _build() -> Path:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise OSError("no C compiler (set CC)")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join((compiler, *FLAGS, _cpu_flags())).encode()).hexdigest()[:16]
    target = _cache_dir() / f"native-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        subprocess.run(
            [compiler, *FLAGS, "-o", str(built), str(SOURCE), "-lm"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        os.replace(built, target)  # atomic: servers starting together may build it at once
    return target


def _cache_dir() -> Path:
    root = os.environ.get("MOEDEPLOY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "moedeploy"
    )
    path = Path(root) / "kernels"
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"moedeploy-kernels-{os.getuid()}"


def _cpu_flags() -> str:
    """What -march=native depends on: a kernel built for one CPU may not run on another."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()
