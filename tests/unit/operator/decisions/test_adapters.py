"""LoRA adapters in the operator: the adapter list written in place (no new revision), status.adapters and
AdaptersReady from the runtime's metrics, and the Events, through the reconcile pass against the in-memory API."""

from __future__ import annotations

import json

from moe_operator.decisions.adapters import AdapterRead, adapter_events, regression, summarize
from moe_operator.decisions.promdata import NO_SERIES, AdapterStates, NoData
from moe_operator.decisions.promql import adapter_states
from moe_operator.io.prometheus import _adapter_states
from tests.unit.operator.world import NAME, NS, World

SQL = {"name": "sql", "source": {"pvc": {"claimName": "weights", "path": "loras/sql"}}}
CHAT = {"name": "chat", "source": {"pvc": {"claimName": "weights", "path": "loras/chat"}}}
LEGAL = {"name": "legal", "source": {"pvc": {"claimName": "more-loras", "path": "legal"}}}


class AdapterWorld(World):
    def listed(self):
        config_map = self.api.get_obj("ConfigMap", NS, f"{NAME}-adapters")
        return {a["name"]: a["path"] for a in json.loads(config_map["data"]["adapters.json"])}

    def adapters_condition(self):
        return self.condition("AdaptersReady")


def test_adding_and_removing_adapters_rewrites_the_list_in_place_and_keeps_the_revision():
    world = AdapterWorld(adapters=[SQL])
    world.reconcile()
    world.settle()
    world.reconcile()
    revision, template = world.status()["currentRevision"], world.deployment()["spec"]["template"]
    assert world.listed() == {"sql": "/models/loras/sql"}
    world.change_spec(adapters=[SQL, CHAT])
    world.reconcile()
    assert world.listed() == {"sql": "/models/loras/sql", "chat": "/models/loras/chat"}
    world.change_spec(adapters=[CHAT])
    world.reconcile()
    assert world.listed() == {"chat": "/models/loras/chat"}
    assert (
        world.status()["currentRevision"] == revision and world.deployment()["spec"]["template"] == template
    )
    assert (
        world.api.get_obj("ConfigMap", NS, f"{NAME}-adapters")["metadata"]["ownerReferences"][0]["name"]
        == NAME
    )
    world.change_spec(adapters=[CHAT, LEGAL])
    world.reconcile()
    assert world.status()["currentRevision"] != revision, "a claim the pods do not mount yet: a new revision"


def test_status_counts_the_ready_pods_per_adapter_and_names_a_failure():
    world = AdapterWorld(adapters=[SQL, CHAT])
    pods = world.ready_pods(2)
    world.read_adapters(
        AdapterStates(
            {
                pods[0]: {"sql": None, "chat": None},
                pods[1]: {"sql": None, "chat": "rank_above_max"},
                "gone": {"sql": None},
            }
        )
    )
    world.reconcile()
    assert world.status()["adapters"] == [
        {"name": "sql", "loadedReplicas": 2, "readyReplicas": 2},
        {
            "name": "chat",
            "loadedReplicas": 1,
            "readyReplicas": 2,
            "failedReplicas": 1,
            "reason": "rank_above_max",
            "error": f"failed to load: rank_above_max on {pods[1]}",
        },
    ]
    condition = world.adapters_condition()
    assert (condition["status"], condition["reason"]) == ("False", "AdapterLoadFailed")
    assert "chat failed to load: rank_above_max" in condition["message"]
    assert world.status()["phase"] != "Degraded", "the base model and the other adapter serve"
    assert [(e.type, e.reason) for e in world.events.posted if "Adapter" in e.reason] == [
        ("Normal", "AdapterLoaded"),
        ("Warning", "AdapterLoadFailed"),
    ]


def test_the_status_follows_the_newest_read_and_a_change_of_the_adapters_at_once():
    world = AdapterWorld(adapters=[SQL])
    world.reconcile()
    assert world.adapters_condition()["reason"] == "NoSeries", "not read yet: said so, nothing made up"
    pods = world.ready_pods(1)
    world.read_adapters(AdapterStates({pods[0]: {"sql": ""}}))
    world.reconcile()
    assert world.adapters_condition()["reason"] == "AdaptersLoading"
    world.clock.now += 10
    world.read_adapters(AdapterStates({pods[0]: {"sql": None, "chat": None}}))
    world.reconcile()
    assert world.adapters_condition()["status"] == "True"
    world.change_spec(adapters=[SQL, CHAT])
    world.reconcile()
    assert [a["name"] for a in world.status()["adapters"]] == ["sql", "chat"]
    world.change_spec(adapters=[])
    world.reconcile()
    assert "adapters" not in world.status()
    assert all(c["type"] != "AdaptersReady" for c in world.status()["conditions"])


