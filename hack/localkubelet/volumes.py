"""Where a pod's volumes live on this machine, and a container's paths mapped onto them. Pure.

hostPath is the host path itself; emptyDir, configMap and secret volumes are folders of the pod's own
(`<pod dir>/volumes/<name>`). Volumes that need a storage plugin or an image (PVCs, image volumes, CSI, ...)
have no local meaning: `plan_volumes` refuses them with a message the pod's Event carries.

A configMap or secret volume's files (`volume_files`) are their keys' values, with one more local stand-in: a
value that is JSON has the container paths in its strings mapped to host paths, as argv and env are (a runtime
reading its LoRA adapter list finds the adapters where the volumes really are).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

LOCAL_KINDS = ("hostPath", "emptyDir", "configMap", "secret")


class UnsupportedVolume(Exception):
    """A volume the local kubelet cannot provide; the pod stays not Ready."""


@dataclass(frozen=True)
class Volume:
    name: str
    kind: str  # one of LOCAL_KINDS
    host_path: str
    host_path_type: str = ""  # hostPath only: "", Directory, DirectoryOrCreate, File, FileOrCreate, ...
    source: str = ""  # configMap / secret: the object's name
    optional: bool = False
    items: tuple[tuple[str, str], ...] = ()  # configMap / secret: (key, relative path); empty = every key


@dataclass(frozen=True)
class Mounts:
    """mountPath -> host path, longest mount path first so that nested mounts win."""

    table: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def host_path(self, path: str) -> str | None:
        """The host path of a container path, or None when no mount holds it."""
        for mount, host in self.table:
            root = mount.rstrip("/")
            if path in (mount, root) or path.startswith(root + "/"):
                rest = path[len(root) :].lstrip("/")
                return str(PurePosixPath(host, rest)) if rest else host
        return None

    def map_value(self, value: str) -> str:
        """`value` with a container path in it (`/p`, or `--flag=/p`) replaced by the host path."""
        head, eq, tail = value.partition("=") if not value.startswith("/") else ("", "", value)
        if not tail.startswith("/"):
            return value
        mapped = self.host_path(tail)
        return value if mapped is None else f"{head}{eq}{mapped}"

    def unmapped_paths(self, values: Iterable[str]) -> list[str]:
        """Absolute container paths among `values` that no mount holds: they would be in the image."""
        found = []
        for value in values:
            tail = value if value.startswith("/") else value.partition("=")[2]
            if tail.startswith("/") and " " not in tail and self.host_path(tail) is None:
                found.append(tail)
        return found


def plan_volumes(pod: Mapping[str, Any], pod_dir: str) -> dict[str, Volume]:
    volumes = {}
    for raw in pod.get("spec", {}).get("volumes") or ():
        name = raw["name"]
        own = str(PurePosixPath(pod_dir, "volumes", name))
        if "hostPath" in raw:
            source = raw["hostPath"]
            volumes[name] = Volume(name, "hostPath", source["path"], host_path_type=source.get("type") or "")
        elif "emptyDir" in raw:
            volumes[name] = Volume(name, "emptyDir", own)
        elif "configMap" in raw or "secret" in raw:
            kind = "configMap" if "configMap" in raw else "secret"
            source = raw[kind]
            volumes[name] = Volume(
                name,
                kind,
                own,
                source=source.get("name") or source.get("secretName", ""),
                optional=bool(source.get("optional")),
                items=tuple((item["key"], item["path"]) for item in source.get("items") or ()),
            )
        else:
            kind = next((key for key in raw if key != "name"), "unknown")
            raise UnsupportedVolume(
                f'volume "{name}": {kind} volumes are not supported by the local kubelet, which runs no '
                f"storage plugins and no images; give the model as a hostPath source"
            )
    return volumes


def container_mounts(container: Mapping[str, Any], volumes: Mapping[str, Volume]) -> Mounts:
    table = []
    for mount in container.get("volumeMounts") or ():
        volume = volumes.get(mount["name"])
        if volume is None:
            raise UnsupportedVolume(f'volumeMount "{mount["mountPath"]}" names no volume "{mount["name"]}"')
        host = volume.host_path
        if sub := mount.get("subPath"):
            host = str(PurePosixPath(host, sub))
        table.append((mount["mountPath"], host))
    table.sort(key=lambda entry: len(entry[0].rstrip("/")), reverse=True)
    return Mounts(tuple(table))


def pod_mounts(pod: Mapping[str, Any], volumes: Mapping[str, Volume]) -> Mounts:
    """The mounts of all of the pod's containers in one table (the first container's where two mount the same
    path): a container path written in a configMap's JSON is read by whichever container it names, so it maps
    through all of them (an adapter list read by a sidecar names the engine's adapter folders)."""
    table: dict[str, str] = {}
    for container in pod.get("spec", {}).get("containers") or ():
        for mount, host in container_mounts(container, volumes).table:
            table.setdefault(mount, host)
    ordered = sorted(table.items(), key=lambda entry: len(entry[0].rstrip("/")), reverse=True)
    return Mounts(tuple(ordered))


def volume_files(volume: Volume, data: Mapping[str, str] | None, mounts: Mounts) -> dict[str, str]:
    """Relative path -> content of a configMap or secret volume holding `data`."""
    items = volume.items or tuple((key, key) for key in data or {})
    return {relative: _map_json_paths(data[key], mounts) for key, relative in items if data and key in data}


def _map_json_paths(text: str, mounts: Mounts) -> str:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    mapped = _map_strings(value, mounts)
    return text if mapped == value else json.dumps(mapped, indent=1)


def _map_strings(value, mounts: Mounts):
    if isinstance(value, str):
        return mounts.map_value(value)
    if isinstance(value, list):
        return [_map_strings(item, mounts) for item in value]
    if isinstance(value, dict):
        return {key: _map_strings(item, mounts) for key, item in value.items()}
    return value
