"""The operator's Prometheus reads, through prometheus-api-client.

Every read returns data or a `NoData` with its reason, never a zero for missing data:
  connection refused, timeout, TLS failure, 502/503/504 from a proxy        -> PrometheusUnavailable
  Prometheus refused the query (bad PromQL, 4xx, its own 5xx), odd answer  -> QueryFailed
  nothing matched                                                           -> NoSeries
  series there, but their newest samples older than twice the window        -> StaleSeries
No retries inside a read: the caller evaluates again on its next pass.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests
import urllib3
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from moe_operator.decisions import promql
from moe_operator.decisions.autoscale import RouterDemand
from moe_operator.decisions.engine_metrics import ENGINES, MOE_RUNTIME, EngineMetrics
from moe_operator.decisions.promdata import (
    NO_SERIES,
    PROMETHEUS_UNAVAILABLE,
    QUERY_FAILED,
    STALE_SERIES,
    AdapterStates,
    NoData,
    PodSamples,
    TrackWindow,
)
from moe_operator.decisions.stats import Distribution
from moe_operator.io.metrics import OperatorMetrics
from moe_operator.timestamps import to_time

# The queue query looks back this many windows, so that a series that stopped shows as stale (not
# absent) for a while; samples older than STALE_AFTER windows are not acted on.
LOOKBACK_WINDOWS = 4
STALE_AFTER_WINDOWS = 2
MESSAGE_LIMIT = 300
_UNAVAILABLE_STATUSES = (502, 503, 504)

logger = logging.getLogger(__name__)


class BearerTokenFromFile(requests.auth.AuthBase):
    """`Authorization: Bearer <token>`, read from the file on every request: projected service account
    tokens rotate."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        try:
            token = self.path.read_text().strip()
        except OSError as err:
            raise TokenFileError(f"cannot read the bearer token file {self.path}: {err.strerror}") from err
        request.headers["Authorization"] = f"Bearer {token}"
        return request


class TokenFileError(Exception):
    pass


