"""The status a kubelet reports for its node: Ready, no pressure, a heartbeat. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from localkubelet.podstatus import timestamp

_HEALTHY = {
    "MemoryPressure": ("False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
    "DiskPressure": ("False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    "PIDPressure": ("False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    "Ready": ("True", "KubeletReady", "local kubelet is posting ready status"),
}


def node_status(node: Mapping[str, Any], *, now: float, address: str, version: str) -> dict[str, Any]:
    """The status patch: conditions with a fresh heartbeat (transition times kept), addresses, node info."""
    current = {c["type"]: c for c in (node.get("status") or {}).get("conditions") or ()}
    conditions = []
    for kind, (status, reason, message) in _HEALTHY.items():
        previous = current.get(kind)
        moved = previous is None or previous.get("status") != status
        conditions.append(
            {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": timestamp(now),
                "lastTransitionTime": timestamp(now) if moved else previous["lastTransitionTime"],
            }
        )
    name = node["metadata"]["name"]
    return {
        "phase": "Running",
        "conditions": conditions,
        "addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "architecture": "amd64",
            "operatingSystem": "linux",
            "kubeletVersion": version,
            "kubeProxyVersion": "",
            "containerRuntimeVersion": "local-process://1",
            "kernelVersion": "",
            "osImage": "",
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
        },
    }
