"""The probes of every serving pod the operator renders (our runtime, vLLM, SGLang, the adapter sidecar), and
how long their liveness probe can take to restart a container that stopped answering: a canary is analysed and
a promoted revision baked at least that long (slo.py), so that no revision is promoted before its pods could
have been seen to crash. Pure."""

from __future__ import annotations

from typing import Any

PROBE_PERIOD_SECONDS = 10
PROBE_TIMEOUT_SECONDS = 5
LIVENESS_FAILURES = 3
# A pod serves as soon as its weights are loaded: a short startup period brings new capacity in within
# seconds of /ready (with 10 s it waited 4 s on average), which is what a scale-out is for.
STARTUP_PROBE_PERIOD_SECONDS = 2


def http_probe(
    path: str, failures: int, period: int = PROBE_PERIOD_SECONDS, port: str = "http"
) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": PROBE_TIMEOUT_SECONDS,
        "failureThreshold": failures,
    }


def liveness_probe(port: str = "http") -> dict[str, Any]:
    return http_probe("/health", failures=LIVENESS_FAILURES, port=port)


def liveness_window_seconds(probe: dict[str, Any]) -> float:
    """From Ready to the restart of a container that stops answering then: the liveness worker's first probe
    comes up to a period after the startup probe passed, then `failureThreshold` probes fail, the last after its
    timeout (Kubernetes' defaults where a field is absent)."""
    period = probe.get("periodSeconds", 10)
    return (
        probe.get("initialDelaySeconds", 0)
        + (probe.get("failureThreshold", 3) + 1) * period
        + probe.get("timeoutSeconds", 1)
    )


LIVENESS_WINDOW_SECONDS = liveness_window_seconds(liveness_probe())  # 45 s
