"""The PromQL the operator sends, built from templates. Pure.

Every runtime series carries the labels `namespace`, `model_deployment`, `revision` and `pod` (DESIGN.md).

Templates (the defaults below, and the user's overrides `spec.autoscaling.query`,
`spec.slo.queries.p99Latency` and `spec.slo.queries.errorRatio`) may use these placeholders:

  {namespace}  the ModelDeployment's namespace     (escaped: put it inside double quotes)
  {name}       the ModelDeployment's name          (escaped: put it inside double quotes)
  {revision}   the canary's revision hash          (escaped; SLO queries only)
  {window}     a PromQL duration such as 30s: the queue's averaging window, or the analysis interval
  {lookback}   a PromQL duration: how far back the queue query looks for stale series (queue query only)

Values are escaped as the contents of a PromQL string literal, every character other than letters,
digits, `_`, `.` and `-` as a \\x or \\u escape, so a namespace or name can never end the string it sits in
and inject PromQL. Inside a regex matcher (=~) they are not regex-escaped. Any other `{word}` is an error.

The queue override must return one value per pod (a `pod` label): an instant vector, used as it is, such
as `avg by (pod) (avg_over_time(my_queue{namespace="{namespace}",model_deployment="{name}"}[{window}]))`,
or a range vector of raw samples, which the operator averages per pod over the window as it does for the
default. The SLO overrides must return a single value for the window: the p99 latency in seconds, or the
ratio of failed requests (0 to 1).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from moe_operator.decisions.engine_metrics import ENGINES, MOE_RUNTIME, EngineMetrics

_MD = 'namespace="{namespace}",model_deployment="{name}"'
_REVISION = _MD + ',revision="{revision}"'
_TRACKS = _MD + ',revision=~"{revisions}"'


# Every pod's LoRA adapters, in one query: loaded (1/0) and, for a failed load, the reason.
ADAPTER_LOADED = "moe_runtime_lora_adapter_loaded"
ADAPTER_LOAD_ERROR = "moe_runtime_lora_adapter_load_error"
ADAPTER_STATES = '{__name__=~"' + ADAPTER_LOADED + "|" + ADAPTER_LOAD_ERROR + '",' + _MD + "}"

# What the routers of a ModelDeployment report (spec.routing), in one query: held and in-flight requests, and
# when the last request arrived, one series per router pod.
ROUTER_HELD = "moe_router_held_requests"
ROUTER_IN_FLIGHT = "moe_router_in_flight_requests"
ROUTER_LAST_REQUEST = "moe_router_last_request_timestamp_seconds"
ROUTER_DEMAND = (
    '{__name__=~"' + "|".join((ROUTER_HELD, ROUTER_IN_FLIGHT, ROUTER_LAST_REQUEST)) + '",' + _MD + "}"
)

ESCAPED = ("namespace", "name", "revision")
PLACEHOLDERS = (*ESCAPED, "window", "lookback")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PLAIN = re.compile(r"[A-Za-z0-9_.-]")


class TemplateError(ValueError):
    """A template names a placeholder that is unknown or has no value in its context."""


def escape(value: str) -> str:
    """`value` as the contents of a PromQL string literal (single or double quoted)."""
    out = []
    for char in value:
        if _PLAIN.fullmatch(char):
            out.append(char)
        elif ord(char) < 0x80:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return "".join(out)


def duration(seconds: float) -> str:
    """A PromQL duration: whole seconds as `30s`, anything finer in milliseconds."""
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {seconds}")
    millis = max(round(seconds * 1000), 1)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def render(template: str, values: Mapping[str, str], raw: tuple[str, ...] = ()) -> str:
    """`template` with its placeholders replaced; namespace, name and revision escaped (not those in `raw`,
    which the caller escaped already)."""

    def substitute(match: re.Match[str]) -> str:
        key = match.group(1)
        if key in raw:
            return values[key]
        if key not in PLACEHOLDERS:
            raise TemplateError(f"unknown placeholder {{{key}}} (known: {', '.join(PLACEHOLDERS)})")
        if key not in values:
            raise TemplateError(f"placeholder {{{key}}} has no value in this query")
        return escape(values[key]) if key in ESCAPED else values[key]

    return _PLACEHOLDER.sub(substitute, template)


def queue_depth(
    namespace: str,
    name: str,
    window_s: float,
    lookback_s: float,
    template: str | None = None,
    metrics: EngineMetrics = ENGINES[MOE_RUNTIME],
) -> str:
    values = {
        "namespace": namespace,
        "name": name,
        "window": duration(window_s),
        "lookback": duration(lookback_s),
    }
    # by default raw samples per pod: the operator averages the window itself and sees how old the newest is
    return render(template or metrics.queue_depth + "{" + _MD + "}[{lookback}]", values)


@dataclass(frozen=True)
class SLOQueries:
    """User overrides of the SLO queries (spec.slo.queries); None keeps the default."""

    p99_latency: str | None = None
    error_ratio: str | None = None


@dataclass(frozen=True)
class TrackQueries:
    """The queries that measure every track of `revisions` over one span, each answering one series per
    revision (one per revision and bucket for the histograms)."""

    pods: str
    histograms: Mapping[str, str]  # "latency", "ttft", "tpot" -> buckets' increase by (revision, le)
    outcomes: str  # answered requests' increase by (revision, status)
    in_flight: str | None  # the oldest unfinished request's age by revision
    prefix_cache: Mapping[str, str]  # "queries", "hits" -> prompt tokens' increase by revision (if counted)
    p99_overrides: Mapping[str, str]  # revision -> the user's p99 query
    error_ratio_overrides: Mapping[str, str]


def track_queries(
    namespace: str,
    name: str,
    revisions: list[str],
    span_s: float,
    metrics: EngineMetrics,
    overrides: SLOQueries | None = None,
) -> TrackQueries:
    """Queries over (t - span, t] evaluated at t."""
    overrides = overrides or SLOQueries()
    window = duration(span_s)
    values = {"namespace": namespace, "name": name, "window": window}
    selector = render(
        _TRACKS, {**values, "revisions": "|".join(escape(r) for r in revisions)}, raw=("revisions",)
    )
    outcome_selector = selector + ("," + metrics.outcome_selector if metrics.outcome_selector else "")
    histograms = {
        key: f"sum by (revision, le) (increase({base}_bucket{{{selector}}}[{window}]))"
        for key, base in metrics.histograms().items()
    }

    def per_revision(template: str | None) -> dict[str, str]:
        if not template:
            return {}
        return {r: render(template, {**values, "revision": r}) for r in revisions}

    return TrackQueries(
        pods=f"count by (revision) (count_over_time({metrics.queue_depth}{{{selector}}}[{window}]))",
        histograms=histograms,
        outcomes=(
            f"sum by (revision, {metrics.outcome_label}) "
            f"(increase({metrics.outcomes}{{{outcome_selector}}}[{window}]))"
        ),
        in_flight=(
            f"max by (revision) (max_over_time({metrics.in_flight_age}{{{selector}}}[{window}]))"
            if metrics.in_flight_age
            else None
        ),
        prefix_cache=(
            {
                "queries": f"sum by (revision) (increase({metrics.prefix_cache_queries}{{{selector}}}[{window}]))",
                "hits": f"sum by (revision) (increase({metrics.prefix_cache_hits}{{{selector}}}[{window}]))",
            }
            if metrics.prefix_cache_queries and metrics.prefix_cache_hits
            else {}
        ),
        p99_overrides=per_revision(overrides.p99_latency),
        error_ratio_overrides=per_revision(overrides.error_ratio),
    )


def adapter_states(namespace: str, name: str) -> str:
    return render(ADAPTER_STATES, {"namespace": namespace, "name": name})


def router_demand(namespace: str, name: str) -> str:
    return render(ROUTER_DEMAND, {"namespace": namespace, "name": name})
