"""Kubernetes timestamps: RFC 3339 in UTC, to the second (`Time`) or the microsecond (`MicroTime`, Leases).
A leaf module: every layer may import it."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

SECONDS = "%Y-%m-%dT%H:%M:%SZ"
MICROSECONDS = "%Y-%m-%dT%H:%M:%S.%fZ"


def to_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime(SECONDS)


def from_time(text: Any) -> float | None:
    """Epoch seconds of a `Time`; None for anything else."""
    try:
        return datetime.strptime(str(text), SECONDS).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def now_time() -> str:
    return to_time(time.time())


def now_micro_time() -> str:
    return datetime.now(UTC).strftime(MICROSECONDS)
