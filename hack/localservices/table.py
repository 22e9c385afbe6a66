"""Which endpoints serve each Service port, from Services and EndpointSlices as the API holds them. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True)
class ServicePort:
    namespace: str
    service: str
    name: str  # the port's name, or its number when it has none
    port: int

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.service}:{self.name}"


def proxied_ports(services: Iterable[Mapping[str, Any]]) -> list[ServicePort]:
    """The ports of the Services kube-proxy would serve: those with a cluster IP (headless ones have none)."""
    ports = []
    for service in services:
        spec, meta = service.get("spec") or {}, service["metadata"]
        if spec.get("clusterIP") in (None, "", "None") or spec.get("type") == "ExternalName":
            continue
        for port in spec.get("ports") or ():
            if port.get("protocol", "TCP") != "TCP":
                continue
            name = port.get("name") or str(port["port"])
            ports.append(ServicePort(meta["namespace"], meta["name"], name, port["port"]))
    return sorted(ports, key=lambda p: p.key)


def endpoints_of(port: ServicePort, slices: Iterable[Mapping[str, Any]]) -> list[str]:
    """`ip:targetPort` of the port's Ready endpoints; when none is Ready, those serving while terminating."""
    ready, terminating = set(), set()
    for endpoint_slice in slices:
        meta = endpoint_slice.get("metadata") or {}
        if meta.get("namespace") != port.namespace:
            continue
        if (meta.get("labels") or {}).get(SERVICE_NAME_LABEL) != port.service:
            continue
        numbers = [
            p["port"] for p in endpoint_slice.get("ports") or () if (p.get("name") or "") == _slice_name(port)
        ]
        if not numbers or numbers[0] is None:
            continue
        for entry in endpoint_slice.get("endpoints") or ():
            conditions = entry.get("conditions") or {}
            for ip in entry.get("addresses") or ():
                address = f"{ip}:{numbers[0]}"
                if conditions.get("ready") is not False and not conditions.get("terminating"):
                    ready.add(address)
                elif conditions.get("serving") and conditions.get("terminating"):
                    terminating.add(address)
    return sorted(ready or terminating)


def _slice_name(port: ServicePort) -> str:
    """EndpointSlice ports carry the Service port's name; an unnamed (single) port has the empty name."""
    return "" if port.name == str(port.port) else port.name


def services_file(listening: Mapping[ServicePort, int], host: str = "127.0.0.1") -> dict[str, str]:
    """`namespace/name` -> the first port's local address, and `namespace/name:port` -> each port's."""
    out: dict[str, str] = {}
    for port, local in sorted(listening.items(), key=lambda item: item[0].key):
        out[port.key] = f"{host}:{local}"
        out.setdefault(f"{port.namespace}/{port.service}", f"{host}:{local}")
    return dict(sorted(out.items()))
