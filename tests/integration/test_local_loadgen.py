"""`python -m moe_runtime loadgen` against a real runtime process: closed and open loop, fixed URLs and a
targets file rewritten under it, a clean stop on SIGTERM, errors counted by what went wrong."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import pytest

from moe_runtime.tools.loadgen import LoadConfig, LoadGenerator, Shape, run_load
from tests.integration.runtime_server.harness import RuntimeServer, free_port, write_checkpoint
from tests.waiting import wait_for

pytestmark = pytest.mark.integration
MIX = "8:4:1,32:8:1"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    checkpoint = write_checkpoint(tmp_path_factory.mktemp("loadgen") / "tiny-qwen2-moe")
    with RuntimeServer(checkpoint, env={"OMP_NUM_THREADS": "1"}) as running:
        yield running


def two_names_of(server) -> tuple[str, str]:
    """The same server under two base URLs, so that spreading over targets shows in the summary."""
    return server.url, f"http://localhost:{server.port}"


def loadgen(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "moe_runtime", "loadgen", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen,
    )  # fmt: skip


def test_closed_loop_cli_spreads_requests_and_summarises(server):
    first, second = two_names_of(server)
    process = loadgen("--url", first, "--url", second, "--requests", "8", "--concurrency", "2", "--mix", MIX)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    summary = json.loads(out)
    assert (summary["requests"], summary["completed"], summary["errors"]) == (8, 8, {})
    assert summary["by_target"] == {first: 4, second: 4}
    assert summary["output_tokens"] > 0
    assert 0 < summary["ttft_s"]["p50"] <= summary["latency_s"]["p50"] <= summary["latency_s"]["max"]
    assert summary["config"]["mix"] == ["8:4:1:0", "32:8:1:0"]  # prompt:output:weight:shared prefix words


def test_open_loop_sends_at_its_rate_and_ends_on_time(server):
    summary = run_load(
        LoadConfig(urls=(server.url,), rate=20, duration_s=1.5, concurrency=8, mix=(Shape(8, 4),))
    )
    # `requests` counts what was sent; arrivals beyond the concurrency limit are `dropped`, not sent
    assert summary["errors"] == {} and summary["completed"] == summary["requests"]
    assert 5 <= summary["requests"] + summary["dropped"] <= 90, "about 30 Poisson arrivals"
    assert summary["duration_s"] < 1.5 + 30


def test_targets_file_is_followed_as_it_changes(server, tmp_path):
    first, second = two_names_of(server)
    path = tmp_path / "targets.json"

    def publish(url: str) -> None:
        entries = [
            {
                "targets": [url.removeprefix("http://")],
                "labels": {"model_deployment": "tiny", "namespace": "ns"},
            },
            {"targets": ["127.0.0.1:1"], "labels": {"model_deployment": "other", "namespace": "ns"}},
        ]
        (tmp_path / "next.json").write_text(json.dumps(entries))
        os.replace(tmp_path / "next.json", path)

    publish(first)
    config = LoadConfig(
        targets_file=path, model_deployment="tiny", concurrency=2, duration_s=120, mix=(Shape(8, 4),)
    )
    with LoadGenerator(config).background() as load:
        wait_for(
            lambda: first in load.summary()["by_target"], timeout=60, what="requests to the first target"
        )
        publish(second)
        wait_for(lambda: second in load.summary()["by_target"], timeout=60, what="requests to the new target")
    summary = load.result
    assert summary["errors"] == {} and set(summary["by_target"]) == {first, second}
    assert summary["duration_s"] < 120


def test_sigterm_stops_sending_and_prints_the_summary_so_far(server):
    process = loadgen("--url", server.url, "--duration", "300", "--concurrency", "2", "--mix", MIX)

    def requests_served() -> float:
        metrics = httpx.get(f"{server.url}/metrics", timeout=5).text
        lines = [line for line in metrics.splitlines() if line.startswith("moe_runtime_requests_total{")]
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines)

    served = requests_served()
    wait_for(lambda: requests_served() >= served + 3, timeout=60, what="the load generator's requests")
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    summary = json.loads(out)
    assert process.returncode == 0, err
    assert summary["completed"] >= 3 and summary["errors"] == {} and summary["in_flight"] == 0
    assert summary["duration_s"] < 300


def test_unreachable_target_counts_as_errors_and_fails():
    process = loadgen("--url", f"http://127.0.0.1:{free_port()}", "--requests", "3", "--concurrency", "1")
    out, _ = process.communicate(timeout=60)
    summary = json.loads(out)
    assert process.returncode == 1
    assert summary["errors"] == {"connect_error": 3} and summary["completed"] == 0
