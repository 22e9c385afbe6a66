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

from moe_operator.decisions.runtime_config import (
    OPERATOR_FLAGS,
    OPERATOR_MOUNT_PATHS,
    adapter_host_folder,
    operator_flag,
)
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
    # node folders for shared download caches (spec.model.source.cache.hostPath): they hold what other
    # ModelDeployments downloaded, so no hostPath source or volume may reach into them
    allowed_cache_host_path_prefixes: tuple[str, ...] = ()
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
            "allowedCacheHostPathPrefixes": "allowed_cache_host_path_prefixes",
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


def image_under(image: str, prefix: str) -> bool:
    """Whether `image` lies under `prefix` on a boundary of the reference, not merely starts with its text:
    `registry.corp` admits `registry.corp/x` but neither `registry.corp.evil.io/x` nor `registry.corp:5000/x`
    (another registry); `ghcr.io/m/runtime` admits its tags and digests and the repositories under it, not
    `ghcr.io/m/runtime-evil`. A prefix ending in `/`, `:` or `@` ends on a boundary itself."""
    if not image.startswith(prefix):
        return False
    rest = image[len(prefix) :]
    if not rest or prefix.endswith(("/", ":", "@")):
        return True
    # after a registry alone only a path follows; after a repository also a tag or a digest
    return rest[0] in ("/:@" if "/" in prefix else "/")


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
            elif (cache := _cache_overlap(folder, policy)) is not None and _cache_overlap(
                source.path, policy
            ) is None:
                yield (
                    f"spec.adapters[{i}].source.hostPath.path {source.path!r}: the pods mount the folder that "
                    f"holds it, {folder!r}, {_cache_clash(cache)}"
                )
    runtime = spec.runtime
    # a spec without an image runs the engine's image the operator is configured with, which the admin chose
    if (
        runtime.image is not None
        and ANY not in policy.allowed_image_prefixes
        and not any(image_under(runtime.image, prefix) for prefix in policy.allowed_image_prefixes)
    ):
        yield (
            f"spec.runtime.image {runtime.image!r} is not allowed: images must come from one of "
            f"{_listing(policy.allowed_image_prefixes)}"
        )
    for i, arg in enumerate(runtime.args):
        if (flag := operator_flag(arg)) is not None:
            yield (
                f"spec.runtime.args[{i}] {arg!r} sets {flag}, which the operator sets itself from the spec; "
                "use the spec's fields"
            )
    for var in runtime.env:
        if var["name"] in OPERATOR_FLAGS:
            yield (
                f"spec.runtime.env[{var['name']}] would override what the operator sets itself "
                f"({'/'.join(OPERATOR_FLAGS[var['name']])}); use the spec's fields"
            )
    if not policy.allow_secret_references:
        for var in runtime.env:
            if "secretKeyRef" in (var.get("valueFrom") or {}):
                yield f"spec.runtime.env[{var['name']}] reads a Secret, which the policy does not allow"
    routed = spec.routing.tolerations if spec.routing is not None else ()
    for field, tolerations in (
        ("spec.runtime.tolerations", runtime.tolerations),
        ("spec.routing.tolerations", routed),
    ):
        for toleration in tolerations:
            key = toleration.get("key") or ""
            if not _allows(policy.allowed_toleration_keys, key):
                yield (
                    f"{field}: a toleration of the taint {key or '(every taint)'!r} is not allowed "
                    f"(allowed keys: {_listing(policy.allowed_toleration_keys)})"
                )
    for field, value, allowed in (
        ("serviceAccountName", runtime.service_account_name, policy.allowed_service_accounts),
        ("priorityClassName", runtime.priority_class_name, policy.allowed_priority_classes),
        ("runtimeClassName", runtime.runtime_class_name, policy.allowed_runtime_classes),
    ):
        if value is not None and not _allows(allowed, value):
            yield f"spec.runtime.{field} {value!r} is not allowed (allowed: {_listing(allowed)})"
    yield from _mount_violations(runtime, policy)
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
            elif (cache := _cache_overlap(path, policy)) is not None:
                yield f"spec.runtime.volumes[{volume.get('name')}].hostPath.path {path!r} {_cache_clash(cache)}"
        elif kind not in ("secret", "hostPath") and not _allows(policy.allowed_volume_types, kind):
            yield (
                f"spec.runtime.volumes[{volume.get('name')}] of type {kind} is not allowed "
                f"(allowed: {_listing(policy.allowed_volume_types)})"
            )


