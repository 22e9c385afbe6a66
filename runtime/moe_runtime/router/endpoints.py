"""The pods a router may send to, read from EndpointSlices. Pure.

One Service per track (the stable and the canary Deployment's pods, `<md>-stable` and `<md>-canary`) tells
which track a pod is in. An endpoint counts as Ready when its `ready` condition is true or unset (the API's
advice for an unknown state) and it is not terminating: a pod being deleted takes no new request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
PORT_NAME = "http"


@dataclass(frozen=True)
class Endpoint:
    address: str  # "ip:port", what the router dials
    pod: str  # the pod's name (its address when the slice names none)
    track: str
    ready: bool


def slice_endpoints(endpoint_slice: Mapping[str, Any], track: str) -> list[Endpoint]:
    """The endpoints of one EndpointSlice with the port named `http` (or its only port)."""
    ports = [p for p in endpoint_slice.get("ports") or () if isinstance(p, Mapping) and p.get("port")]
    named = [p for p in ports if p.get("name") == PORT_NAME] or (ports if len(ports) == 1 else [])
    if not named:
        return []
    port = named[0]["port"]
    found = []
    for entry in endpoint_slice.get("endpoints") or ():
        conditions = entry.get("conditions") or {}
        ready = conditions.get("ready") is not False and not conditions.get("terminating")
        pod = (entry.get("targetRef") or {}).get("name")
        for ip in entry.get("addresses") or ():
            address = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
            found.append(Endpoint(address, pod or address, track, ready))
    return found


def merge(slices: Iterable[tuple[Mapping[str, Any], str]]) -> dict[str, Endpoint]:
    """Endpoints by address over every slice; one that shows in two slices (while the controller moves it)
    counts as Ready when either says so."""
    merged: dict[str, Endpoint] = {}
    for endpoint_slice, track in slices:
        for endpoint in slice_endpoints(endpoint_slice, track):
            known = merged.get(endpoint.address)
            if known is None or (endpoint.ready and not known.ready):
                merged[endpoint.address] = endpoint
    return merged


def ready(endpoints: Mapping[str, Endpoint]) -> list[Endpoint]:
    return sorted((e for e in endpoints.values() if e.ready), key=lambda e: e.address)
