"""The load generator's pure parts: settings and their bounds, where requests go, the summary
(runtime/moe_runtime/tools/loadgen.py; tests/integration/test_local_loadgen.py drives real runtimes with it)."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moe_runtime.tools.loadgen import (
    Endpoints,
    LoadConfig,
    Outcome,
    Shape,
    parse_args,
    parse_mix,
    percentiles,
    require_loopback,
    split_event_lines,
    summarize,
    targets_from,
)


def entry(port: int, md: str = "tiny", namespace: str = "ns", host: str = "127.0.0.1") -> dict:
    return {
        "targets": [f"{host}:{port}"],
        "labels": {"model_deployment": md, "namespace": namespace, "revision": "r", "pod": f"p{port}"},
    }


def test_mix():
    assert parse_mix("32:16:3, 512:64") == (Shape(32, 16, 3.0), Shape(512, 64, 1.0))
    for bad in ("32", "a:1", "0:5", "5:5:0", "1:2:3:4:5", "1:2:3:x"):
        with pytest.raises(ValueError, match="--mix entry"):
            parse_mix(bad)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000", "http://localhost:1/", "http://[::1]:80", "http://127.9.9.9:5"]
)
def test_loopback_urls_are_taken(url):
    assert require_loopback(url) == url.rstrip("/")


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1:8000", "http://example.com", "ftp://127.0.0.1", "127.0.0.1:8000"]
)
def test_other_hosts_are_refused(url):
    with pytest.raises(ValueError, match="only talks to http"):
        require_loopback(url)


@given(st.ip_addresses(v=4).filter(lambda ip: not ip.is_loopback), st.integers(1, 65535))
def test_no_address_off_loopback_is_ever_taken(ip, port):
    with pytest.raises(ValueError):
        LoadConfig(urls=(f"http://{ip}:{port}",), requests=1).check()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"urls": ("http://127.0.0.1:1",)}, "must end"),
        ({"urls": ("http://127.0.0.1:1",), "targets_file": "t.json", "requests": 1}, "give one of"),
        (
            {"service_url": "http://md.ns.svc.cluster.local", "urls": ("http://127.0.0.1:1",), "requests": 1},
            "give one of",
        ),
        ({"service_url": "http://example.com", "requests": 1}, "not an in-cluster Service URL"),
        ({"targets_file": "t.json", "requests": 1}, "needs --model-deployment"),
        ({"urls": ("http://127.0.0.1:1",), "requests": 1, "concurrency": 0}, "--concurrency"),
        ({"urls": ("http://127.0.0.1:1",), "requests": 1, "concurrency": 5000}, "--concurrency"),
        ({"urls": ("http://127.0.0.1:1",), "requests": 1, "rate": 0}, "--rate"),
        ({"urls": ("http://127.0.0.1:1",), "duration_s": 1e9}, "--duration"),
        ({"urls": ("http://127.0.0.1:1",), "requests": 10**9}, "--requests"),
    ],
)
def test_bounds(settings, message):
    with pytest.raises(ValueError, match=message):
        LoadConfig(**settings).check()


def test_cli_refuses_what_the_library_refuses(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--url", "http://10.1.2.3:8000", "--requests", "1"])
    assert "loopback" in capsys.readouterr().err
    config = parse_args(
        [
            "--targets",
            "t.json",
            "--model-deployment",
            "tiny",
            "--rate",
            "5",
            "--duration",
            "3",
            "--mix",
            "8:4:1,64:8:2",
        ]
    )
    assert (config.rate, config.duration_s, config.mix[1]) == (5.0, 3.0, Shape(64, 8, 2.0))


def test_targets_of_one_model_deployment_on_loopback_only():
    entries = [entry(1), entry(2, md="other"), entry(3, namespace="elsewhere"), entry(4, host="10.0.0.9")]
    assert targets_from(entries, "tiny", None) == ["http://127.0.0.1:1", "http://127.0.0.1:3"]
    assert targets_from(entries, "tiny", "ns") == ["http://127.0.0.1:1"]
    assert targets_from({"not": "a list"}, "tiny", None) == []


def test_targets_file_is_read_again_when_replaced(tmp_path):
    path = tmp_path / "targets.json"
    endpoints = Endpoints(LoadConfig(targets_file=path, model_deployment="tiny", requests=1))
    assert endpoints.next() is None, "no file yet"
    path.write_text(json.dumps([entry(1)]))
    assert endpoints.next() == "http://127.0.0.1:1"
    replacement = tmp_path / "new.json"
    replacement.write_text(json.dumps([entry(2), entry(3)]))
    os.replace(replacement, path)
    assert {endpoints.next(), endpoints.next()} == {"http://127.0.0.1:2", "http://127.0.0.1:3"}
    path.write_text("[{broken")
    assert endpoints.next() in ("http://127.0.0.1:2", "http://127.0.0.1:3"), "a torn file keeps the last list"


@given(st.integers(1, 6), st.integers(1, 5))
def test_requests_spread_evenly_over_the_targets(targets, rounds):
    urls = tuple(f"http://127.0.0.1:{1000 + i}" for i in range(targets))
    endpoints = Endpoints(LoadConfig(urls=urls, requests=1))
    picked = [endpoints.next() for _ in range(targets * rounds)]
    assert all(picked.count(url) == rounds for url in urls)


@given(st.lists(st.floats(0, 1e4, allow_nan=False), min_size=1, max_size=50))
def test_percentiles_are_ordered_and_within_the_values(values):
    p = percentiles(values)
    assert min(values) - 1e-3 <= p["p50"] <= p["p90"] <= p["p99"] <= p["max"] == round(max(values), 4)
    assert min(values) - 1e-3 <= p["mean"] <= max(values) + 1e-3
    assert 0 <= p["stdev"] <= (max(values) - min(values)) / 2 + 1e-3


def test_summary_counts_errors_by_status():
    outcomes = [
        Outcome("u1", None, 1.0, 0.2, 10),
        Outcome("u2", None, 3.0, 0.4, 30),
        Outcome("u1", "503", 0.1, None, 0),
        Outcome("u2", "connect_error", 0.0, None, 0),
        Outcome("u1", "503", 0.1, None, 0),
    ]
    summary = summarize(outcomes, issued=6, dropped=2, no_target_waits=0, elapsed_s=2.0)
    assert summary["requests"] == 6 and summary["completed"] == 2 and summary["in_flight"] == 1
    assert summary["errors"] == {"503": 2, "connect_error": 1}
    assert summary["latency_s"]["p50"] == 2.0 and summary["ttft_s"]["max"] == 0.4
    assert summary["output_tokens_per_s"] == 20.0 and summary["by_target"] == {"u1": 3, "u2": 2}
    assert summary["latency_s"]["stdev"] == 1.0
    # time per output token after the first: (1.0 - 0.2) / 9 and (3.0 - 0.4) / 29
    tpot = summary["tpot_s"]
    assert tpot["max"] == round(2.6 / 29, 4) and tpot["p50"] == round((0.8 / 9 + 2.6 / 29) / 2, 4)
    assert percentiles([]) is None


def test_a_service_url_goes_through_the_service_proxy_file_and_follows_it(tmp_path):
    from moe_runtime.tools.loadgen import Endpoints, service_key

    assert service_key("http://chat.team-a.svc.cluster.local") == "team-a/chat"
    services = tmp_path / "services.json"
    config = LoadConfig(
        service_url="http://chat.team-a.svc.cluster.local", services_file=services, requests=1
    )
    endpoints = Endpoints(config)
    assert endpoints.next() is None  # no file yet: no target
    services.write_text(json.dumps({"team-a/chat": "127.0.0.1:41000", "team-a/other": "127.0.0.1:41001"}))
    assert endpoints.next() == "http://127.0.0.1:41000"
    replaced = tmp_path / "new.json"
    replaced.write_text(json.dumps({"team-a/chat": "127.0.0.1:42000"}))
    os.replace(replaced, services)
    assert endpoints.next() == "http://127.0.0.1:42000"
    services.write_text(json.dumps({"team-a/chat": "10.0.0.1:80"}))  # never off the machine
    assert endpoints.next() is None


def test_shared_prefixes_repeat_across_requests_and_the_tails_differ():
    import random

    from moe_runtime.tools.loadgen import PREFIX_TAIL_WORDS, Shape, parse_mix, prompt

    (shape,) = parse_mix("40:8:1:2")
    assert shape == Shape(40, 8, 1.0, 2)
    rng = random.Random(0)
    prompts = [prompt(shape, rng) for _ in range(40)]
    heads = {" ".join(p.split()[: 40 - PREFIX_TAIL_WORDS]) for p in prompts}
    assert len(heads) == 2 and all(len(p.split()) == 40 for p in prompts)
    assert len(set(prompts)) > 2
    with pytest.raises(ValueError):
        parse_mix("40:8:1:-1")


@given(
    st.lists(st.text(), max_size=5),
    st.sampled_from(["\n", "\r\n", "\r"]),
    st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_event_lines_split_only_at_the_streams_line_ends(texts, end, cuts):
    """vLLM writes its JSON unescaped (U+2028, U+0085, ... inside a text): however the stream arrives in chunks,
    every data line comes back whole."""
    events = [json.dumps({"text": text}, ensure_ascii=False) for text in texts]
    stream = "".join(f"data: {event}{end}{end}" for event in events)
    chunks = [stream[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(stream)], strict=True)]
    lines, rest = [], ""
    for chunk in chunks:
        complete, rest = split_event_lines(rest + chunk)
        lines += complete
    lines += [rest] if rest else []
    assert [json.loads(line[6:])["text"] for line in lines if line] == texts
