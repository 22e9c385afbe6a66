"""What to do about the children: compare the desired ones with those in the cluster. Pure.

The cluster's copy carries defaults the API server filled in, so "in step" means it contains every field
the operator sets with the same value; fields someone else added are left alone, as server-side apply
leaves them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kubernetes.utils import parse_quantity

from moe_operator.decisions.naming import REVISION_LABEL


@dataclass(frozen=True)
class DeploymentPlan:
    action: Literal["create", "update", "keep"]
    rollout: bool = False
    scale: bool = False
    drift: bool = False
    previous_revision: str | None = None
    previous_replicas: int | None = None


def plan_deployment(desired: Mapping[str, Any], observed: Mapping[str, Any] | None) -> DeploymentPlan:
    if observed is None:
        return DeploymentPlan("create")
    previous_revision, previous_replicas = template_revision(observed), observed["spec"].get("replicas")
    rollout = previous_revision != template_revision(desired)
    scale = previous_replicas != desired["spec"]["replicas"]
    skipped = {"replicas", "template"} if rollout else {"replicas"}
    drift = not covers(observed["metadata"], desired["metadata"]) or not covers(
        _without(observed["spec"], skipped), _without(desired["spec"], skipped)
    )
    action = "update" if rollout or scale or drift else "keep"
    return DeploymentPlan(action, rollout, scale, drift, previous_revision, previous_replicas)


def in_step(desired: Mapping[str, Any], observed: Mapping[str, Any] | None) -> bool:
    """Whether a child other than the Deployment needs no apply."""
    return observed is not None and covers(observed, desired)


def template_revision(deployment: Mapping[str, Any]) -> str | None:
    return deployment["spec"]["template"]["metadata"].get("labels", {}).get(REVISION_LABEL)


def _without(spec: Mapping[str, Any], keys: set[str]) -> dict[str, Any]:
    return {key: value for key, value in spec.items() if key not in keys}


def covers(observed: Any, desired: Any, quantities: bool = False) -> bool:
    """Whether `observed` holds everything `desired` sets. Lists of named items match by name."""
    if isinstance(desired, Mapping):
        return isinstance(observed, Mapping) and all(
            key in observed and covers(observed[key], value, quantities or key in ("requests", "limits"))
            for key, value in desired.items()
        )
    if isinstance(desired, list):
        if not isinstance(observed, list):
            return False
        if all(isinstance(item, Mapping) and "name" in item for item in desired):
            by_name = {item.get("name"): item for item in observed if isinstance(item, Mapping)}
            return all(item["name"] in by_name and covers(by_name[item["name"]], item) for item in desired)
        return len(observed) == len(desired) and all(map(covers, observed, desired))
    if quantities and observed != desired:
        return _same_quantity(observed, desired)
    return observed == desired


def _same_quantity(a: Any, b: Any) -> bool:
    try:
        return parse_quantity(a) == parse_quantity(b)
    except ValueError:
        return False
