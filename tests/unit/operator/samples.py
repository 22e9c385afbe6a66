"""ModelDeployment specs and bodies for the operator's unit tests."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from moe_operator.decisions.naming import Owner

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


@dataclass(frozen=True)
class Children:
    revision: str
    config_map: dict[str, Any]
    service: dict[str, Any]
    deployment: dict[str, Any]


def render_children(raw: dict[str, Any], track: str = "stable") -> Children:
    """What the operator renders for a spec whose revision runs on `track`."""
    from moe_operator.decisions.render import deployment, render_revision, revision_config_map, service
    from moe_operator.decisions.spec import parse_spec

    parsed = parse_spec(raw)
    revision = render_revision(OWNER.name, parsed)
    return Children(
        revision=revision.hash,
        config_map=revision_config_map(OWNER, revision),
        service=service(OWNER),
        deployment=deployment(OWNER, parsed, revision, track, parsed.replicas),
    )
