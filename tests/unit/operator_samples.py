"""ModelDeployment specs and bodies for the operator's unit tests."""

from __future__ import annotations

import copy
from typing import Any

from moe_operator.naming import Owner

OWNER = Owner(name="qwen", namespace="models", uid="0b5e2c9e-1111-2222-3333-444455556666")


def spec(**overrides: Any) -> dict[str, Any]:
    """A minimal valid spec; keyword arguments set fields, `a__b` the nested field b of a."""
    base: dict[str, Any] = {
        "model": {"family": "qwen3_moe", "source": {"pvc": {"claimName": "weights", "path": "qwen3"}}},
        "runtime": {"image": "registry.local/moe-runtime:1"},
    }
    for path, value in overrides.items():
        set_path(base, path, value)
    return base


def set_path(obj: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split("__")
    for key in parents:
        obj = obj.setdefault(key, {})
    obj[last] = copy.deepcopy(value)
