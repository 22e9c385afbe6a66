"""spec.routing on the local stack: the operator's router pods (real processes, reading the API as their own
ServiceAccount), runtime pods behind them, clients through status.url and the stack's Service proxy."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.integration.local_stack import (
    START_TIMEOUT_S,
    routed_md,
    service_url,
    write_tiny_checkpoint,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.integration.operator_fixtures"]

POD_HEADER = "x-moedeploy-pod"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("local-routing") / "tiny-qwen3-moe")


def routed_url(cluster, models, name: str) -> str:
    """status.url as the machine reaches it, once the router answers there."""

    def reachable() -> str | None:
        url = ((models.get(name) or {}).get("status") or {}).get("url")
        local = url and service_url(cluster.services_file, url)
        if not local:
            return None
        try:
            return local if httpx.get(f"{local}/ready", timeout=2).status_code == 200 else None
        except httpx.HTTPError:
            return None

    return wait_for(reachable, timeout=START_TIMEOUT_S, what=f"{name}'s status.url to answer")


def test_requests_through_status_url_reach_the_pods_through_the_router_streamed(
    cluster, models, operator, model_dir, created
):
    name = created(routed_md("routed", {"hostPath": {"path": str(model_dir)}}, replicas=2))
    models.wait_ready(name, replicas=2, timeout=START_TIMEOUT_S)
    url = routed_url(cluster, models, name)
    engines = {
        p["metadata"]["name"]
        for p in models.pods(name)
        if p["metadata"]["labels"].get("app.kubernetes.io/component") == "engine"
    }
    assert len(engines) == 2

    served = set()
    for i in range(6):
        body = {"prompt": f"hello {i}", "max_tokens": 3, "temperature": 0}
        answer = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        served.add(answer.headers[POD_HEADER])
    assert served <= engines and served, served

    # one event per token (that the router passes them on unbuffered: tests/integration/router/)
    body = {"prompt": "stream", "max_tokens": 50, "temperature": 0, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200 and response.headers[POD_HEADER] in engines
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert len([e for e in events[:-1] if json.loads(e)["choices"]]) >= 50  # and the finishing event
