"""`serve --inject-faults`: each fault on a real server, as a rollout rehearsal relies on it — slower tokens, a
hang that every request on the pod waits out (and the oldest-request gauge sees), a liveness probe that fails
after some requests; every accepted request is still answered."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.integration.runtime_server.harness import RuntimeServer, scrape, timed_completion, total
from tests.waiting import wait_for

pytestmark = pytest.mark.integration
BODY = {"prompt": "hello experts", "max_tokens": 8, "temperature": 0, "ignore_eos": True}


async def completions(url: str, count: int) -> list:
    async with httpx.AsyncClient(timeout=120) as client:
        return await asyncio.gather(*(timed_completion(client, url, BODY) for _ in range(count)))


def test_a_token_delay_slows_every_token(checkpoint):
    with RuntimeServer(checkpoint, "--inject-faults", "token_delay=0.1") as server:
        (answer,) = asyncio.run(completions(server.url, 1))
    assert answer.status == 200 and answer.completion_tokens == 8
    assert answer.latency_s >= 0.8, "eight steps of at least 0.1 s each"


def test_a_hang_holds_every_request_on_the_pod_and_all_are_answered(checkpoint):
    with RuntimeServer(checkpoint, "--inject-faults", "hang_every=2:3", "--max-batch-seqs", "4") as server:
        started = time.monotonic()
        answers = asyncio.run(completions(server.url, 4))
        took = time.monotonic() - started
        oldest = max(total(scrape(server.url), "moe_runtime_oldest_request_age_seconds"), 0)
    assert [a.status for a in answers] == [200] * 4, "a hang delays requests, it never loses one"
    assert took >= 3, "the step that started the second request hung for 3 s"
    assert oldest == 0, "once all are answered nothing is in flight"


def test_the_oldest_request_gauge_sees_a_hung_request(checkpoint):
    with RuntimeServer(checkpoint, "--inject-faults", "hang_every=1:4") as server:

        async def scenario() -> float:
            async with httpx.AsyncClient(timeout=120) as client:
                request = asyncio.create_task(timed_completion(client, server.url, BODY))
                seen = 0.0
                while not request.done():
                    gauge = total(scrape(server.url), "moe_runtime_oldest_request_age_seconds")
                    seen = max(seen, gauge)
                    await asyncio.sleep(0.2)
                assert (await request).status == 200
                return seen

        seen = asyncio.run(scenario())
    assert seen >= 2, f"the gauge read {seen}s while the request hung for 4s"


def test_unhealthy_after_some_requests(checkpoint):
    with RuntimeServer(checkpoint, "--inject-faults", "unhealthy_after=2") as server:
        assert httpx.get(f"{server.url}/health").status_code == 200
        assert [a.status for a in asyncio.run(completions(server.url, 2))] == [200, 200]
        health = wait_for(lambda: httpx.get(f"{server.url}/health"), timeout=10)
        assert health.status_code == 503 and "injected fault" in health.json()["error"]
        assert httpx.get(f"{server.url}/ready").status_code == 200, "still serving until it is restarted"
