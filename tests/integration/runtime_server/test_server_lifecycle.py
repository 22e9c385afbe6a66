"""Readiness, SIGTERM drain, client disconnects and timeouts on real server processes."""

import concurrent.futures
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.integration.runtime_server.harness import RuntimeServer, scrape, total
from tests.raw_http import RawConnection

pytestmark = pytest.mark.integration


def wait_for(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_sigterm_turns_unready_finishes_in_flight_requests_and_exits_0(checkpoint):
    server = RuntimeServer(checkpoint, "--max-batch-seqs", "1")
    with server, concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:

        def ask(i: int, max_tokens: int) -> httpx.Response:
            body = {"prompt": f"drain {i}", "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
            return httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)

        # A long request holds the only sequence, so that the short ones are surely still waiting when SIGTERM
        # comes: left to overlap by chance, four short requests on a busy machine can run one after another.
        lengths = [2000, 30, 30, 30]
        in_flight = [pool.submit(ask, 0, lengths[0])]
        wait_for(lambda: total(scrape(server.url), "moe_runtime_requests_running") == 1)
        in_flight += [pool.submit(ask, i, n) for i, n in enumerate(lengths[1:], start=1)]
        wait_for(lambda: total(scrape(server.url), "moe_runtime_queue_depth") == 3)

        server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: httpx.get(f"{server.url}/ready").status_code == 503)
        late = httpx.post(f"{server.url}/v1/completions", json={"prompt": "late", "max_tokens": 2})
        assert late.status_code == 503 and late.headers["retry-after"]

        answers = [f.result() for f in in_flight]
        assert [a.status_code for a in answers] == [200] * 4
        assert [a.json()["usage"]["completion_tokens"] for a in answers] == lengths
        assert server.process.wait(timeout=60) == 0


def test_draining_closes_keep_alive_connections_and_answers_what_it_accepted(checkpoint):
    """Clients holding a keep-alive connection to a draining pod reconnect instead of getting 503 after 503:
    idle connections close at once, every answer from then on says `Connection: close`, and the request that
    was in flight is answered, then its connection closes too."""
    server = RuntimeServer(checkpoint, "--max-batch-seqs", "1")
    port = server.port
    with server, RawConnection("127.0.0.1", port) as idle, RawConnection("127.0.0.1", port) as busy:
        assert idle.request("GET", "/health").status == 200  # kept open, idle from now on
        long = {"prompt": "hold on", "max_tokens": 2000, "temperature": 0, "ignore_eos": True}
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            in_flight = pool.submit(busy.request, "POST", "/v1/completions", long)
            wait_for(lambda: total(scrape(server.url), "moe_runtime_requests_running") == 1)
            samples = scrape(server.url)
            assert total(samples, "vllm:num_requests_running") == 1  # the Inference Extension's name
            assert total(samples, "vllm:num_requests_waiting") == total(samples, "moe_runtime_queue_depth")

            server.process.send_signal(signal.SIGTERM)
            assert idle.closed_by_peer(within_s=10), "the idle keep-alive connection stayed open"
            with RawConnection("127.0.0.1", port) as late:
                refused = late.request("POST", "/v1/completions", {"prompt": "late", "max_tokens": 2})
                assert refused.status == 503 and refused.headers["retry-after"]
                assert refused.headers["connection"] == "close"
                assert late.closed_by_peer(within_s=10)

            answered = in_flight.result(timeout=120)
        assert answered.status == 200 and answered.json()["usage"]["completion_tokens"] == 2000
        assert busy.closed_by_peer(within_s=10), "the connection of the answered request stayed open"
        assert server.process.wait(timeout=60) == 0


def test_a_client_that_goes_away_frees_its_sequence(server):
    with httpx.Client(timeout=60) as client:
        body = {"prompt": "walk away", "max_tokens": 2000, "stream": True, "temperature": 0}
        with client.stream("POST", f"{server.url}/v1/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
    wait_for(lambda: total(scrape(server.url), "moe_runtime_requests_running") == 0)
    samples = scrape(server.url)
    assert total(samples, "moe_runtime_kv_cache_usage_ratio") == 0
    assert total(samples, "moe_runtime_requests_total", status="499") >= 1


def test_a_request_past_its_timeout_gets_an_explicit_error(checkpoint):
    with RuntimeServer(checkpoint, "--request-timeout", "0.5") as server:
        body = {"prompt": "never ends", "max_tokens": 3000, "temperature": 0}
        response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
        assert response.status_code == 504
        assert response.json()["error"]["type"] == "timeout_error"
        stream = httpx.post(f"{server.url}/v1/completions", json={**body, "stream": True}, timeout=60)
        events = [line for line in stream.text.splitlines() if line.startswith("data: ")]
        assert '"timeout_error"' in events[-2] and events[-1] == "data: [DONE]"


def test_a_checkpoint_that_fails_to_load_exits_non_zero(tmp_path):
    (tmp_path / "broken").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "moe_runtime", "serve", "--model", str(tmp_path / "broken"), "--port", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "failed to load" in result.stderr
