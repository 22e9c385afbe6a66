"""`.cluster/targets.json`: the Ready runtime pods in Prometheus file_sd format; `.cluster/sidecar-targets.json`:
the ports of the pods' other containers (the adapter sidecar of vLLM pods), which Prometheus scrapes in a job of
their own so that every reader of targets.json keeps one entry per pod, its serving port; and
`.cluster/pod-addresses.json`: where each running pod's address is reachable on this machine. All written
atomically."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL_DEPLOYMENT_LABEL = "moedeploy.dev/model-deployment"
REVISION_LABEL = "moedeploy.dev/revision"
SIDECAR_TARGETS = "sidecar-targets.json"


@dataclass(frozen=True)
class Serving:
    """A pod's process as seen by its kubelet: where it listens and whether it takes traffic."""

    pod: Mapping[str, Any]
    port: int
    ready: bool
    terminating: bool


def file_sd(entries: Iterable[Serving], host: str = "127.0.0.1") -> list[dict[str, Any]]:
    """One entry per Ready pod that is not being deleted, ordered by namespace and name."""
    out = []
    for entry in entries:
        if not entry.ready or entry.terminating:
            continue
        metadata = entry.pod["metadata"]
        labels = metadata.get("labels") or {}
        out.append(
            {
                "targets": [f"{host}:{entry.port}"],
                "labels": {
                    "namespace": metadata.get("namespace", "default"),
                    "model_deployment": labels.get(MODEL_DEPLOYMENT_LABEL, ""),
                    "revision": labels.get(REVISION_LABEL, ""),
                    "pod": metadata["name"],
                },
            }
        )
    return sorted(out, key=lambda e: (e["labels"]["namespace"], e["labels"]["pod"]))


def pod_addresses(
    running: Iterable[tuple[str, Mapping[int, int]]], host: str = "127.0.0.1"
) -> dict[str, str]:
    """`podIP:containerPort` -> `host:local port` for every port the running pods' containers declare (each
    container's process listens on one local port of its own, whatever it declares): the local stand-in for a pod
    network."""
    out = {}
    for pod_ip, ports in running:
        for container_port, local_port in ports.items():
            out[f"{pod_ip}:{container_port}"] = f"{host}:{local_port}"
    return dict(sorted(out.items()))


def sidecar_sd(
    running: Iterable[tuple[Mapping[str, Any], str, int]], host: str = "127.0.0.1"
) -> list[dict[str, Any]]:
    """One entry per (pod, container, loopback port) of a sidecar that runs, labelled as its pod's entry is,
    plus `container`."""
    out = []
    for pod, container, port in running:
        metadata = pod["metadata"]
        labels = metadata.get("labels") or {}
        out.append(
            {
                "targets": [f"{host}:{port}"],
                "labels": {
                    "namespace": metadata.get("namespace", "default"),
                    "model_deployment": labels.get(MODEL_DEPLOYMENT_LABEL, ""),
                    "revision": labels.get(REVISION_LABEL, ""),
                    "pod": metadata["name"],
                    "container": container,
                },
            }
        )
    return sorted(out, key=lambda e: (e["labels"]["namespace"], e["labels"]["pod"], e["labels"]["container"]))


def write_atomically(path: Path, content: Any) -> None:
    """Readers see the old file or the new one, never a part: write a sibling, then rename over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(content, out, indent=1)
            out.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
