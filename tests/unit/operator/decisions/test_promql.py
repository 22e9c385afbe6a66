"""PromQL templates: the default queries, placeholders, and escaping that no label value can break out of."""

from __future__ import annotations

import ast
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_operator.decisions import promql


def test_default_queue_query_selects_one_model_deployment_raw_samples():
    query = promql.queue_depth("team-a", "chat", window_s=30, lookback_s=120)
    assert query == 'moe_runtime_queue_depth{namespace="team-a",model_deployment="chat"}[120s]'


def test_queue_override_gets_its_placeholders():
    template = 'avg by (pod) (avg_over_time(my_queue{ns="{namespace}",md="{name}"}[{window}]))'
    query = promql.queue_depth("team-a", "chat", window_s=30, lookback_s=120, template=template)
    assert query == 'avg by (pod) (avg_over_time(my_queue{ns="team-a",md="chat"}[30s]))'


def test_canary_queries_select_the_revision_over_the_interval():
    queries = promql.canary_window("team-a", "chat", "5f7c9d", interval_s=60)
    selector = '{namespace="team-a",model_deployment="chat",revision="5f7c9d"}'
    assert queries.p99_latency == (
        f"histogram_quantile(0.99, sum by (le) (increase(moe_runtime_request_latency_seconds_bucket{selector}[60s])))"
    )
    assert (
        queries.requests_by_status == f"sum by (status) (increase(moe_runtime_requests_total{selector}[60s]))"
    )
    assert (
        queries.oldest_in_flight
        == f"max(max_over_time(moe_runtime_oldest_request_age_seconds{selector}[60s]))"
    )
    assert queries.pods == f"count(count_over_time(moe_runtime_queue_depth{selector}[60s]))"
    assert queries.error_ratio is None


def test_slo_overrides_replace_the_defaults():
    overrides = promql.SLOQueries(
        p99_latency='my_p99{rev="{revision}"}[{window}]', error_ratio='my_errors{ns="{namespace}"}'
    )
    queries = promql.canary_window("ns", "md", "abc", interval_s=90, overrides=overrides)
    assert queries.p99_latency == 'my_p99{rev="abc"}[90s]'
    assert queries.error_ratio == 'my_errors{ns="ns"}'


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
    plain = promql.canary_window("a", "b", "c", interval_s=60)
    odd = promql.canary_window(namespace, name, revision, interval_s=60)
    for field in ("pods", "requests_by_status", "p99_latency", "oldest_in_flight"):
        assert _skeleton(getattr(odd, field)) == _skeleton(getattr(plain, field))


def _skeleton(query: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', query)
