"""The operator policy: what a ModelDeployment author may make the operator do on their behalf. Pure.

The operator's pods run with rights the author may not have (mounting host folders, reading Secrets into the
environment, tolerating taints, running as a ServiceAccount), so anyone allowed to write ModelDeployments could
otherwise do more through the operator than RBAC gives them. The cluster admin sets the policy in the chart's
values (a file the operator reads); the defaults are safe for a shared cluster. `"*"` in a list allows anything.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from moe_operator.decisions.runtime_config import adapter_host_folder
from moe_operator.decisions.spec import (
    HostPathSource,
    ImageSource,
    ModelDeploymentSpec,
    ModelSource,
    PvcSource,
    UriSource,
)

ANY = "*"
GPU_TAINT_KEY = "nvidia.com/gpu"
SOURCE_KINDS = {PvcSource: "pvc", HostPathSource: "hostPath", ImageSource: "image", UriSource: "uri"}


@dataclass(frozen=True)
class Policy:
    allowed_source_kinds: tuple[str, ...] = ("pvc", "image", "uri")
    allowed_host_path_prefixes: tuple[str, ...] = ()
    allowed_image_prefixes: tuple[str, ...] = ("ghcr.io/moedeploy/",)
    allow_secret_references: bool = False
    allowed_toleration_keys: tuple[str, ...] = (GPU_TAINT_KEY,)
    allowed_service_accounts: tuple[str, ...] = ()
    allowed_priority_classes: tuple[str, ...] = ()
    allowed_runtime_classes: tuple[str, ...] = (ANY,)
    allowed_volume_types: tuple[str, ...] = ("configMap", "emptyDir", "persistentVolumeClaim")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> Policy:
        names = {
            "allowedSourceKinds": "allowed_source_kinds",
            "allowedHostPathPrefixes": "allowed_host_path_prefixes",
            "allowedImagePrefixes": "allowed_image_prefixes",
            "allowSecretReferences": "allow_secret_references",
            "allowedTolerationKeys": "allowed_toleration_keys",
            "allowedServiceAccounts": "allowed_service_accounts",
            "allowedPriorityClasses": "allowed_priority_classes",
            "allowedRuntimeClasses": "allowed_runtime_classes",
            "allowedVolumeTypes": "allowed_volume_types",
        }
        unknown = set(raw) - set(names)
        if unknown:
            raise ValueError(f"unknown operator policy keys: {', '.join(sorted(unknown))}")
        values = {
            names[key]: (value if isinstance(value, bool) else tuple(value or ()))
            for key, value in raw.items()
        }
        return cls(**values)


def _allows(allowed: tuple[str, ...], value: str) -> bool:
    return ANY in allowed or value in allowed


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    """Whether `path` lies inside one of the folders (no '..' tricks: paths are compared part by part)."""
    if ANY in prefixes:
        return True
    parts = PurePosixPath(path).parts
    if ".." in parts:
        return False
    return any(parts[: len(PurePosixPath(p).parts)] == PurePosixPath(p).parts for p in prefixes)


def violations(spec: ModelDeploymentSpec, policy: Policy) -> list[str]:
    """Every way the spec oversteps the policy, each naming the field; empty when it complies."""
    return list(_violations(spec, policy))


def _violations(spec: ModelDeploymentSpec, policy: Policy) -> Iterator[str]:
    yield from _source_violations("spec.model.source", spec.model.source, policy)
    for i, adapter in enumerate(spec.adapters):
        yield from _source_violations(f"spec.adapters[{i}].source", adapter.source, policy)
        source = adapter.source
        if isinstance(source, HostPathSource) and _under(source.path, policy.allowed_host_path_prefixes):
            folder = adapter_host_folder(source.path)
            if not _under(folder, policy.allowed_host_path_prefixes):
                yield (
                    f"spec.adapters[{i}].source.hostPath.path {source.path!r}: the pods mount the folder that "
                    f"holds it, {folder!r}, which is outside the allowed folders "
                    f"{_listing(policy.allowed_host_path_prefixes)}"
                )
    runtime = spec.runtime
    # a spec without an image runs the engine's image the operator is configured with, which the admin chose
    if (
        runtime.image is not None
        and ANY not in policy.allowed_image_prefixes
        and not any(runtime.image.startswith(prefix) for prefix in policy.allowed_image_prefixes)
    ):
        yield (
            f"spec.runtime.image {runtime.image!r} is not allowed: images must start with one of "
            f"{_listing(policy.allowed_image_prefixes)}"
        )
    if not policy.allow_secret_references:
        for var in runtime.env:
            if "secretKeyRef" in (var.get("valueFrom") or {}):
                yield f"spec.runtime.env[{var['name']}] reads a Secret, which the policy does not allow"
    for toleration in runtime.tolerations:
        key = toleration.get("key") or ""
        if not _allows(policy.allowed_toleration_keys, key):
            yield (
                f"spec.runtime.tolerations: a toleration of the taint {key or '(every taint)'!r} is not allowed "
                f"(allowed keys: {_listing(policy.allowed_toleration_keys)})"
            )
    for field, value, allowed in (
        ("serviceAccountName", runtime.service_account_name, policy.allowed_service_accounts),
        ("priorityClassName", runtime.priority_class_name, policy.allowed_priority_classes),
        ("runtimeClassName", runtime.runtime_class_name, policy.allowed_runtime_classes),
    ):
        if value is not None and not _allows(allowed, value):
            yield f"spec.runtime.{field} {value!r} is not allowed (allowed: {_listing(allowed)})"
    for volume in runtime.volumes:
        kind = next((key for key in volume if key != "name"), "(none)")
        if kind == "secret" and not policy.allow_secret_references:
            yield f"spec.runtime.volumes[{volume.get('name')}] mounts a Secret, which the policy does not allow"
        elif kind == "hostPath":
            path = (volume.get("hostPath") or {}).get("path", "")
            if "hostPath" not in policy.allowed_source_kinds and ANY not in policy.allowed_source_kinds:
                yield f"spec.runtime.volumes[{volume.get('name')}] is a hostPath volume, which the policy does not allow"
            elif not _under(path, policy.allowed_host_path_prefixes):
                yield (
                    f"spec.runtime.volumes[{volume.get('name')}].hostPath.path {path!r} is outside the allowed "
                    f"folders {_listing(policy.allowed_host_path_prefixes)}"
                )
        elif kind not in ("secret", "hostPath") and not _allows(policy.allowed_volume_types, kind):
            yield (
                f"spec.runtime.volumes[{volume.get('name')}] of type {kind} is not allowed "
                f"(allowed: {_listing(policy.allowed_volume_types)})"
            )


def _source_violations(field: str, source: ModelSource, policy: Policy) -> Iterator[str]:
    kind = SOURCE_KINDS[type(source)]
    if not _allows(policy.allowed_source_kinds, kind):
        yield f"{field}.{kind} is not allowed (allowed sources: {_listing(policy.allowed_source_kinds)})"
        return
    if isinstance(source, HostPathSource) and not _under(source.path, policy.allowed_host_path_prefixes):
        yield (
            f"{field}.hostPath.path {source.path!r} is outside the allowed folders "
            f"{_listing(policy.allowed_host_path_prefixes)}"
        )
    if isinstance(source, UriSource):
        if source.credentials_secret and not policy.allow_secret_references:
            yield f"{field}.s3.credentialsSecret reads a Secret, which the policy does not allow"
        if source.cache_host_path is not None and not _under(
            source.cache_host_path, policy.allowed_host_path_prefixes
        ):
            yield (
                f"{field}.cache.hostPath.path {source.cache_host_path!r} is outside the allowed folders "
                f"{_listing(policy.allowed_host_path_prefixes)}"
            )


def _listing(values: tuple[str, ...]) -> str:
    return ", ".join(values) if values else "none"