def _mount_violations(runtime, policy: Policy) -> Iterator[str]:
    """The extra mounts: only the author's own volumes, never over or inside what the operator mounts (its
    read-only hostPath volumes would turn writable; an own adapter list would bypass the adapter policy), and
    node folders read-only."""
    volumes = {volume.get("name"): volume for volume in runtime.volumes}
    for i, mount in enumerate(runtime.volume_mounts):
        field = f"spec.runtime.volumeMounts[{i}]"
        name, path = mount.get("name"), mount.get("mountPath") or ""
        volume = volumes.get(name)
        if volume is None:
            yield (
                f"{field} mounts {name!r}, which is no volume of spec.runtime.volumes (the operator's own "
                "volumes are mounted by the operator only)"
            )
            continue
        parts = PurePosixPath(path).parts
        if ".." in parts:
            yield f"{field}.mountPath {path!r} must not contain '..'"
            continue
        if shadowed := next((p for p in OPERATOR_MOUNT_PATHS if _under(path, (p,))), None):
            yield f"{field}.mountPath {path!r} lies over the operator's own mount {shadowed}"
        if "hostPath" in volume and not mount.get("readOnly"):
            yield f"{field} mounts the hostPath volume {name!r} read-write; node folders are mounted readOnly: true"


def _source_violations(field: str, source: ModelSource, policy: Policy) -> Iterator[str]:
    kind = SOURCE_KINDS[type(source)]
    if not _allows(policy.allowed_source_kinds, kind):
        yield f"{field}.{kind} is not allowed (allowed sources: {_listing(policy.allowed_source_kinds)})"
        return
    if isinstance(source, HostPathSource):
        if not _under(source.path, policy.allowed_host_path_prefixes):
            yield (
                f"{field}.hostPath.path {source.path!r} is outside the allowed folders "
                f"{_listing(policy.allowed_host_path_prefixes)}"
            )
        elif (cache := _cache_overlap(source.path, policy)) is not None:
            yield f"{field}.hostPath.path {source.path!r} {_cache_clash(cache)}"
    if isinstance(source, UriSource):
        if source.credentials_secret and not policy.allow_secret_references:
            yield f"{field}.s3.credentialsSecret reads a Secret, which the policy does not allow"
        if source.cache_host_path is not None and not _under(
            source.cache_host_path, policy.allowed_cache_host_path_prefixes
        ):
            yield (
                f"{field}.cache.hostPath.path {source.cache_host_path!r} is outside the folders allowed for "
                f"shared download caches (allowedCacheHostPathPrefixes: "
                f"{_listing(policy.allowed_cache_host_path_prefixes)})"
            )


def _cache_overlap(path: str, policy: Policy) -> str | None:
    """The shared download cache folder that `path` lies in or holds, if any ("*": caches anywhere, unguarded)."""
    caches = policy.allowed_cache_host_path_prefixes
    if ANY in caches:
        return None
    return next((c for c in caches if _under(path, (c,)) or _under(c, (path,))), None)


def _cache_clash(cache: str) -> str:
    return (
        f"reaches into the shared download cache folder {cache!r}, which holds what other ModelDeployments "
        "downloaded with their own credentials"
    )


def _listing(values: tuple[str, ...]) -> str:
    return ", ".join(values) if values else "none"
