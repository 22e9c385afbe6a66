"""A pod's load, read from its /metrics: the Gateway API Inference Extension's model-server names, which our
runtime and vLLM both export. Pure.

Only the lines of the few names wanted are parsed (a scrape every fraction of a second must cost little);
series with labels (vLLM's `model_name`, `engine`) are summed per name, and of `vllm:lora_requests_info`,
whose value is a timestamp, the newest series counts, as the Inference Extension's endpoint picker reads it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_CACHE = "vllm:kv_cache_usage_perc"
LORA_INFO = "vllm:lora_requests_info"
WANTED = (WAITING, RUNNING, KV_CACHE, LORA_INFO)

_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class PodLoad:
    waiting: float = 0.0
    running: float = 0.0
    kv_cache_usage: float = 0.0
    active_adapters: frozenset[str] = frozenset()  # adapters with running or waiting requests
    max_loras: int = 0  # 0: the pod serves no adapters (or does not say)


class NotMetrics(ValueError):
    """The answer holds none of the names a router reads."""


def parse_load(text: str) -> PodLoad:
    totals = dict.fromkeys((WAITING, RUNNING, KV_CACHE), 0.0)
    seen: set[str] = set()
    lora: tuple[float, dict[str, str]] | None = None
    for line in text.split("\n"):  # not splitlines(): label values may hold \x85, \x1c, ...
        if not line.startswith("vllm:"):
            continue
        name, labels, value = _sample(line)
        if name not in WANTED or value is None:
            continue
        seen.add(name)
        if name == LORA_INFO:
            if lora is None or value > lora[0]:
                lora = (value, labels)
        else:
            totals[name] += value
    if not seen:
        raise NotMetrics(f"none of {', '.join(WANTED[:3])} in the answer")
    adapters: frozenset[str] = frozenset()
    max_loras = 0
    if lora is not None:
        labels = lora[1]
        names = f"{labels.get('running_lora_adapters', '')},{labels.get('waiting_lora_adapters', '')}"
        adapters = frozenset(a for a in names.split(",") if a)
        max_loras = int(labels["max_lora"]) if labels.get("max_lora", "").isdigit() else 0
    return PodLoad(totals[WAITING], totals[RUNNING], totals[KV_CACHE], adapters, max_loras)


def _sample(line: str) -> tuple[str, dict[str, str], float | None]:
    """(name, labels, value) of one exposition line; value None when it does not parse."""
    brace = line.find("{")
    space = line.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        name = line[:brace]
        end = line.rfind("}")
        labels = {k: _unescape(v) for k, v in _LABEL.findall(line[brace + 1 : end])}
        rest = line[end + 1 :].split()
    else:
        name, labels, rest = line[:space], {}, line[space + 1 :].split()
    try:
        value = float(rest[0])
    except (IndexError, ValueError):
        return name, labels, None
    return name, labels, value if math.isfinite(value) else None


def _unescape(value: str) -> str:
    return value.replace(r"\"", '"').replace(r"\n", "\n").replace("\\\\", "\\")
