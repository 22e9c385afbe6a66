"""`.cluster/targets.json`: the Ready runtime pods in Prometheus file_sd format, and `.cluster/pod-addresses.json`:
where each running pod's address is reachable on this machine; both written atomically."""

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
    running: Iterable[tuple[Mapping[str, Any], str, int]], host: str = "127.0.0.1"
) -> dict[str, str]:
    """`podIP:port` -> `host:local port` for every port of the running pods' first container (the process
    listens on one local port, whatever the container declares): the local stand-in for a pod network."""
    out = {}
    for pod, pod_ip, local_port in running:
        container = (pod.get("spec") or {}).get("containers", [{}])[0]
        for port in container.get("ports") or ():
            if port.get("containerPort"):
                out[f"{pod_ip}:{port['containerPort']}"] = f"{host}:{local_port}"
    return dict(sorted(out.items()))


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
