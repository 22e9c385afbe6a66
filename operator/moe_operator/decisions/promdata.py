"""What the operator reads from Prometheus, as plain data the decision functions take. Pure.

A read that found nothing usable is a `NoData` with a reason, never a zero: a queue that reads 0 because
Prometheus is down would scale a busy deployment in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal

from moe_operator.decisions.stats import Distribution

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
class TrackWindow:
    """One track's requests (one revision's pods) over a span of time, from its engine's histograms.

    latency, ttft, tpot: end-to-end latency, time to first token and time per output token of the requests that
    ended in the span (every accepted request however it ended, for our runtime); outcomes: requests answered by
    HTTP status ("200", "503", ...; refusals by a draining pod are not among them); oldest_in_flight_s: the highest
    age of a request accepted and not finished seen in the span (None when the engine does not export it); pods:
    pods of the revision Prometheus scraped in the span. prompt_tokens and prompt_tokens_cached: prompt tokens the
    pods looked up in their prefix caches in the span, and those they found there (None when the engine does not
    count them). p99_override and error_ratio_override: the values of the user's `spec.slo.queries`, when set.
    """

    latency: Distribution = Distribution()
    ttft: Distribution = Distribution()
    tpot: Distribution = Distribution()
    outcomes: Mapping[str, float] = field(default_factory=dict)
    oldest_in_flight_s: float | None = None
    pods: int = 0
    prompt_tokens: float | None = None
    prompt_tokens_cached: float | None = None
    p99_override: float | None = None
    error_ratio_override: float | None = None

    @property
    def requests(self) -> float:
        """Requests that ended, as the latency histogram counts them: the evidence a window rests on."""
        return self.latency.count

    @property
    def computed_share(self) -> float | None:
        """The share of its prompt tokens the track computed, not found in a prefix cache; None if unknown."""
        if self.prompt_tokens is None or self.prompt_tokens_cached is None or self.prompt_tokens <= 0:
            return None
        return min(max(1 - self.prompt_tokens_cached / self.prompt_tokens, 0.0), 1.0)


@dataclass(frozen=True)
class Measurement:
    """One analysis window, (at - interval, at]: the candidate revision's track and its baseline (the stable
    track in the same window; None during bake or when the baseline has no pods), each in the window and over
    the analysis so far (`*_total`, from its start to `at`), so that relative comparisons gather evidence."""

    at: float
    candidate: TrackWindow
    candidate_total: TrackWindow
    baseline: TrackWindow | None = None
    baseline_total: TrackWindow | None = None


@dataclass(frozen=True)
class AdapterStates:
    """Per pod, each LoRA adapter's state as its runtime reports it: None when loaded, "" while loading, else
    the reason its last load failed."""

    pods: Mapping[str, Mapping[str, str | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        frozen = {pod: MappingProxyType(dict(states)) for pod, states in self.pods.items()}
        object.__setattr__(self, "pods", MappingProxyType(frozen))