class Prometheus:
    def __init__(
        self,
        url: str,
        *,
        bearer_token_file: str | Path | None = None,
        ca_file: str | Path | None = None,
        insecure_skip_verify: bool = False,
        timeout_s: float = 5.0,
        metrics: OperatorMetrics | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._metrics = metrics or OperatorMetrics()
        session = requests.Session()
        session.verify = False if insecure_skip_verify else str(ca_file) if ca_file else True
        if insecure_skip_verify:
            # said once here rather than by urllib3 on every query
            logger.warning("not verifying the TLS certificate of Prometheus at %s", self.url)
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self._client = PrometheusConnect(
            url=self.url,
            session=session,
            retry=Retry(total=0, raise_on_status=False),
            auth=BearerTokenFromFile(bearer_token_file) if bearer_token_file else None,
            timeout=timeout_s,
        )

    def close(self) -> None:
        self._client.close()

    def queue_depth(
        self,
        namespace: str,
        name: str,
        window_s: float,
        template: str | None = None,
        now: float | None = None,
        metrics: EngineMetrics | None = None,
    ) -> PodSamples | NoData:
        """Requests waiting per pod of the ModelDeployment, each pod's mean over the last `window_s`.
        One HTTP query. `template`: the user's override (spec.autoscaling.query)."""
        now = time.time() if now is None else now
        try:
            query = promql.queue_depth(
                namespace,
                name,
                window_s,
                LOOKBACK_WINDOWS * window_s,
                template,
                metrics or ENGINES[MOE_RUNTIME],
            )
        except promql.TemplateError as err:
            return self._failed(NoData(QUERY_FAILED, f"spec.autoscaling.query: {err}"))
        result = self._query("queue_depth", query, now)
        if isinstance(result, NoData):
            return self._failed(result)
        samples = _per_pod(result, now, window_s, f"{namespace}/{name}")
        return self._failed(samples) if isinstance(samples, NoData) else samples

    def adapter_states(self, namespace: str, name: str, now: float | None = None) -> AdapterStates | NoData:
        """Every pod's LoRA adapters: loaded, loading, or failed with a reason. One HTTP query."""
        now = time.time() if now is None else now
        result = self._query("adapter_states", promql.adapter_states(namespace, name), now)
        if isinstance(result, NoData):
            return self._failed(result)
        states = _adapter_states(result, f"{namespace}/{name}")
        return self._failed(states) if isinstance(states, NoData) else states

    def router_demand(self, namespace: str, name: str, now: float | None = None) -> RouterDemand | NoData:
        """What the ModelDeployment's routers hold, answer, and when they last got a request. One query."""
        now = time.time() if now is None else now
        result = self._query("router_demand", promql.router_demand(namespace, name), now)
        if isinstance(result, NoData):
            return self._failed(result)
        demand = _router_demand(result, now, f"{namespace}/{name}")
        return self._failed(demand) if isinstance(demand, NoData) else demand

    def tracks(
        self,
        namespace: str,
        name: str,
        revisions: list[str],
        end: float,
        span_s: float,
        metrics: EngineMetrics,
        overrides: promql.SLOQueries | None = None,
    ) -> dict[str, TrackWindow] | NoData:
        """Each revision's requests over (end - span_s, end]: its histograms, answered requests by status,
        oldest unfinished request, pods scraped, prompt tokens looked up in and found in prefix caches. About
        eight HTTP queries, whatever the number of revisions. A revision none of whose pods Prometheus scraped in
        the span is missing from the answer."""
        measured = self._tracks(namespace, name, revisions, end, span_s, metrics, overrides)
        return self._failed(measured) if isinstance(measured, NoData) else measured

    def _tracks(self, namespace, name, revisions, end, span_s, metrics, overrides):
        try:
            queries = promql.track_queries(namespace, name, revisions, span_s, metrics, overrides)
        except promql.TemplateError as err:
            return NoData(QUERY_FAILED, f"spec.slo.queries: {err}")
        pods = self._by_labels("tracks", queries.pods, end, ("revision",))
        if isinstance(pods, NoData):
            return pods
        scraped = {key[0]: value for key, value in pods.items() if value > 0}
        if not scraped:
            return NoData(
                NO_SERIES,
                f"no {metrics.queue_depth} series of revision(s) {', '.join(revisions)} of {namespace}/{name} in "
                f"the {span_s:g}s before {to_time(end)}: does Prometheus scrape their pods?",
            )
        buckets: dict[str, dict[str, list[tuple[float, float]]]] = {}
        for key, query in queries.histograms.items():
            found = self._by_labels("tracks", query, end, ("revision", "le"))
            if isinstance(found, NoData):
                return found
            for (revision, le), value in found.items():
                bound = _bound(le)
                if bound is not None:
                    buckets.setdefault(revision, {}).setdefault(key, []).append((bound, value))
        outcomes = self._by_labels("tracks", queries.outcomes, end, ("revision", metrics.outcome_label))
        if isinstance(outcomes, NoData):
            return outcomes
        oldest: dict[str, float] = {}
        if queries.in_flight:
            found = self._by_labels("tracks", queries.in_flight, end, ("revision",))
            if isinstance(found, NoData):
                return found
            oldest = {key[0]: value for key, value in found.items()}
        prompt_tokens: dict[str, dict[str, float]] = {}
        for key, query in queries.prefix_cache.items():
            found = self._by_labels("tracks", query, end, ("revision",))
            if isinstance(found, NoData):
                return found
            prompt_tokens[key] = {labels[0]: value for labels, value in found.items()}
        tracks = {}
        for revision in revisions:
            if revision not in scraped:
                continue
            overridden = {}
            for field, templates in (
                ("p99_override", queries.p99_overrides),
                ("error_ratio_override", queries.error_ratio_overrides),
            ):
                if revision in templates:
                    value = self._single("tracks", templates[revision], end, f"spec.slo.queries ({field})")
                    if isinstance(value, NoData):
                        return value
                    overridden[field] = value
            histograms = {
                key: _cumulative_to_distribution(points) for key, points in buckets.get(revision, {}).items()
            }
            tracks[revision] = TrackWindow(
                **histograms,
                outcomes={status: v for (r, status), v in outcomes.items() if r == revision and v > 0},
                oldest_in_flight_s=oldest.get(revision) if queries.in_flight else None,
                pods=round(scraped[revision]),
                prompt_tokens=prompt_tokens.get("queries", {}).get(revision),
                prompt_tokens_cached=prompt_tokens.get("hits", {}).get(revision),
                **overridden,
            )
        return tracks

    def _by_labels(
        self, kind: str, query: str, at: float, labels: tuple[str, ...]
    ) -> dict[tuple[str, ...], float] | NoData:
        result = self._query(kind, query, at)
        if isinstance(result, NoData):
            return result
        if _is_scalar(result):
            return NoData(QUERY_FAILED, f"expected series by {', '.join(labels)}, got a scalar: {query}")
        out: dict[tuple[str, ...], float] = {}
        for item in result:
            try:
                key = tuple(str(item["metric"].get(label, "")) for label in labels)
                value = _finite(item["value"][1])
            except (KeyError, IndexError, TypeError, AttributeError):
                return NoData(QUERY_FAILED, f"unexpected series in the answer to {query}: {_excerpt(item)}")
            if value is not None:
                out[key] = out.get(key, 0.0) + value
        return out

    def _single(self, kind: str, query: str, at: float, what: str) -> float | None | NoData:
        """The one value a query returns; None when it returns nothing or NaN."""
        result = self._query(kind, query, at)
        if isinstance(result, NoData):
            return result
        if len(result) > 1 and not _is_scalar(result):
            labels = ", ".join(str(item.get("metric", {})) for item in result[:3])
            return NoData(
                QUERY_FAILED, f"{what}: {len(result)} series where one value was expected ({labels})"
            )
        if not result:
            return None
        try:
            return _finite(result[1] if _is_scalar(result) else result[0]["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            return NoData(QUERY_FAILED, f"{what}: expected an instant vector, got {_excerpt(result)}")

    def _query(self, kind: str, query: str, at: float) -> list[Any] | NoData:
        started = time.perf_counter()
        try:
            # Prometheus takes the timeout as float seconds ("0.5"); "0.5s" would be a 400
            params = {"time": f"{at:.3f}", "timeout": f"{self.timeout_s:g}"}
            return self._client.custom_query(query, params=params)
        except requests.exceptions.JSONDecodeError:
            return NoData(QUERY_FAILED, f"{self.url} did not answer as the Prometheus API does (not JSON)")
        except requests.exceptions.RequestException as err:  # refused, timed out, TLS, proxy
            return NoData(PROMETHEUS_UNAVAILABLE, f"{self.url}: {self._connection_problem(err)}")
        except PrometheusApiClientException as err:
            return _http_failure(str(err), self.url)
        except TokenFileError as err:
            return NoData(QUERY_FAILED, str(err))
        except (KeyError, TypeError) as err:
            return NoData(QUERY_FAILED, f"{self.url} did not answer as the Prometheus API does: {err!r}")
        finally:
            self._metrics.prometheus_query_duration.labels(query=kind).observe(time.perf_counter() - started)

    def _connection_problem(self, err: requests.exceptions.RequestException) -> str:
        # requests wraps urllib3's MaxRetryError, whose reason is the actual failure
        cause = getattr(err.args[0], "reason", err) if err.args else err
        # urllib3's NewConnectionError (refused, unknown host) is a ConnectTimeoutError too
        timed_out = isinstance(err, requests.exceptions.Timeout) or isinstance(
            cause, urllib3.exceptions.TimeoutError
        )
        if timed_out and not isinstance(cause, urllib3.exceptions.NewConnectionError):
            return f"no answer within {self.timeout_s:g}s"
        kind = "TLS failed" if isinstance(err, requests.exceptions.SSLError) else "cannot connect"
        # urllib3 starts some messages with the connection object's repr
        return f"{kind}: {_excerpt(re.sub(r'^<[^>]*>: ', '', str(cause)))}"

    def _failed(self, no_data: NoData) -> NoData:
        self._metrics.prometheus_query_failures.labels(reason=no_data.reason).inc()
        return no_data


def _per_pod(result: Sequence[Any], now: float, window_s: float, what: str) -> PodSamples | NoData:
    """Each pod's mean over (now - window, now]; its newest sample when a scrape came late; nothing for a
    pod whose newest sample is older than STALE_AFTER windows."""
    if _is_scalar(result):
        return NoData(QUERY_FAILED, "the queue query returned a scalar; it must return one value per pod")
    if not result:
        return NoData(NO_SERIES, f"no queue depth series for {what}: does Prometheus scrape its pods?")
    samples: dict[str, list[tuple[float, float]]] = {}
    for item in result:
        labels = item.get("metric", {}) if isinstance(item, dict) else {}
        pod = labels.get("pod")
        if not pod:
            return NoData(
                QUERY_FAILED,
                f"the queue query returned a series without a pod label ({_excerpt(labels)}): "
                "it must return one value per pod (by (pod))",
            )
        try:
            points = item["values"] if "values" in item else [item["value"]]
            parsed = [(float(t), _finite(v)) for t, v in points]
        except (KeyError, TypeError, ValueError):
            return NoData(QUERY_FAILED, f"unexpected series in the queue query's answer: {_excerpt(item)}")
        samples.setdefault(pod, []).extend((t, v) for t, v in parsed if v is not None)
    values, newest_stale = {}, None
    for pod, points in samples.items():
        if not points:
            continue
        newest = max(t for t, _ in points)
        if now - newest > STALE_AFTER_WINDOWS * window_s:
            newest_stale = newest if newest_stale is None else max(newest, newest_stale)
            continue
        recent = [v for t, v in points if t > now - window_s]
        values[pod] = sum(recent) / len(recent) if recent else _latest(points)
    if values:
        return PodSamples(values)
    if newest_stale is not None:
        return NoData(
            STALE_SERIES,
            f"the newest queue sample of {what} is {now - newest_stale:.0f}s old, older than twice the "
            f"{window_s:g}s window: Prometheus stopped scraping its pods?",
        )
    return NoData(NO_SERIES, f"the queue depth series of {what} hold no numbers (NaN)")


def _adapter_states(result: Sequence[Any], what: str) -> AdapterStates | NoData:
    if _is_scalar(result) or not result:
        return NoData(
            NO_SERIES,
            f"no {promql.ADAPTER_LOADED} series for {what}: do its pods run, and does Prometheus scrape them?",
        )
    loaded: dict[str, dict[str, str | None]] = {}
    errors: dict[tuple[str, str], str] = {}
    try:
        for item in result:
            labels, value = item["metric"], float(item["value"][1])
            pod, adapter = labels["pod"], labels["adapter"]
            if labels.get("__name__") == promql.ADAPTER_LOAD_ERROR:
                if value == 1:
                    errors[pod, adapter] = labels.get("reason") or "other"
            else:
                loaded.setdefault(pod, {})[adapter] = None if value == 1 else ""
    except (KeyError, IndexError, TypeError, ValueError):
        return NoData(
            QUERY_FAILED, f"unexpected series in the adapter states of {what}: {_excerpt(result[:3])}"
        )
    for (pod, adapter), reason in errors.items():  # the runtime exports an error only while not loaded
        loaded.setdefault(pod, {})[adapter] = reason
    return AdapterStates(loaded)


def _router_demand(result: Sequence[Any], now: float, what: str) -> RouterDemand | NoData:
    totals = {promql.ROUTER_HELD: 0.0, promql.ROUTER_IN_FLIGHT: 0.0}
    last: float | None = None
    try:
        for item in result if not _is_scalar(result) else ():
            name, value = item["metric"].get("__name__"), _finite(item["value"][1])
            if value is None:
                continue
            if name == promql.ROUTER_LAST_REQUEST:
                last = value if last is None else max(last, value)
            elif name in totals:
                totals[name] += value
    except (KeyError, IndexError, TypeError, AttributeError):
        return NoData(
            QUERY_FAILED, f"unexpected series in the router demand of {what}: {_excerpt(result[:3])}"
        )
    if last is None:
        return NoData(
            NO_SERIES,
            f"no {promql.ROUTER_LAST_REQUEST} series for {what}: do its routers run, and are they scraped?",
        )
    return RouterDemand(
        held=round(totals[promql.ROUTER_HELD]),
        in_flight=round(totals[promql.ROUTER_IN_FLIGHT]),
        idle_s=max(0.0, now - last),
    )


def _http_failure(text: str, url: str) -> NoData:
    """prometheus-api-client raises `HTTP Status Code <n> (<body as bytes repr>)` for a non-200 answer."""
    match = re.match(r"HTTP Status Code (\d+) \((.*)\)$", text, re.DOTALL)
    if match is None:
        return NoData(QUERY_FAILED, f"{url}: {_excerpt(text)}")
    status, body = int(match.group(1)), match.group(2)
    with contextlib.suppress(ValueError, SyntaxError, AttributeError):
        body = ast.literal_eval(body).decode(errors="replace")
    try:
        answer = json.loads(body)
        detail = f"{answer['errorType']}: {answer['error']}"
    except (ValueError, TypeError, KeyError):
        if status in _UNAVAILABLE_STATUSES:
            return NoData(PROMETHEUS_UNAVAILABLE, f"{url} answered {status}: {_excerpt(body)}")
        detail = _excerpt(body)
    return NoData(QUERY_FAILED, f"Prometheus answered {status}: {detail}")


def _is_scalar(result: Any) -> bool:
    return isinstance(result, list) and len(result) == 2 and not isinstance(result[0], dict)


def _finite(raw: Any) -> float | None:
    value = float(raw)
    return value if math.isfinite(value) else None


def _latest(points: Sequence[tuple[float, float]]) -> float:
    return max(points)[1]


def _excerpt(value: Any) -> str:
    text = str(value).strip()
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


def _bound(le: str) -> float | None:
    try:
        return float(le)  # "+Inf" parses as inf
    except ValueError:
        return None


def _cumulative_to_distribution(points: list[tuple[float, float]]) -> Distribution:
    """Prometheus' cumulative buckets (le -> observations at or below) to per-bucket counts."""
    points.sort()
    per_bucket, below = [], 0.0
    for bound, cumulative in points:
        per_bucket.append((bound, max(0.0, cumulative - below)))
        below = max(below, cumulative)
    return Distribution.of_buckets(per_bucket)
