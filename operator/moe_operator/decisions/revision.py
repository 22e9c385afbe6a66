"""A revision: a stable hash of everything that defines a pod, its runtime settings included."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

REVISION_LENGTH = 10


def revision_hash(pod_template: Mapping[str, Any], runtime_config: Mapping[str, str]) -> str:
    """The pods read `runtime_config` from a ConfigMap at start: a settings change must roll them, as a
    template change does, so both go into the hash."""
    canonical = json.dumps(
        {"template": pod_template, "config": runtime_config}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:REVISION_LENGTH]
