r"""PEFT's adapter_config.json for LoRA: what we run, what we refuse, and each target's rank and scaling.

Rank and alpha follow PEFT: `rank_pattern` / `alpha_pattern` keys are regexes matched against the end of the
module name (`re.match(rf"(.*\.)?({key})$", name)`, the first key that matches wins), else `r` / `lora_alpha`;
scaling is alpha / r, or alpha / sqrt(r) with `use_rslora`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from moe_runtime.model.lora.errors import AdapterError

CONFIG_FILE = "adapter_config.json"
MAX_CONFIG_BYTES = 1 << 20  # PEFT writes a few kilobytes; rank and alpha patterns stay far below this
# Settings that change what the adapter computes in ways a plain low-rank update does not express.
UNSUPPORTED = {
    "use_dora": "DoRA (use_dora) is not supported",
    "modules_to_save": "modules_to_save (fully trained copies of modules) is not supported",
    "lora_bias": "lora_bias (a bias on lora_B) is not supported",
    "fan_in_fan_out": "fan_in_fan_out (Conv1D weights) is not supported",
    "trainable_token_indices": "trainable_token_indices is not supported",
    "layer_replication": "layer_replication is not supported",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens) is not supported",
    "use_qalora": "QA-LoRA (use_qalora) is not supported",
    "use_bdlora": "block-diagonal LoRA (use_bdlora) is not supported",
    "velora_config": "VeLoRA (velora_config) is not supported",
    "kasa_config": "KaSA (kasa_config) is not supported",
    "monteclora_config": "MonteCLoRA (monteclora_config) is not supported",
    "arrow_config": "Arrow routing (arrow_config) is not supported",
}


@dataclass(frozen=True)
class AdapterConfig:
    r: int
    lora_alpha: float
    use_rslora: bool
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    target_modules: list[str] | str | None
    target_parameters: list[str] | None

    def rank(self, module: str) -> int:
        return int(_by_pattern(self.rank_pattern, module, self.r))

    def scaling(self, module: str) -> float:
        alpha = float(_by_pattern(self.alpha_pattern, module, self.lora_alpha))
        rank = self.rank(module)
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank

    def targets_module(self, module: str) -> bool:
        """PEFT's matching: a regex string must match the whole name; a list entry the name or its tail."""
        targets = self.target_modules
        if targets is None:
            return False
        if isinstance(targets, str):
            return re.fullmatch(targets, module) is not None
        return any(module == t or module.endswith(f".{t}") for t in targets)

    def targets_parameter(self, parameter: str) -> bool:
        return any(parameter == t or parameter.endswith(f".{t}") for t in self.target_parameters or ())


def read_adapter_config(name: str, path: Path) -> AdapterConfig:
    file = path / CONFIG_FILE
    if not file.is_file():
        raise AdapterError(name, f"{file}: missing (a PEFT adapter directory needs {CONFIG_FILE})")
    size = file.stat().st_size
    if size > MAX_CONFIG_BYTES:  # read whole, it would take the pod's memory before any check
        raise AdapterError(name, f"{file}: {size} bytes, more than any adapter config ({MAX_CONFIG_BYTES})")
    try:
        raw = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise AdapterError(name, f"{file}: not valid JSON ({err})") from err
    if not isinstance(raw, dict):
        raise AdapterError(name, f"{file}: not a JSON object")
    return parse_adapter_config(name, raw)


def parse_adapter_config(name: str, raw: dict) -> AdapterConfig:
    peft_type = raw.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        raise AdapterError(name, f"peft_type {peft_type!r} is not supported (only LORA)")
    for field, reason in UNSUPPORTED.items():
        if raw.get(field):
            raise AdapterError(name, reason)
    if raw.get("bias", "none") != "none":
        raise AdapterError(name, f"bias {raw['bias']!r} (trained base-model biases) is not supported")
    try:
        r = int(raw.get("r", 8))
        config = AdapterConfig(
            r=r,
            lora_alpha=float(raw.get("lora_alpha", 8)),
            use_rslora=bool(raw.get("use_rslora", False)),
            rank_pattern={str(k): int(v) for k, v in (raw.get("rank_pattern") or {}).items()},
            alpha_pattern={str(k): float(v) for k, v in (raw.get("alpha_pattern") or {}).items()},
            target_modules=_targets(raw.get("target_modules")),
            target_parameters=_targets(raw.get("target_parameters")),
        )
    except (TypeError, ValueError) as err:
        raise AdapterError(name, f"adapter_config.json has a malformed field ({err})") from err
    if isinstance(config.target_parameters, str):
        raise AdapterError(name, "target_parameters must be a list of parameter names")
    ranks = [config.r, *config.rank_pattern.values()]
    if min(ranks) < 1:
        raise AdapterError(name, f"rank {min(ranks)} is not a positive integer")
    return config


def _targets(value) -> list[str] | str | None:
    if value is None or isinstance(value, str):
        return value
    return [str(v) for v in value]


def _by_pattern(patterns: dict, module: str, default):
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default
