"""Reading numbers back from a ModelDeployment's status, where anyone with write access may have put
anything: a value of the wrong type reads as None, never as an exception."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def finite_number(raw: Any) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        return None
    return float(raw)


def count(raw: Any) -> int | None:
    """A non-negative integer."""
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        return None
    return raw


def mappings(raw: Any) -> list[Mapping[str, Any]]:
    """The mappings in a list (anything else: none)."""
    return [item for item in raw if isinstance(item, Mapping)] if isinstance(raw, list) else []
