import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from moe_runtime.router.load import KV_CACHE, LORA_INFO, RUNNING, WAITING, NotMetrics, PodLoad, parse_load

VLLM_STYLE = """# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="qwen"} 3.0
vllm:num_requests_waiting{engine="1",model_name="qwen"} 1.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="qwen"} 7.0
vllm:kv_cache_usage_perc{engine="0",model_name="qwen"} 0.25
vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql,chat",waiting_lora_adapters=""} 1.7e9
vllm:lora_requests_info{max_lora="4",running_lora_adapters="old",waiting_lora_adapters="x"} 1.6e9
moe_runtime_queue_depth 99
"""


def test_vllm_style_series_are_summed_and_the_newest_adapter_info_counts():
    assert parse_load(VLLM_STYLE) == PodLoad(
        waiting=4.0, running=7.0, kv_cache_usage=0.25, active_adapters=frozenset({"sql", "chat"}), max_loras=4
    )


def test_an_answer_without_the_names_is_refused():
    with pytest.raises(NotMetrics):
        parse_load("moe_runtime_queue_depth 1\n")


def test_our_runtime_exposition_reads_the_same():
    from moe_runtime.metrics import RuntimeMetrics

    metrics = RuntimeMetrics()
    metrics.set_load(waiting=5, running=2, kv_cache_usage=0.5)
    assert parse_load(metrics.render().decode()) == PodLoad(5.0, 2.0, 0.5)


values = st.floats(min_value=0, max_value=1e6, allow_nan=False)
label_values = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@given(
    series=st.lists(
        st.tuples(st.sampled_from([WAITING, RUNNING, KV_CACHE]), label_values, values), min_size=1, max_size=8
    )
)
def test_the_fast_reader_agrees_with_prometheus_clients_parser(series):
    registry = CollectorRegistry()
    gauges = {
        name: Gauge(name, "h", ["model_name", "i"], registry=registry)
        for name in (WAITING, RUNNING, KV_CACHE)
    }
    for i, (name, label, value) in enumerate(series):
        gauges[name].labels(model_name=label, i=str(i)).set(value)
    text = generate_latest(registry).decode()
    expected = dict.fromkeys((WAITING, RUNNING, KV_CACHE), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            expected[sample.name] += sample.value
    load = parse_load(text)
    for got, name in ((load.waiting, WAITING), (load.running, RUNNING), (load.kv_cache_usage, KV_CACHE)):
        assert math.isclose(got, expected[name], rel_tol=1e-9)


@given(adapters=st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True), max_size=4, unique=True))
def test_adapter_names_with_any_escaping_come_back(adapters):
    registry = CollectorRegistry()
    info = Gauge(
        LORA_INFO, "h", ["max_lora", "running_lora_adapters", "waiting_lora_adapters"], registry=registry
    )
    info.labels(max_lora="8", running_lora_adapters=",".join(adapters), waiting_lora_adapters="").set(5)
    Gauge(WAITING, "h", registry=registry).set(1)
    load = parse_load(generate_latest(registry).decode())
    assert load.active_adapters == frozenset(adapters) and load.max_loras == 8
