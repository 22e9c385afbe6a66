"""The router as a process: real API server (EndpointSlices written here as the EndpointSlice controller would,
the ModelDeployment's status as the operator would), real runtime servers behind it, real HTTP."""

from __future__ import annotations

import concurrent.futures
import json
import signal
from collections import Counter

import httpx
import pytest

from tests.integration.local_stack import local_md
from tests.integration.router.support import POD_HEADER, PodNetwork, RouterProcess, endpoint_slice
from tests.integration.runtime_server.harness import RuntimeServer, free_port, scrape, total, write_checkpoint
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

MD = "routed"
STABLE, CANARY = f"{MD}-stable", f"{MD}-canary"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("router") / "tiny-qwen2-moe")


@pytest.fixture(scope="module")
def servers(checkpoint):
    with (
        RuntimeServer(checkpoint, "--max-batch-seqs", "8") as a,
        RuntimeServer(checkpoint, "--max-batch-seqs", "8") as b,
    ):
        yield a, b


@pytest.fixture(scope="module")
def model_deployment(models):
    models.apply(
        local_md(MD, {"hostPath": {"path": "/nonexistent"}})
    )  # no operator here: only its status is read
    return MD


@pytest.fixture
def network(tmp_path):
    return PodNetwork(tmp_path / "pod-addresses.json")


@pytest.fixture
def write(models):
    """Applies objects in the test namespace; deletes the slices it wrote afterwards."""
    written = []

    def apply(*objects: dict) -> None:
        for obj in objects:
            models.apply(obj)
            written.append(obj["metadata"]["name"])

    yield apply
    for name in written:
        models.kubectl("delete", "endpointslice", name, "--ignore-not-found", check=False)


def set_status(models, status: dict) -> None:
    models.kubectl(
        "patch", "md", MD, "--subresource=status", "--type=merge", "-p", json.dumps({"status": status})
    )


def router(models, network, tmp_path, *options) -> RouterProcess:
    return RouterProcess(models.namespace, MD, network.path, tmp_path / "router.log", *options)


def complete(url: str, prompt: str = "hello", max_tokens: int = 4, **fields) -> httpx.Response:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **fields}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=120)


