"""spec.adapters under engine vllm: the pod's adapter-sync sidecar loads each listed adapter into the running vLLM
server through vLLM's adapter API before the pod turns Ready; an adapter added to the list loads into the same
pod without a restart and serves; one vLLM refuses is reported in status.adapters with its reason; a removed one
is unloaded and no longer served. Everything real: the sidecar and vLLM as processes of the pod on the local
kubelet, Prometheus scraping the sidecar, the operator reading it.

vLLM's CPU build serves LoRA only on a dense model (support.write_dense_checkpoint): the pods here serve a dense
Qwen3. On an MoE model the same pod starts and loads adapters, and its first request kills the engine (vLLM's
Triton MoE LoRA kernel has no CPU backend); on GPUs it serves.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.vllm.support import (
    START_S,
    adapters_served,
    completion,
    delete_and_wait,
    pod_urls,
    vllm_md,
)
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = "vllm-lora"


def listed(adapters: dict[str, Path], *names: str) -> list[dict]:
    return [{"name": name, "source": {"hostPath": {"path": str(adapters[name])}}} for name in names]


def adapters_status(models) -> tuple[dict, dict]:
    md = models.get(NAME)
    items = {item["name"]: item for item in md["status"].get("adapters") or ()}
    ready = next((c for c in md["status"].get("conditions") or () if c["type"] == "AdaptersReady"), {})
    return items, ready


def test_adapters_load_into_the_running_vllm_pod_and_unload_when_removed(
    cluster, models, measuring_operator, dense_checkpoint, dense_adapters
):
    body = vllm_md(NAME, dense_checkpoint, maxLoraRank=8, maxLoras=2)
    body["spec"]["adapters"] = listed(dense_adapters, "sql")
    models.apply(body)
    try:
        md = models.wait_ready(NAME, replicas=1, timeout=START_S)
        revision = md["status"]["currentRevision"]
        (pod,) = models.pods(NAME)
        assert [c["name"] for c in pod["spec"]["containers"]] == ["runtime", "adapter-sync"]
        url = pod_urls(cluster.targets_file, models.namespace, NAME)[pod["metadata"]["name"]]
        # Ready only once the sidecar loaded the listed adapter
        assert adapters_served(url) == {"sql": str(dense_adapters["sql"])}
        base, sql = completion(url), completion(url, model="sql")
        assert base["status"] == sql["status"] == 200, (base, sql)
        assert sql["body"]["choices"][0]["text"] != base["body"]["choices"][0]["text"]
        items, ready = wait_for(
            lambda: (s := adapters_status(models))[1].get("status") == "True" and s, timeout=60,
            what="AdaptersReady from the sidecar's series in Prometheus",
        )  # fmt: skip
        assert items["sql"]["loadedReplicas"] == items["sql"]["readyReplicas"] == 1

        # two more in the same node folder: no new revision, no restart; chat serves, wide is refused
        models.patch_spec(NAME, {"adapters": listed(dense_adapters, "sql", "chat", "wide")})
        wait_for(lambda: "chat" in adapters_served(url), timeout=60, what="chat loaded into the running pod")
        assert completion(url, model="chat")["status"] == 200

        def refusal() -> tuple | None:
            items, ready = adapters_status(models)
            return (items, ready) if items.get("wide", {}).get("reason") else None

        items, ready = wait_for(refusal, timeout=60, what="wide's refusal in status.adapters")
        assert items["wide"]["reason"] == "rank_above_max" and items["wide"]["failedReplicas"] == 1
        assert ready["status"] == "False" and ready["reason"] == "AdapterLoadFailed"
        assert items["chat"]["loadedReplicas"] == 1

        # sql leaves the list: unloaded from the same pod, no longer served
        models.patch_spec(NAME, {"adapters": listed(dense_adapters, "chat")})
        wait_for(lambda: "sql" not in adapters_served(url), timeout=60, what="sql unloaded")
        assert completion(url, model="sql")["status"] == 404
        assert completion(url, model="chat")["status"] == 200

        (after,) = models.pods(NAME)
        assert after["metadata"]["uid"] == pod["metadata"]["uid"], "the pod was replaced"
        assert all(s["restartCount"] == 0 for s in after["status"]["containerStatuses"])
        assert models.get(NAME)["status"]["currentRevision"] == revision
    finally:
        delete_and_wait(models, NAME)
