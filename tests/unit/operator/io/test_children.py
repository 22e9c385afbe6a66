"""Writing children through the watch cache: a write that finds the object other than the cache holds it
leaves the cache as the API server has it now."""

import pytest

from moe_operator.io.children import Writer
from moe_operator.machinery.errors import StaleRead
from tests.unit.operator.fake_api import FakeApi
from tests.unit.operator.samples import OWNER


def config_map(data: str) -> dict:
    meta = {"name": "c", "namespace": OWNER.namespace, "ownerReferences": [OWNER.reference()]}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"k": data}}


def test_an_object_deleted_in_a_watch_gap_is_evicted_by_the_write_that_finds_it_gone():
    api = FakeApi()
    writer = Writer(api, api.cache, OWNER.uid)
    writer.create(config_map("1"))
    cached = api.cache.get("ConfigMap", OWNER.namespace, "c")
    del api.objects["ConfigMap", OWNER.namespace, "c"]  # gone, and no DELETED event came
    with pytest.raises(StaleRead):
        writer.apply(config_map("2"), cached)
    assert api.cache.get("ConfigMap", OWNER.namespace, "c") is None
    writer.create(config_map("2"))  # the next pass makes it again


def test_a_conflict_leaves_the_cache_with_the_object_as_it_is_now():
    api = FakeApi()
    writer = Writer(api, api.cache, OWNER.uid)
    writer.create(config_map("1"))
    cached = api.cache.get("ConfigMap", OWNER.namespace, "c")
    changed = api.get_obj("ConfigMap", OWNER.namespace, "c")
    changed["data"] = {"k": "by hand"}
    api.objects["ConfigMap", OWNER.namespace, "c"] = {
        **changed,
        "metadata": {**changed["metadata"], "resourceVersion": "someone-else"},
    }  # changed, and the watch has not said so yet
    with pytest.raises(StaleRead):
        writer.apply(config_map("2"), cached)
    assert api.cache.get("ConfigMap", OWNER.namespace, "c")["data"] == {"k": "by hand"}