def test_answers_come_through_whole_and_streamed_as_the_pod_sends_them(
    servers, models, model_deployment, network, write, tmp_path
):
    a, _ = servers
    network.add("10.245.200.1", f"127.0.0.1:{a.port}")
    write(endpoint_slice(STABLE, [("10.245.200.1", "pod-a", True)]))
    set_status(models, {"canary": None, "rejectedRevisions": []})
    with router(models, network, tmp_path) as routed:
        routed.wait_endpoints(1)
        through, direct = complete(routed.url), complete(a.url)
        assert through.status_code == 200 and through.headers[POD_HEADER] == "pod-a"
        assert through.json()["choices"][0]["text"] == direct.json()["choices"][0]["text"]

        body = {"prompt": "stream", "max_tokens": 2000, "temperature": 0, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{routed.url}/v1/completions", json=body, timeout=120) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first.removeprefix("data: "))["choices"][0]["text"] is not None
            # the first token reached the client while the pod still generates: nothing was buffered
            assert total(scrape(a.url), "moe_runtime_requests_running") == 1
        wait_for(
            lambda: total(scrape(a.url), "moe_runtime_requests_running") == 0, timeout=30, what="cancellation"
        )
        assert routed.metric("moe_router_requests_total", code="200") == 1
        assert routed.metric("moe_router_requests_total", code="499") == 1  # the client left the stream


def test_the_canary_gets_exactly_its_share_of_requests_and_none_once_rejected(
    servers, models, model_deployment, network, write, tmp_path
):
    a, b = servers
    network.add("10.245.200.1", f"127.0.0.1:{a.port}")
    network.add("10.245.200.2", f"127.0.0.1:{a.port}")  # two stable pods (one process serves both addresses)
    network.add("10.245.200.3", f"127.0.0.1:{b.port}")
    write(
        endpoint_slice(STABLE, [("10.245.200.1", "stable-1", True), ("10.245.200.2", "stable-2", True)]),
        endpoint_slice(CANARY, [("10.245.200.3", "canary-1", True)]),
    )
    set_status(models, {"canary": {"revision": "r2", "phase": "Analyzing"}, "rejectedRevisions": []})
    with router(models, network, tmp_path, "--strategy", "LeastLoad") as routed:
        routed.wait_endpoints(2)
        routed.wait_endpoints(1, track="canary")
        served = Counter(complete(routed.url, f"share {i}", 1).headers[POD_HEADER] for i in range(30))
        assert served["canary-1"] == 10, served  # 1 Ready canary pod of 3: a third of the requests, exactly

        def canary_stops_getting_requests(what: str) -> None:
            recent: list[str] = []

            def stable_streak() -> bool:
                recent.append(complete(routed.url, "after", 1).headers[POD_HEADER])
                return len(recent) >= 3 and "canary-1" not in recent[-3:]

            wait_for(stable_streak, timeout=10, interval=0, what=what)
            after = Counter(complete(routed.url, f"after {i}", 1).headers[POD_HEADER] for i in range(12))
            assert "canary-1" not in after, after

        # promoted and baking: the revision is the stable one now; the canary Deployment's pods are leaving
        baking = {"revision": "r2", "phase": "Baking", "previousRevision": "r1"}
        set_status(models, {"stableRevision": "r2", "canary": baking, "rejectedRevisions": []})
        canary_stops_getting_requests("the bake to reach the router")

        set_status(models, {"canary": {"revision": "r3", "phase": "Holding"}, "rejectedRevisions": []})
        wait_for(
            lambda: complete(routed.url, "held canary", 1).headers[POD_HEADER] == "canary-1",
            timeout=10,
            interval=0,
            what="a held canary to get its share again",
        )
        set_status(
            models, {"rejectedRevisions": [{"revision": "r3", "reason": "SLOBreached", "message": "slow"}]}
        )
        canary_stops_getting_requests("the rejection to reach the router")


def test_a_draining_pod_and_an_unreachable_one_cost_a_retry_not_a_failed_request(
    checkpoint, servers, models, model_deployment, network, write, tmp_path
):
    a, _ = servers
    closed = free_port()  # nothing listens here: connect errors
    network.add("10.245.200.1", f"127.0.0.1:{a.port}")
    network.add("10.245.200.9", f"127.0.0.1:{closed}")
    with RuntimeServer(checkpoint, "--max-batch-seqs", "1") as draining:
        network.add("10.245.200.5", f"127.0.0.1:{draining.port}")
        write(
            endpoint_slice(
                STABLE,
                [
                    ("10.245.200.1", "good", True),
                    ("10.245.200.5", "draining", True),
                    ("10.245.200.9", "gone", True),
                ],
            )
        )
        set_status(models, {"canary": None})
        with (
            router(models, network, tmp_path, "--strategy", "RoundRobin") as routed,
            concurrent.futures.ThreadPoolExecutor(1) as pool,
        ):
            routed.wait_endpoints(3)
            # the draining pod keeps a long request, so it lives on answering 503 while the slice still lists it
            held = pool.submit(complete, draining.url, "long", 3000, ignore_eos=True)
            wait_for(
                lambda: total(scrape(draining.url), "moe_runtime_requests_running") == 1,
                what="a long request",
            )
            draining.process.send_signal(signal.SIGTERM)
            wait_for(lambda: httpx.get(f"{draining.url}/ready").status_code == 503, what="the pod to drain")
            answers = [complete(routed.url, f"retry {i}", 2) for i in range(9)]
            assert [r.status_code for r in answers] == [200] * 9
            assert {r.headers[POD_HEADER] for r in answers} == {"good"}
            # a broken pod costs a retry, then is passed over for a few seconds: not a retry per request
            assert 1 <= routed.metric("moe_router_retries_total", reason="unavailable") <= 3
            assert 1 <= routed.metric("moe_router_retries_total", reason="connect_error") <= 3
            held.cancel()
            draining.process.kill()


def test_at_zero_ready_pods_requests_are_held_kept_alive_and_served_when_one_turns_ready(
    servers, models, model_deployment, network, write, tmp_path
):
    a, _ = servers
    network.add("10.245.200.1", f"127.0.0.1:{a.port}")
    write(endpoint_slice(STABLE, [("10.245.200.1", "cold", False)]))
    set_status(models, {"canary": None})
    with (
        router(models, network, tmp_path, "--keepalive-interval", "0.3", "--hold-timeout", "60") as routed,
        concurrent.futures.ThreadPoolExecutor(2) as pool,
    ):
        seen: list[str] = []

        def stream() -> list[str]:
            body = {"prompt": "cold start", "max_tokens": 3, "temperature": 0, "stream": True}
            with httpx.stream("POST", f"{routed.url}/v1/completions", json=body, timeout=120) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    seen.append(line)
            return seen

        streaming = pool.submit(stream)
        whole = pool.submit(complete, routed.url, "cold whole", 3)
        wait_for(
            lambda: routed.metric("moe_router_held_requests") == 2, timeout=10, interval=0.05, what="2 held"
        )
        wait_for(lambda: ": keep-alive" in seen, timeout=10, interval=0.05, what="a keep-alive comment")
        assert not whole.done() and not streaming.done()

        write(endpoint_slice(STABLE, [("10.245.200.1", "cold", True)]))
        assert whole.result(timeout=60).status_code == 200
        events = [line for line in streaming.result(timeout=60) if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and len(events) >= 4  # three tokens, then [DONE]
        assert routed.metric("moe_router_held_requests") == 0
        assert routed.metric("moe_router_hold_seconds_count") == 2


def test_when_no_pod_comes_the_held_request_gets_503_with_retry_after(
    models, model_deployment, network, write, tmp_path
):
    write(endpoint_slice(STABLE, []))
    set_status(models, {"canary": None})
    with router(models, network, tmp_path, "--hold-timeout", "1", "--keepalive-interval", "0.3") as routed:
        refused = complete(routed.url)
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) > 0
        assert refused.json()["error"]["code"] == "no_capacity"
        body = {"prompt": "x", "max_tokens": 2, "stream": True}
        with httpx.stream("POST", f"{routed.url}/v1/completions", json=body, timeout=30) as response:
            lines = list(response.iter_lines())
        assert (
            response.status_code == 200 and ": keep-alive" in lines
        )  # headers went out with the keep-alives
        errors = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: {")]
        assert errors and errors[0]["error"]["code"] == "no_capacity"


def test_a_router_told_to_stop_answers_what_it_accepted_and_closes_its_connections(
    servers, models, model_deployment, network, write, tmp_path
):
    a, _ = servers
    network.add("10.245.200.1", f"127.0.0.1:{a.port}")
    write(endpoint_slice(STABLE, [("10.245.200.1", "pod-a", False)]))
    set_status(models, {"canary": None})
    with (
        router(models, network, tmp_path, "--hold-timeout", "60") as routed,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        held = pool.submit(complete, routed.url, "held through a restart", 3)
        wait_for(
            lambda: routed.metric("moe_router_held_requests") == 1, timeout=10, interval=0.05, what="held"
        )
        routed.process.send_signal(signal.SIGTERM)
        wait_for(lambda: httpx.get(f"{routed.url}/ready").status_code == 503, timeout=10, what="not ready")
        assert httpx.get(f"{routed.url}/health").headers["connection"] == "close"
        write(endpoint_slice(STABLE, [("10.245.200.1", "pod-a", True)]))
        assert held.result(timeout=60).status_code == 200
        assert routed.process.wait(timeout=30) == 0


def test_past_the_bound_on_held_requests_the_next_one_gets_503_at_once(
    models, model_deployment, network, write, tmp_path
):
    write(endpoint_slice(STABLE, []))
    set_status(models, {"canary": None})
    with (
        router(models, network, tmp_path, "--hold-timeout", "30", "--max-held", "1") as routed,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        held = pool.submit(complete, routed.url, "first", 2)
        wait_for(
            lambda: routed.metric("moe_router_held_requests") == 1, timeout=10, interval=0.05, what="held"
        )
        refused = complete(routed.url, "second", 2)
        assert refused.status_code == 503 and refused.headers["retry-after"]
        assert "holds as many requests as it may" in refused.json()["error"]["message"]
        assert not held.done()
        routed.process.send_signal(signal.SIGINT)
        # a second signal exits at once (the held one is abandoned); sent once the first is handled, since
        # two pending ones of a kind are delivered as one
        wait_for(lambda: httpx.get(f"{routed.url}/ready").status_code == 503, timeout=10, what="draining")
        routed.process.send_signal(signal.SIGINT)
        routed.process.wait(timeout=30)
