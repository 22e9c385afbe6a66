"""PromQL templates: the default queries, placeholders, and escaping that no label value can break out of."""

from __future__ import annotations

import ast
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_operator.decisions import promql
from moe_operator.decisions.engine_metrics import ENGINES


def test_default_queue_query_selects_one_model_deployment_raw_samples():
    query = promql.queue_depth("team-a", "chat", window_s=30, lookback_s=120)
    assert query == 'moe_runtime_queue_depth{namespace="team-a",model_deployment="chat"}[120s]'


def test_queue_override_gets_its_placeholders():
    template = 'avg by (pod) (avg_over_time(my_queue{ns="{namespace}",md="{name}"}[{window}]))'
    query = promql.queue_depth("team-a", "chat", window_s=30, lookback_s=120, template=template)
    assert query == 'avg by (pod) (avg_over_time(my_queue{ns="team-a",md="chat"}[30s]))'


def test_track_queries_answer_per_revision_over_the_span():
    queries = promql.track_queries("team-a", "chat", ["5f7c9d", "0a1b2c"], 60, ENGINES["moe-runtime"])
    selector = '{namespace="team-a",model_deployment="chat",revision=~"5f7c9d|0a1b2c"}'
    assert queries.histograms["latency"] == (
        f"sum by (revision, le) (increase(moe_runtime_request_latency_seconds_bucket{selector}[60s]))"
    )
    assert set(queries.histograms) == {"latency", "ttft", "tpot"}
    assert (
        queries.outcomes == f"sum by (revision, status) (increase(moe_runtime_requests_total{selector}[60s]))"
    )
    assert (
        queries.in_flight
        == f"max by (revision) (max_over_time(moe_runtime_oldest_request_age_seconds{selector}[60s]))"
    )
    assert queries.pods == f"count by (revision) (count_over_time(moe_runtime_queue_depth{selector}[60s]))"
    assert queries.prefix_cache == {
        "queries": f"sum by (revision) (increase(moe_runtime_prefix_cache_queries_total{selector}[60s]))",
        "hits": f"sum by (revision) (increase(moe_runtime_prefix_cache_hits_total{selector}[60s]))",
    }
    assert queries.p99_overrides == {} and queries.error_ratio_overrides == {}


def test_vllm_tracks_use_vllms_names_and_its_grouped_http_statuses():
    queries = promql.track_queries("ns", "md", ["abc"], 30, ENGINES["vllm"])
    assert "vllm:request_time_per_output_token_seconds_bucket" in queries.histograms["tpot"]
    assert (
        'http_requests_total{namespace="ns",model_deployment="md",revision=~"abc",handler=~'
        in queries.outcomes
    )
    assert queries.in_flight is None, "vLLM exports no age of its oldest request"
    assert "increase(vllm:prefix_cache_hits_total{" in queries.prefix_cache["hits"]
    assert promql.track_queries("ns", "md", ["abc"], 30, ENGINES["sglang"]).prefix_cache == {}, "not counted"
    assert promql.queue_depth("ns", "md", 30, 120, metrics=ENGINES["vllm"]).startswith(
        "vllm:num_requests_waiting{"
    )


def test_slo_overrides_are_rendered_per_revision():
    overrides = promql.SLOQueries(
        p99_latency='my_p99{rev="{revision}"}[{window}]', error_ratio='my_errors{ns="{namespace}"}'
    )
    queries = promql.track_queries("ns", "md", ["abc", "def"], 90, ENGINES["moe-runtime"], overrides)
    assert queries.p99_overrides == {"abc": 'my_p99{rev="abc"}[90s]', "def": 'my_p99{rev="def"}[90s]'}
    assert queries.error_ratio_overrides["abc"] == 'my_errors{ns="ns"}'


@pytest.mark.parametrize(
    "template, message",
    [
        ('x{ns="{nmespace}"}', r"unknown placeholder \{nmespace\}"),
        ('x{rev="{revision}"}', r"placeholder \{revision\} has no value"),  # no revision in a queue query
    ],
)
def test_template_errors_name_the_placeholder(template, message):
    with pytest.raises(promql.TemplateError, match=message):
        promql.queue_depth("ns", "md", 30, 120, template=template)


def test_promql_braces_are_not_placeholders():
    template = 'sum by (pod) (x{job="a"}) or on() vector(0) + {__name__=~"y"}'
    assert promql.render(template, {}) == template


@pytest.mark.parametrize(
    "seconds, text",
    [(30, "30s"), (1, "1s"), (2.5, "2500ms"), (0.001, "1ms"), (3600, "3600s"), (0.0004, "1ms")],
)
def test_durations(seconds, text):
    assert promql.duration(seconds) == text


def test_a_duration_must_be_positive():
    with pytest.raises(ValueError):
        promql.duration(0)


@pytest.mark.parametrize(
    "value",
    [
        'x"} or vector(1) or {a="',
        "back\\slash",
        "it's",
        "new\nline",
        "tick`",
        "{namespace}",
        "ünïcode ✓ 𝄞",
    ],
)
def test_values_cannot_end_their_string(value):
    query = promql.queue_depth(value, "md", 30, 120)
    literal = re.match(r'moe_runtime_queue_depth\{namespace=("[^"]*"),', query)
    assert literal is not None, query
    assert ast.literal_eval(literal.group(1)) == value


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_escaped_values_read_back_exactly_in_either_quote(value):
    """PromQL string escapes are Go's; \\x, \\u and \\U mean the same in Python literals."""
    escaped = promql.escape(value)
    assert re.fullmatch(r"[A-Za-z0-9_.\\-]*", escaped)
    assert ast.literal_eval(f'"{escaped}"') == value
    assert ast.literal_eval(f"'{escaped}'") == value


@settings(max_examples=300, deadline=None)
@given(st.text(), st.text(), st.text())
def test_rendered_queries_keep_their_shape_whatever_the_values(namespace, name, revision):
    """Blank out every string literal: what is left is the same query as for plain values."""
    metrics = ENGINES["moe-runtime"]
    plain = promql.track_queries("a", "b", ["c"], 60, metrics)
    odd = promql.track_queries(namespace, name, [revision], 60, metrics)
    for field in ("pods", "outcomes", "in_flight"):
        assert _skeleton(getattr(odd, field)) == _skeleton(getattr(plain, field))
    for key in plain.histograms:
        assert _skeleton(odd.histograms[key]) == _skeleton(plain.histograms[key])


def _skeleton(query: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', query)
