"""Container probes: their settings with Kubernetes' defaults, and the threshold counting. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

KINDS = ("startupProbe", "livenessProbe", "readinessProbe")


@dataclass(frozen=True)
class Probe:
    kind: str  # one of KINDS
    action: str  # "http", "tcp", or "unsupported"
    port: int | None = None  # the local port it reaches
    path: str = "/"
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()
    initial_delay: float = 0
    period: float = 10
    timeout: float = 1
    success_threshold: int = 1
    failure_threshold: int = 3
    problem: str = ""  # why an unsupported probe cannot run here


def container_probes(container: Mapping[str, Any], local_port: int) -> dict[str, Probe]:
    """The container's probes against the local process; ports other than its serving port cannot be reached."""
    serving = serving_port(container)
    probes = {}
    for kind in KINDS:
        raw = container.get(kind)
        if raw:
            probes[kind] = _probe(kind, raw, container, serving, local_port)
    return probes


def serving_port(container: Mapping[str, Any]) -> tuple[int | None, str | None]:
    """The container port the local loopback port stands in for: its first declared port."""
    ports = container.get("ports") or ()
    return (ports[0]["containerPort"], ports[0].get("name")) if ports else (None, None)


def _probe(kind: str, raw: Mapping[str, Any], container, serving, local_port: int) -> Probe:
    timing = {
        "initial_delay": raw.get("initialDelaySeconds", 0),
        "period": raw.get("periodSeconds", 10),
        "timeout": raw.get("timeoutSeconds", 1),
        "success_threshold": raw.get("successThreshold", 1),
        "failure_threshold": raw.get("failureThreshold", 3),
    }
    if "httpGet" in raw or "tcpSocket" in raw:
        action = "http" if "httpGet" in raw else "tcp"
        handler = raw["httpGet"] if action == "http" else raw["tcpSocket"]
        port = handler.get("port")
        number, name = serving
        if port not in (number, name) and number is not None:
            return Probe(
                kind, "unsupported", problem=f"port {port} is not the container's serving port", **timing
            )
        return Probe(
            kind,
            action,
            port=local_port,
            path=handler.get("path", "/"),
            scheme=handler.get("scheme", "HTTP"),
            headers=tuple((h["name"], h["value"]) for h in handler.get("httpHeaders") or ()),
            **timing,
        )
    what = next((key for key in ("exec", "grpc") if key in raw), "this")
    return Probe(
        kind, "unsupported", problem=f"{what} probes are not supported by the local kubelet", **timing
    )


@dataclass(frozen=True)
class Count:
    """Consecutive results of one probe and the result they add up to (None: not decided yet)."""

    successes: int = 0
    failures: int = 0
    result: bool | None = None


def initial_count(kind: str) -> Count:
    # liveness counts as passing until it fails; readiness and startup as not yet passed
    return Count(result=True if kind == "livenessProbe" else None)


def record(count: Count, ok: bool, probe: Probe) -> Count:
    if ok:
        successes = count.successes + 1
        passed = successes >= probe.success_threshold
        return replace(count, successes=successes, failures=0, result=True if passed else count.result)
    failures = count.failures + 1
    failed = failures >= probe.failure_threshold
    return replace(count, successes=0, failures=failures, result=False if failed else count.result)