def test_without_metrics_the_condition_says_why_and_no_count_is_made_up():
    world = AdapterWorld(adapters=[SQL])
    world.ready_pods(1)
    world.read_adapters(NoData(NO_SERIES, "no moe_runtime_lora_adapter_loaded series"))
    world.reconcile()
    assert world.status()["adapters"] == [{"name": "sql", "readyReplicas": 1}]
    condition = world.adapters_condition()
    assert (condition["status"], condition["reason"]) == ("False", "NoSeries")


def test_summaries_of_pods_that_are_not_scraped_yet_and_of_no_ready_pod():
    items, verdict = summarize(["a"], ["p0", "p1"], AdapterStates({"p0": {"a": None}}))
    assert (
        items == [{"name": "a", "loadedReplicas": 1, "readyReplicas": 2}]
        and verdict.reason == "AdaptersLoading"
    )
    _, verdict = summarize(["a"], [], AdapterStates({}))
    assert (verdict.status, verdict.reason) == (False, "NoReadyPods")
    _, verdict = summarize(["a", "b"], ["p0"], AdapterStates({"p0": {"a": None, "b": None}}))
    assert (verdict.status, verdict.reason) == (True, "AllAdaptersLoaded")


def test_events_come_once_per_change():
    loaded = {"name": "a", "loadedReplicas": 2, "readyReplicas": 2}
    failed = {
        "name": "b",
        "loadedReplicas": 0,
        "readyReplicas": 2,
        "failedReplicas": 2,
        "error": "failed: dora on p0, p1",
    }
    assert [e.reason for e in adapter_events([], [loaded, failed])] == ["AdapterLoaded", "AdapterLoadFailed"]
    assert adapter_events([loaded, failed], [loaded, failed]) == []
    scaled = {**loaded, "loadedReplicas": 2, "readyReplicas": 3}
    assert adapter_events([loaded], [scaled]) == []
    assert [e.reason for e in adapter_events([scaled], [{**scaled, "loadedReplicas": 3}])] == [
        "AdapterLoaded"
    ]


def test_the_adapter_query_and_what_its_answer_means():
    assert adapter_states(NS, NAME) == (
        '{__name__=~"moe_runtime_lora_adapter_loaded|moe_runtime_lora_adapter_load_error",'
        f'namespace="{NS}",model_deployment="{NAME}"}}'
    )

    def series(name, pod, adapter, value, **labels):
        return {
            "metric": {"__name__": name, "pod": pod, "adapter": adapter, **labels},
            "value": [1.0, str(value)],
        }

    answer = [
        series("moe_runtime_lora_adapter_loaded", "p0", "a", 1),
        series("moe_runtime_lora_adapter_loaded", "p0", "b", 0),
        series("moe_runtime_lora_adapter_loaded", "p1", "b", 0),
        series("moe_runtime_lora_adapter_load_error", "p1", "b", 1, reason="shape_mismatch"),
    ]
    states = _adapter_states(answer, "ns/md")
    assert states == AdapterStates({"p0": {"a": None, "b": ""}, "p1": {"b": "shape_mismatch"}})
    assert isinstance(_adapter_states([], "ns/md"), NoData)
    assert _adapter_states([{"metric": {}, "value": [1, "1"]}], "ns/md").reason == "QueryFailed"


def test_an_adapter_that_serves_on_the_stable_track_and_fails_on_the_canary_is_a_regression():
    def pod(name, revision):
        return {"metadata": {"name": name, "labels": {"moedeploy.dev/revision": revision}}}

    pods = [pod("s0", "old"), pod("c0", "new")]
    states = AdapterStates(
        {"s0": {"sql": None, "chat": "not_found"}, "c0": {"sql": "rank_above_max", "chat": "not_found"}}
    )
    found = regression(AdapterRead(0, states), pods, candidate="new", baseline="old")
    assert found == "adapter sql failed to load on pod c0 (rank_above_max) and serves on revision old"
    # an adapter that fails everywhere is the adapter's fault, not the revision's
    assert (
        regression(
            AdapterRead(0, AdapterStates({"s0": {"chat": "x"}, "c0": {"chat": "x"}})), pods, "new", "old"
        )
        is None
    )
    assert regression(AdapterRead(0, NoData(NO_SERIES, "none")), pods, "new", "old") is None
    assert regression(None, pods, "new", "old") is None
