from moe_operator.machinery.cache import ObjectCache


def obj(name, version, kind="Deployment", namespace="ns", labels=None, **extra):
    meta = {"name": name, "namespace": namespace, "resourceVersion": str(version), "labels": labels or {}}
    return {"kind": kind, "metadata": meta, **extra}


def test_a_late_event_never_undoes_a_newer_write():
    cache = ObjectCache()
    cache.put(obj("a", 10, spec={"replicas": 3}))
    cache.put(obj("a", 9, spec={"replicas": 1}))
    assert cache.get("Deployment", "ns", "a")["spec"] == {"replicas": 3}
    cache.delete(obj("a", 11))
    cache.put(obj("a", 10))
    assert cache.get("Deployment", "ns", "a") is None, "a deleted object is not revived by an older event"
    cache.put(obj("a", 12))
    assert cache.get("Deployment", "ns", "a") is not None, "a newer one (recreated) is"


def test_reads_are_copies():
    cache = ObjectCache()
    cache.put(obj("a", 1, spec={"replicas": 3}))
    cache.get("Deployment", "ns", "a")["spec"]["replicas"] = 99
    assert cache.get("Deployment", "ns", "a")["spec"]["replicas"] == 3


def test_select_by_kind_namespace_and_labels():
    cache = ObjectCache()
    cache.put(obj("a", 1, labels={"app": "x", "tier": "1"}))
    cache.put(obj("b", 1, labels={"app": "y"}))
    cache.put(obj("c", 1, labels={"app": "x"}, namespace="other"))
    cache.put(obj("d", 1, labels={"app": "x"}, kind="Pod"))
    assert [o["metadata"]["name"] for o in cache.select("Deployment", "ns", {"app": "x"})] == ["a"]
    assert sorted(cache.names("Deployment")) == [("ns", "a"), ("ns", "b"), ("other", "c")]


def test_a_fresh_listing_drops_what_it_lacks_in_its_namespace_only():
    cache = ObjectCache()
    for name, namespace in (("a", "ns"), ("b", "ns"), ("c", "other")):
        cache.put(obj(name, 1, namespace=namespace))
    cache.replace_all("Deployment", "ns", [obj("b", 2)])
    assert sorted(cache.names("Deployment")) == [("ns", "b"), ("other", "c")]
    cache.replace_all("Deployment", None, [])
    assert cache.names("Deployment") == []
