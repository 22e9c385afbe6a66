"""Real server processes whose engine fails on purpose (faulty_serve.py): every accepted request still gets an
answer, a dead engine makes the pod unhealthy, running out of memory fails nobody."""

import concurrent.futures
import signal
import threading
import time

import httpx
import pytest

from moe_runtime.engine.sampling import SamplingParams
from tests.integration.runtime_server.harness import FAULTY_SERVE, RuntimeServer, scrape, total
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def faulty(checkpoint, fault: str, *options: str) -> RuntimeServer:
    return RuntimeServer(checkpoint, *options, env={"MOE_TEST_FAULT": fault}, entry=FAULTY_SERVE)


def sse_events(response: httpx.Response) -> list[str]:
    return [line for line in response.iter_lines() if line.startswith("data: ")]


def test_a_dead_engine_loop_fails_open_requests_turns_unhealthy_and_exits_1(checkpoint):
    with faulty(checkpoint, "release", "--max-num-seqs", "4") as server, httpx.Client(timeout=60) as client:
        body = {"prompt": "a long story", "max_tokens": 500, "temperature": 0, "stream": True}
        with client.stream("POST", f"{server.url}/v1/completions", json=body) as streamed:
            lines = streamed.iter_lines()
            assert next(lines).startswith("data: {")  # running
            # the first request to end kills the engine loop (its cache release raises)
            short = client.post(f"{server.url}/v1/completions", json={"prompt": "hi", "max_tokens": 1})
            events = [line for line in lines if line.startswith("data: ")]
        assert short.status_code in (500, 503) and short.json()["error"]["type"] in (
            "server_error",
            "service_unavailable",
        )
        assert '"server_error"' in events[-2] and events[-1] == "data: [DONE]"
        assert client.get(f"{server.url}/health").status_code == 503
        assert client.get(f"{server.url}/ready").json() == {"status": "failed"}
        late = client.post(f"{server.url}/v1/completions", json={"prompt": "late", "max_tokens": 1})
        assert late.status_code == 503 and late.json()["error"]["code"] == "failed"
        log = server.log_text()
        assert "engine loop failed" in log and "Traceback" in log and "illegal memory access" in log
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 1  # no drain wait for requests that can never finish


def test_out_of_memory_in_a_step_pushes_back_and_every_request_gets_its_greedy_answer(checkpoint, reference):
    prompts = [f"request number {i} " * (1 + i % 3) for i in range(8)]
    with faulty(checkpoint, "oom_above:2", "--dtype", "float32", "--max-num-seqs", "8") as server:

        def ask(prompt: str) -> httpx.Response:
            body = {"prompt": prompt, "max_tokens": 6, "temperature": 0}
            return httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)

        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(ask, prompts))
        assert [a.status_code for a in answers] == [200] * 8
        for prompt, answer in zip(prompts, answers, strict=True):
            ids = reference.generate([reference.tokenizer.encode(prompt)], SamplingParams(max_tokens=6))[0]
            assert answer.json()["choices"][0]["text"] == reference.tokenizer.decode(ids)
        assert "out of memory in a step" in server.log_text()
        assert total(scrape(server.url), "moe_runtime_requests_total", status="200") == 8


def test_a_stuck_engine_still_answers_every_request_at_the_backstop_deadline(checkpoint):
    server = faulty(checkpoint, "hang", "--request-timeout", "1")
    with server, concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        body = {"prompt": "stuck", "max_tokens": 4}
        whole = pool.submit(httpx.post, f"{server.url}/v1/completions", json=body, timeout=60)
        streamed = pool.submit(
            httpx.post, f"{server.url}/v1/completions", json={**body, "stream": True}, timeout=60
        )
        assert whole.result().status_code == 504 and whole.result().json()["error"]["code"] == "timeout"
        events = [line for line in streamed.result().text.splitlines() if line.startswith("data: ")]
        assert '"timeout_error"' in events[-2] and events[-1] == "data: [DONE]"
        samples = scrape(server.url)
        assert total(samples, "moe_runtime_request_latency_seconds_count") == 2
        server.process.kill()  # a forward pass that never returns cannot be drained
        server.process.wait()


def test_a_step_that_hangs_past_the_stall_timeout_makes_the_pod_unhealthy(checkpoint):
    server = faulty(checkpoint, "hang", "--engine-stall-timeout", "1", "--request-timeout", "2")
    with server, concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        assert httpx.get(f"{server.url}/health").status_code == 200
        body = {"prompt": "stuck", "max_tokens": 4}
        stuck = pool.submit(httpx.post, f"{server.url}/v1/completions", json=body, timeout=60)
        wait_for(
            lambda: httpx.get(f"{server.url}/health").status_code == 503,
            timeout=30,
            what="/health to turn 503 a second into the hung step",
        )
        health = httpx.get(f"{server.url}/health").json()
        assert health["status"] == "stalled" and "a kernel may hang" in health["error"]
        assert httpx.get(f"{server.url}/ready").json() == {"status": "stalled"}
        assert stuck.result().status_code == 504, "the accepted request is still answered, at the backstop"
        assert server.log_text().count("unhealthy: one engine step has run for") == 1, "logged once"
        server.process.kill()  # a forward pass that never returns cannot be drained
        server.process.wait()


def test_a_huge_prompt_does_not_hold_up_the_health_probe(server):
    """Tokenizing a 1 MB prompt takes a while; the probe must not wait for it. Bound relative to the request
    itself: no probe waits half as long as the huge request takes."""
    text = "The quick brown fox jumps over the lazy dog. " * 23000  # under --max-prompt-chars
    probes: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(timeout=60) as client:
            while not done.is_set():
                start = time.perf_counter()
                assert client.get(f"{server.url}/health").status_code == 200
                probes.append(time.perf_counter() - start)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        prober = pool.submit(probe)
        wait_for(lambda: len(probes) >= 3, timeout=30, what="probes answering")
        start = time.perf_counter()
        huge = httpx.post(f"{server.url}/v1/completions", json={"prompt": text, "max_tokens": 1}, timeout=120)
        took = time.perf_counter() - start
        done.set()
        prober.result()
    assert huge.status_code == 400 and huge.json()["error"]["code"] == "context_length_exceeded"
    during = probes[3:]
    assert during and max(during) < took / 2, (max(during), took)
