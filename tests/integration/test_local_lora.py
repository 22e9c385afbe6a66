"""LoRA adapters of a ModelDeployment on the local cluster: pods as real runtime processes on the local kubelet's
node, adapters made by PEFT into one hostPath folder, the operator as a process reading the runtime's metrics
through the stack's real Prometheus.

Two pods serve adapters a and b; c is added without restarting them (same pods, same processes, same revision);
an adapter of too high a rank is reported in status while the others serve; a killed process comes back with
every adapter before its pod is Ready again.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from moe_runtime.engine.sampling import SamplingParams
from tests.integration.local_stack import (
    START_TIMEOUT_S,
    container_status,
    local_md,
    pod_ready,
    processes,
    settled,
    write_tiny_checkpoint,
)
from tests.integration.lora_support import peft_adapter
from tests.integration.operator_support import OperatorProcess
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MD = "tuned"
STATUS_TIMEOUT_S = 90  # a scrape (1 s), the operator's evaluation interval (10 s), pods settling


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("local-lora") / "tiny-qwen3-moe")


@pytest.fixture(scope="module")
def loras(model_dir, tmp_path_factory) -> Path:
    """One node folder holding every adapter: a, b and c, and `wide` of rank 32 (the pods allow 16)."""
    root = tmp_path_factory.mktemp("loras")
    for seed, name in enumerate("abc"):
        peft_adapter(model_dir, root / name, seed=seed)
    peft_adapter(model_dir, root / "wide", seed=9, experts=False, r=32)
    return root


@pytest.fixture(scope="module")
def reference(model_dir, loras):
    from moe_runtime.engine.engine import Engine

    engine = Engine.load(str(model_dir), device="cpu", dtype="float32")
    for name in "abc":
        engine.load_adapter(name, str(loras / name))
    return engine


@pytest.fixture(scope="module")
def lora_operator(cluster, md_namespace, tmp_path_factory):
    args = ["--namespace", md_namespace, "--prometheus-url", cluster.prometheus_url]
    process = OperatorProcess(cluster, args, tmp_path_factory.mktemp("lora-operator") / "operator.log")
    process.start()
    yield process
    process.stop()
    print(process.log()[-5000:])


def adapters(loras: Path, *names: str) -> list[dict]:
    return [{"name": name, "source": {"hostPath": {"path": str(loras / name)}}} for name in names]


@pytest.fixture(scope="module")
def tuned(models, lora_operator, model_dir, loras):
    body = local_md(MD, {"hostPath": {"path": str(model_dir)}}, replicas=2)
    body["spec"]["adapters"] = adapters(loras, "a", "b")
    body["spec"]["runtime"]["maxLoras"] = 4
    body["spec"]["runtime"]["dtype"] = "float32"
    models.apply(body)
    yield MD
    models.kubectl("delete", "md", MD, "--wait=false", "--ignore-not-found", check=False)


def served(port: int) -> dict[str, str | None] | None:
    """Adapter -> parent as /v1/models lists them (the base model under its own name, parent None); None while
    the process does not serve."""
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5)
    except httpx.TransportError:
        return None
    return {m["id"]: m["parent"] for m in response.json()["data"]} if response.status_code == 200 else None


def answer(port: int, model: str, prompt: str) -> str:
    body = {"model": model, "prompt": prompt, "max_tokens": 6, "temperature": 0}
    response = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


def expected(engine, prompt: str, adapter: str) -> str:
    ids = engine.tokenizer.encode(prompt)
    return engine.tokenizer.decode(engine.generate([ids], SamplingParams(max_tokens=6), [adapter])[0])


def status_of(models, name: str) -> dict[str, dict]:
    return {a["name"]: a for a in ((models.get(name) or {}).get("status", {}).get("adapters") or [])}


def every_ready_pod_has(models, name: str, wanted: set[str]):
    def check():
        found = status_of(models, name)
        ok = set(found) >= wanted and all(
            found[n].get("loadedReplicas") == found[n].get("readyReplicas") == 2 for n in wanted
        )
        return ok and found

    return wait_for(
        check, timeout=STATUS_TIMEOUT_S, what=f"status.adapters: {sorted(wanted)} loaded on both pods"
    )


def test_every_pod_serves_both_adapters_and_the_status_counts_them(cluster, models, tuned, reference):
    live = wait_for(
        lambda: settled(cluster, models, tuned, 2), timeout=START_TIMEOUT_S, what="two Ready pods"
    )
    for process in live.values():
        listed = served(process["port"])
        assert listed["a"] == listed["b"] == MD and listed[MD] is None
        for adapter in "ab":
            assert answer(process["port"], adapter, "Hello") == expected(reference, "Hello", adapter)
    every_ready_pod_has(models, tuned, {"a", "b"})
    condition = wait_for(
        lambda: (c := models.condition(tuned, "AdaptersReady")) and c["status"] == "True" and c,
        timeout=STATUS_TIMEOUT_S,
        what="AdaptersReady=True",
    )
    assert condition["reason"] == "AllAdaptersLoaded"
    assert any(e["reason"] == "AdapterLoaded" for e in models.events(tuned))


def test_a_third_adapter_is_added_without_restarting_a_pod(cluster, models, tuned, loras, reference):
    before = wait_for(
        lambda: settled(cluster, models, tuned, 2), timeout=START_TIMEOUT_S, what="two Ready pods"
    )
    revision = models.get(tuned)["status"]["currentRevision"]
    models.patch_spec(tuned, {"adapters": adapters(loras, "a", "b", "c")})
    wait_for(
        lambda: all("c" in (served(p["port"]) or {}) for p in before.values()),
        timeout=60,
        what="both pods to serve c",
    )
    after = processes(cluster.state_dir, models.namespace, tuned)
    assert {name: p["pid"] for name, p in after.items()} == {name: p["pid"] for name, p in before.items()}
    assert models.get(tuned)["status"]["currentRevision"] == revision
    for process in after.values():
        assert answer(process["port"], "c", "Hi there") == expected(reference, "Hi there", "c")
    every_ready_pod_has(models, tuned, {"a", "b", "c"})


def test_a_broken_adapter_is_reported_while_the_others_serve(cluster, models, tuned, loras, reference):
    live = wait_for(
        lambda: settled(cluster, models, tuned, 2), timeout=START_TIMEOUT_S, what="two Ready pods"
    )
    models.patch_spec(tuned, {"adapters": adapters(loras, "a", "b", "c", "wide")})

    def reported():
        wide = status_of(models, tuned).get("wide", {})
        condition = models.condition(tuned, "AdaptersReady") or {}
        return (
            wide.get("failedReplicas") == 2
            and condition.get("reason") == "AdapterLoadFailed"
            and (wide, condition)
        )

    wide, condition = wait_for(reported, timeout=STATUS_TIMEOUT_S, what="the broken adapter in status")
    assert wide["reason"] == "rank_above_max" and "rank_above_max" in condition["message"]
    assert condition["status"] == "False" and "wide" in condition["message"]
    wait_for(  # posted right after the status is written
        lambda: any(
            e["reason"] == "AdapterLoadFailed" and e["type"] == "Warning" for e in models.events(tuned)
        ),
        timeout=10,
        what="a Warning AdapterLoadFailed Event",
    )
    for process in live.values():
        assert "wide" not in served(process["port"])
        assert answer(process["port"], "b", "Still") == expected(reference, "Still", "b")
    assert all(status_of(models, tuned)[n]["loadedReplicas"] == 2 for n in "abc")
    assert models.get(tuned)["status"]["phase"] == "Ready", "the base model and the other adapters serve"


def test_a_killed_pod_comes_back_with_all_its_adapters_before_it_is_ready(cluster, models, tuned):
    live = wait_for(
        lambda: settled(cluster, models, tuned, 2), timeout=START_TIMEOUT_S, what="two Ready pods"
    )
    name, process = sorted(live.items())[0]
    restarts = container_status(next(p for p in models.pods(tuned) if p["metadata"]["name"] == name))[
        "restartCount"
    ]
    os.kill(process["pid"], signal.SIGKILL)
    seen = []

    def back():
        pod = next((p for p in models.pods(tuned) if p["metadata"]["name"] == name), None)
        now = processes(cluster.state_dir, models.namespace, tuned).get(name)
        if pod is None or now is None or now["pid"] == process["pid"]:
            return None
        # read the pod first: once its status is about the new process, Ready must mean every adapter serves
        ready = pod_ready(pod) and container_status(pod)["restartCount"] > restarts
        listed = served(now["port"])
        seen.append((ready, listed))
        return ready and listed

    listed = wait_for(back, timeout=START_TIMEOUT_S, interval=0.2, what="the pod Ready again")
    assert {"a", "b", "c"} <= set(listed) and "wide" not in listed
    assert all(listed is not None and {"a", "b", "c"} <= set(listed) for ready, listed in seen if ready)
    assert any(not ready for ready, _ in seen), "the restarted process was seen before it was Ready"
