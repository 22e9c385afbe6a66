"""Where the served LoRA adapters come from, as (name, path) pairs. Pure.

- `--lora-modules`, vLLM's flag: `NAME=PATH`, or vLLM's JSON form `{"name": ..., "path": ...,
  "base_model_name": ...}` (base_model_name is accepted and ignored: every adapter here sits on the one base
  model). The MOE_RUNTIME_LORA_MODULES variable holds several: a JSON list (of such objects or NAME=PATH
  strings), or NAME=PATH items separated by whitespace.
- `--lora-list FILE`: a JSON list of `{"name": ..., "path": ...}` objects, which the runtime watches
  (adapters/watch.py). An entry that is malformed, or repeats a name, is reported and skipped; the others count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class AdapterSource:
    name: str
    path: str


class SourceError(ValueError):
    """A malformed adapter source; the message says what is wrong."""


def parse_lora_module(text: str) -> AdapterSource:
    """One `--lora-modules` value."""
    text = text.strip()
    if text.startswith("{"):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise SourceError(f"{text!r}: not valid JSON ({err})") from None
        return _entry(raw, text)
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise SourceError(f"{text!r}: expected NAME=PATH or a JSON object with name and path")
    return AdapterSource(name.strip(), path.strip())


def parse_lora_modules_variable(text: str) -> list[AdapterSource]:
    """The MOE_RUNTIME_LORA_MODULES value: a JSON list, or NAME=PATH items separated by whitespace."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise SourceError(f"not valid JSON ({err})") from None
        return [parse_lora_module(item if isinstance(item, str) else json.dumps(item)) for item in items]
    if text.startswith("{"):
        return [parse_lora_module(text)]
    return [parse_lora_module(item) for item in text.split()]


def parse_lora_list(text: str) -> tuple[list[AdapterSource], list[str]]:
    """(the entries, a problem per entry skipped). SourceError when the file as a whole is not a list."""
    try:
        raw = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as err:
        raise SourceError(f"not valid JSON ({err})") from None
    if not isinstance(raw, list):
        raise SourceError(f"expected a JSON list of {{name, path}} objects, not {type(raw).__name__}")
    entries: list[AdapterSource] = []
    problems: list[str] = []
    for i, item in enumerate(raw):
        try:
            entry = _entry(item, f"entry {i}")
        except SourceError as err:
            problems.append(str(err))
            continue
        if any(e.name == entry.name for e in entries):
            problems.append(f"entry {i}: the name {entry.name!r} is listed already; the first one counts")
            continue
        entries.append(entry)
    return entries, problems


def _entry(raw: object, where: str) -> AdapterSource:
    if not isinstance(raw, dict):
        raise SourceError(f"{where}: expected an object with name and path")
    name, path = raw.get("name"), raw.get("path")
    if not isinstance(name, str) or not name.strip():
        raise SourceError(f"{where}: name must be a non-empty string")
    if not isinstance(path, str) or not path.strip():
        raise SourceError(f"{where}: path must be a non-empty string")
    return AdapterSource(name.strip(), path.strip())
