"""Editing a PEFT adapter folder on disk, for the tests of refusals (unit and over HTTP)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def edited(good: Path, out: Path, tensors=None, config=None) -> Path:
    """A copy of `good` with its tensors and/or adapter_config.json changed in place by the functions given."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(good, out)
    if tensors:
        weights = load_file(out / "adapter_model.safetensors")
        tensors(weights)
        save_file(weights, out / "adapter_model.safetensors")
    if config:
        raw = json.loads((out / "adapter_config.json").read_text())
        config(raw)
        (out / "adapter_config.json").write_text(json.dumps(raw))
    return out
