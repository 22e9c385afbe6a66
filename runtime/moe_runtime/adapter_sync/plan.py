"""What the sidecar does next, from the adapter list and what the engine says it has loaded. Pure.

The engine's own list (/v1/models: each adapter with its path) is the truth, read every round: an engine that
restarted lost its adapters and gets them again; an adapter someone else loaded and the list does not hold is
unloaded (the pod's adapters are the ModelDeployment's). A load that failed is tried again after a back-off
that doubles (files may arrive later on a volume), at once when its entry in the list changes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from moe_runtime.adapters.sources import AdapterSource

RETRY_INITIAL_S = 5.0
RETRY_CAP_S = 300.0


@dataclass(frozen=True)
class Failure:
    path: str
    reason: str  # a bounded word (adapters/reasons.py), the metric's label
    message: str
    attempts: int
    retry_at: float


@dataclass(frozen=True)
class Load:
    name: str
    path: str
    replace: bool  # loaded from another path: load it again in place


@dataclass(frozen=True)
class Actions:
    unloads: tuple[str, ...] = ()
    loads: tuple[Load, ...] = ()


def plan(
    listed: Sequence[AdapterSource], loaded: Mapping[str, str], failures: Mapping[str, Failure], now: float
) -> Actions:
    """Unload what is not listed, then load what is listed and not loaded from its path, unless it failed from
    that path and its retry is not due."""
    names = {a.name for a in listed}
    unloads = tuple(sorted(name for name in loaded if name not in names))
    loads = []
    for adapter in listed:
        if loaded.get(adapter.name) == adapter.path:
            continue
        failure = failures.get(adapter.name)
        if failure is not None and failure.path == adapter.path and now < failure.retry_at:
            continue
        loads.append(Load(adapter.name, adapter.path, replace=adapter.name in loaded))
    return Actions(unloads, tuple(loads))


def failed(previous: Failure | None, path: str, reason: str, message: str, now: float) -> Failure:
    attempts = previous.attempts + 1 if previous is not None and previous.path == path else 1
    delay = min(RETRY_CAP_S, RETRY_INITIAL_S * 2 ** (attempts - 1))
    return Failure(path, reason, message, attempts, now + delay)


@dataclass(frozen=True)
class AdapterState:
    """One listed adapter as the metrics and /ready show it."""

    loaded: bool
    error: str | None  # the reason of the failed load from its current path, while not loaded


@dataclass(frozen=True)
class Snapshot:
    states: Mapping[str, AdapterState] = field(default_factory=dict)
    settled: bool = False  # the engine answered and every listed adapter is loaded or failed from its path


def snapshot(
    listed: Sequence[AdapterSource] | None,
    loaded: Mapping[str, str] | None,
    failures: Mapping[str, Failure],
) -> Snapshot:
    """`listed` None: the list was never read; `loaded` None: the engine did not answer."""
    if listed is None or loaded is None:
        return Snapshot()
    states = {}
    for adapter in listed:
        failure = failures.get(adapter.name)
        is_loaded = loaded.get(adapter.name) == adapter.path
        error = (
            failure.reason if failure is not None and failure.path == adapter.path and not is_loaded else None
        )
        states[adapter.name] = AdapterState(is_loaded, error)
    return Snapshot(states, all(s.loaded or s.error for s in states.values()))


# (reason, pattern of the engine's error message), first match wins. vLLM 0.32 and SGLang 0.5 messages.
_RULES = (
    ("rank_above_max", r"greater than max_lora_rank|exceeds? (the )?max(imum)? lora rank|max_lora_rank"),
    ("unsupported_target", r"expected target modules|target modules? .*(not supported|unsupported)"),
    ("unsupported_config", r"fused 3D MoE weights|not supported|unsupported"),
    ("missing_files", r"No adapter found|does not exist|not found|No such file"),
    ("invalid_files", r"not valid JSON|adapter_config|safetensors|invalid"),
    ("out_of_memory", r"out of memory|OutOfMemory|\bOOM\b"),
)


def engine_reason(status: int, message: str) -> str:
    """The reason word for an engine's refusal to load (its HTTP status and error message)."""
    for reason, pattern in _RULES:
        if re.search(pattern, message, re.IGNORECASE):
            return reason
    return "missing_files" if status == 404 else "other"
