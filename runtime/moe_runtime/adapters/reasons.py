"""Why an adapter failed to load, as one of a few fixed words: the `reason` label of the load-failure metrics
and what the operator reports. Pure. The full message goes to the log; a metric label must stay bounded.

The words follow the refusals of runtime/lora (AdapterError messages); a unit test loads every kind of bad
adapter and checks that none falls through to "other".
"""

from __future__ import annotations

import re

# (reason, pattern of the AdapterError reason), first match wins
_RULES = (
    ("dora", r"\bDoRA\b"),
    ("modules_to_save", r"\bmodules_to_save\b"),
    ("rank_above_max", r"above max_lora_rank"),
    ("unsupported_target", r"^target .* is not supported"),
    ("unsupported_config", r"is not supported"),
    ("target_not_in_model", r"does not exist in|match no (module|parameter) of the model"),
    ("shape_mismatch", r"^shape of "),
    ("unused_tensors", r": unused$"),
    ("missing_files", r": missing\b|not a directory"),
    (
        "invalid_files",
        r"not valid JSON|not a JSON object|malformed field|unreadable|holds no LoRA tensors|mixes per-expert"
        r"|is missing|must be floating point|not a positive integer|must be a list|more than any adapter",
    ),
)
REASONS = (*(reason for reason, _ in _RULES), "out_of_memory", "timeout", "other")


def adapter_error_reason(message: str) -> str:
    """The reason word of an AdapterError's `reason` text."""
    for reason, pattern in _RULES:
        if re.search(pattern, message):
            return reason
    return "other"
