"""What the operator reads from Prometheus, as plain data the decision functions take. Pure.

A read that found nothing usable is a `NoData` with a reason, never a zero: a queue that reads 0 because
Prometheus is down would scale a busy deployment in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal

PROMETHEUS_UNAVAILABLE: Final = "PrometheusUnavailable"  # connection refused, timeout, TLS failure, 502-504
QUERY_FAILED: Final = (
    "QueryFailed"  # Prometheus refused or failed the query, or its answer has the wrong shape
)
NO_SERIES: Final = "NoSeries"  # the query matched nothing
STALE_SERIES: Final = "StaleSeries"  # series exist, but their newest samples are too old to act on

NoDataReason = Literal["PrometheusUnavailable", "QueryFailed", "NoSeries", "StaleSeries"]
NO_DATA_REASONS: Final = (PROMETHEUS_UNAVAILABLE, QUERY_FAILED, NO_SERIES, STALE_SERIES)


@dataclass(frozen=True)
class NoData:
    """Why a read gave nothing to decide on. `reason` is CamelCase: it becomes a condition's reason."""

    reason: NoDataReason
    message: str


@dataclass(frozen=True)
class PodSamples:
    """Queue depth per pod (pod name -> requests waiting, averaged over a short window)."""

    values: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # read-only, so that a frozen dataclass really cannot change under a caller
        object.__setattr__(self, "values", MappingProxyType(dict(self.values)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PodSamples) and dict(self.values) == dict(other.values)

    def __hash__(self) -> int:
        return hash(frozenset(self.values.items()))


@dataclass(frozen=True)
class Measurement:
    """One canary analysis window of one revision, (at - interval, at].

    requests: requests the revision answered in the window (429 excluded: a full queue is the deployment's
    capacity, not the revision's fault); p99_latency_s: from the latency histogram of finished generations,
    None when none finished; error_ratio: 5xx among those requests, None without requests;
    oldest_in_flight_s: the highest age of an accepted, unfinished request seen in the window, None when
    the runtime does not export it.
    """

    at: float
    requests: float
    p99_latency_s: float | None
    error_ratio: float | None
    oldest_in_flight_s: float | None = None


@dataclass(frozen=True)
class AdapterStates:
    """Per pod, each LoRA adapter's state as its runtime reports it: None when loaded, "" while loading, else
    the reason its last load failed."""

    pods: Mapping[str, Mapping[str, str | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        frozen = {pod: MappingProxyType(dict(states)) for pod, states in self.pods.items()}
        object.__setattr__(self, "pods", MappingProxyType(frozen))
