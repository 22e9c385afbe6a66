"""What every benchmark's JSON says about the machine it ran on: CPU model, cores, the ISA flags that decide
which kernels are fast (AVX-512 bf16/VNNI, AMX), and how busy the machine was (these machines are shared)."""

from __future__ import annotations

import json
import os
from pathlib import Path

ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")


def describe() -> dict:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    lines = text.splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "isa_flags": [flag for flag in ISA_FLAGS if flag in flags],
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }


def print_result(result: dict, indent: int | None = 2) -> None:
    """The benchmark's one JSON object on stdout, with the machine it ran on."""
    print(json.dumps({**result, "machine": describe()}, indent=indent))
