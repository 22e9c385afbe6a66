"""The watch cache: what the watch, the operator's own writes and fresh listings make of it.

resourceVersions are opaque strings that may only be compared for equality (Kubernetes before 1.35): the
tests give them in random text, so any ordering of them by value would show.
"""

from __future__ import annotations

import copy
import itertools
import random
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from moe_operator.machinery.cache import ObjectCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def obj(name, version, kind="Deployment", namespace="ns", labels=None, uid=None, **extra):
    meta = {
        "name": name,
        "namespace": namespace,
        "resourceVersion": str(version),
        "labels": labels or {},
        "uid": uid or f"uid-{name}",
    }
    return {"kind": kind, "metadata": meta, **extra}


def test_a_late_watch_event_never_undoes_the_operator_s_write():
    cache = ObjectCache()
    cache.observe(obj("a", "k7", spec={"replicas": 1}))
    cache.put(
        obj("a", "b2", spec={"replicas": 3})
    )  # the operator's write: "b2" < "k7" as text, 2 < 7 as ints
    cache.observe(obj("a", "x9", spec={"replicas": 2}))  # an event from before the write, late
    assert cache.get("Deployment", "ns", "a")["spec"] == {"replicas": 3}
    cache.observe(obj("a", "b2", spec={"replicas": 3}))  # the watch reaches the write
    cache.observe(obj("a", "a1", spec={"replicas": 4}))  # and what came after it counts again
    assert cache.get("Deployment", "ns", "a")["spec"] == {"replicas": 4}


def test_a_write_the_watch_showed_first_does_not_hold_back_what_came_after_it():
    cache = ObjectCache()
    cache.observe(obj("a", "q", spec={"replicas": 3}))  # the watch was quicker than the write's answer
    cache.observe(obj("a", "c", spec={"replicas": 5}))
    cache.put(obj("a", "q", spec={"replicas": 3}))
    assert cache.get("Deployment", "ns", "a")["spec"] == {"replicas": 5}
    cache.observe(obj("a", "z", spec={"replicas": 6}))
    assert cache.get("Deployment", "ns", "a")["spec"] == {"replicas": 6}


def test_a_conflict_hands_over_to_what_the_watch_showed_meanwhile():
    cache = ObjectCache()
    cache.put(obj("a", "w", spec={"replicas": 3}))
    cache.observe(obj("a", "n", spec={"replicas": 9}))  # held back: it may be older than the write
    cache.stale("Deployment", "ns", "a")  # the API server says the write is not the newest any more
    assert cache.get("Deployment", "ns", "a")["spec"] == {"replicas": 9}


def test_an_unconfirmed_write_gives_way_to_the_watch_after_a_while():
    clock = Clock()
    cache = ObjectCache(clock=clock, expectation_s=30)
    cache.put(obj("a", "w", spec={"replicas": 3}))
    cache.observe(obj("a", "n", spec={"replicas": 9}))
    assert cache.get("Deployment", "ns", "a")["spec"] == {"replicas": 3}
    clock.now += 31  # the watch restarted past the write and will never show it
    assert cache.get("Deployment", "ns", "a")["spec"] == {"replicas": 9}


def test_a_deleted_object_is_never_revived_by_a_late_event_or_write_but_its_namesake_is_new():
    cache = ObjectCache()
    cache.observe(obj("a", "1"))
    cache.delete(obj("a", "2"))
    cache.observe(obj("a", "1"))
    cache.put(obj("a", "3"))  # a write that raced the deletion
    assert cache.get("Deployment", "ns", "a") is None
    cache.observe(obj("a", "4", uid="uid-a-again"))
    assert cache.get("Deployment", "ns", "a") is not None, "a namesake created since is another object"


def test_a_vanished_object_is_evicted():
    cache = ObjectCache()
    cache.observe(obj("a", "1"))
    cache.evict("Deployment", "ns", "a")  # a write answered 404
    cache.observe(obj("a", "1"))
    assert cache.get("Deployment", "ns", "a") is None


def test_reads_are_copies_unless_a_reader_asks_for_the_cached_objects():
    cache = ObjectCache()
    cache.observe(obj("a", 1, spec={"replicas": 3}))
    cache.get("Deployment", "ns", "a")["spec"]["replicas"] = 99
    cache.list("Deployment")[0]["spec"]["replicas"] = 98
    assert cache.get("Deployment", "ns", "a")["spec"]["replicas"] == 3
    [cached] = cache.list("Deployment", copies=False)
    assert cache.list("Deployment", copies=False)[0] is cached, "the same object while it is unchanged"
    cache.observe(obj("a", 2, spec={"replicas": 4}))
    assert (
        cached["spec"]["replicas"] == 3 and cache.list("Deployment", copies=False)[0]["spec"]["replicas"] == 4
    )


def test_select_by_kind_namespace_and_labels():
    cache = ObjectCache()
    cache.observe(obj("a", 1, labels={"app": "x", "tier": "1"}))
    cache.observe(obj("b", 1, labels={"app": "y"}))
    cache.observe(obj("c", 1, labels={"app": "x"}, namespace="other"))
    cache.observe(obj("d", 1, labels={"app": "x"}, kind="Pod"))
    assert [o["metadata"]["name"] for o in cache.select("Deployment", "ns", {"app": "x"})] == ["a"]
    assert sorted(cache.names("Deployment")) == [("ns", "a"), ("ns", "b"), ("other", "c")]


def test_a_fresh_listing_drops_what_it_lacks_in_its_namespace_only():
    clock = Clock()
    cache = ObjectCache(clock=clock)
    for name, namespace in (("a", "ns"), ("b", "ns"), ("c", "other")):
        cache.observe(obj(name, 1, namespace=namespace))
    clock.now += 1
    gone = cache.replace_all("Deployment", "ns", [obj("b", 2)], listed_at=clock())
    assert [o["metadata"]["name"] for o in gone] == ["a"]
    assert sorted(cache.names("Deployment")) == [("ns", "b"), ("other", "c")]
    clock.now += 1
    cache.replace_all("Deployment", None, [], listed_at=clock())
    assert cache.names("Deployment") == []


def test_a_listing_keeps_what_changed_after_it_was_asked_for():
    clock = Clock()
    cache = ObjectCache(clock=clock)
    cache.observe(obj("old", 1))
    listed_at = clock()
    clock.now += 1
    cache.put(obj("new", "n1"))  # created while the list was on its way: not in it, yet there
    cache.observe(obj("old", "o2", spec={"replicas": 2}))
    cache.replace_all("Deployment", "ns", [obj("old", "o1")], listed_at=listed_at)
    assert cache.get("Deployment", "ns", "new") is not None
    assert cache.get("Deployment", "ns", "old")["metadata"]["resourceVersion"] == "o2"


def test_a_change_made_while_the_operator_was_down_is_taken_from_the_first_watch_event():
    """The listing at start comes before any watch: a watch's first event is as new as it or newer. (Held back
    as a version the watch might be behind, a spec changed during a restart waited out the expectation.)"""
    clock = Clock()
    cache = ObjectCache(clock=clock)
    cache.replace_all("Deployment", "ns", [obj("d", "v1")], listed_at=clock(), watching=False)
    clock.now += 1
    cache.observe(obj("d", "v2", spec={"replicas": 3}))  # the watch starts after someone changed it
    assert cache.get("Deployment", "ns", "d")["metadata"]["resourceVersion"] == "v2"


def test_while_watching_a_listed_version_holds_back_an_event_the_watch_may_be_behind_with():
    clock = Clock()
    cache = ObjectCache(clock=clock)
    cache.observe(obj("d", "v1"))
    clock.now += 1
    cache.replace_all("Deployment", "ns", [obj("d", "v3")], listed_at=clock())
    clock.now += 1
    cache.observe(obj("d", "v2"))  # in flight from before the listing
    assert cache.get("Deployment", "ns", "d")["metadata"]["resourceVersion"] == "v3"


# ---- interleavings ----------------------------------------------------------------------------------------


@dataclass
class Server:
    """An API server's history: every version of every object, in the order it happened, with opaque
    resourceVersions; and the watch's ordered stream of it."""

    rng: random.Random
    objects: dict[str, dict] = field(default_factory=dict)  # name -> current object
    order: dict[str, int] = field(default_factory=dict)  # resourceVersion -> position in history
    stream: list[tuple[str, dict]] = field(default_factory=list)  # (event type, object) not yet delivered
    uids: itertools.count = field(default_factory=itertools.count)

    def _version(self) -> str:
        version = "".join(self.rng.choice("abcdefghij0123456789") for _ in range(6))
        self.order[version] = len(self.order)
        return version

    def change(self, name: str) -> dict:
        """A create, or an update of the current object (by whoever: the operator or someone else)."""
        current = self.objects.get(name)
        uid = current["metadata"]["uid"] if current else f"uid-{next(self.uids)}"
        new = obj(name, self._version(), uid=uid, spec={"n": self.rng.random()})
        self.objects[name] = new
        self.stream.append(("MODIFIED", new))
        return new

    def delete(self, name: str) -> None:
        if (gone := self.objects.pop(name, None)) is not None:
            self.stream.append(("DELETED", obj(name, self._version(), uid=gone["metadata"]["uid"])))

    def position(self, version: str) -> int:
        return self.order[version]


STEPS = st.lists(
    st.tuples(
        st.sampled_from(["other-writes", "operator-writes", "delete", "deliver", "answer", "gap", "relist"]),
        st.sampled_from(["a", "b", "c"]),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(steps=STEPS, seed=st.integers(0, 2**32))
def test_interleavings_of_watch_writes_gaps_and_listings(steps, seed):
    """Whatever the order in which the watch, the answers to the operator's writes and fresh listings arrive
    (the watch in order, but late, or cut off by a gap that loses events, DELETED ones included):
    - what the cache shows of an object never goes back to an older version of it;
    - an object it handed out uncopied (list(copies=False)) never changes under its reader;
    - once the watch has caught up and a listing ran, the cache holds exactly the server's objects."""
    server = Server(random.Random(seed))
    clock = Clock()
    cache = ObjectCache(clock=clock, expectation_s=1e9)  # no expiry: regressions would show
    answers: list[
        tuple[dict, float]
    ] = []  # write results not yet handed to the cache, and when they were sent
    shown: dict[str, tuple[str, int]] = {}  # name -> (uid, history position) of the newest version shown
    handed: list[tuple[dict, dict]] = []  # (an object list() handed out uncopied, a copy of it then)

    def check_no_regression() -> None:
        for original, then in handed:
            assert original == then, "the cache edited an object it had handed out"
        handed.extend((o, copy.deepcopy(o)) for o in cache.list("Deployment", copies=False))
        for name in "abc":
            seen = cache.get("Deployment", "ns", name)
            if seen is None:
                continue
            uid, position = seen["metadata"]["uid"], server.position(seen["metadata"]["resourceVersion"])
            before = shown.get(name)
            if before is not None and before[0] == uid:
                assert position >= before[1], f"{name} went back from version {before[1]} to {position}"
            shown[name] = (uid, position)

    for step, name in steps:
        clock.now += 0.01
        if step == "other-writes":
            server.change(name)
        elif step == "operator-writes" and name in server.objects:
            answers.append((server.change(name), clock()))
        elif step == "delete":
            server.delete(name)
        elif step == "deliver" and server.stream:
            kind, event = server.stream.pop(0)
            cache.delete(event) if kind == "DELETED" else cache.observe(event)
        elif step == "answer" and answers:
            cache.put(*answers.pop(0))
        elif step == "gap":  # a 410: the events in flight are lost; the new watch lists (no DELETED)
            server.stream = [("MODIFIED", o) for o in server.objects.values()]
        elif step == "relist":
            cache.replace_all("Deployment", "ns", list(server.objects.values()), listed_at=clock())
        check_no_regression()

    for answer, sent_at in answers:
        cache.put(answer, sent_at)
        check_no_regression()
    for kind, event in server.stream:
        cache.delete(event) if kind == "DELETED" else cache.observe(event)
        check_no_regression()
    clock.now += 1
    cache.replace_all("Deployment", "ns", list(server.objects.values()), listed_at=clock())
    check_no_regression()
    held = {
        n: cache.get("Deployment", "ns", n)["metadata"]["resourceVersion"]
        for _, n in cache.names("Deployment")
    }
    assert held == {n: o["metadata"]["resourceVersion"] for n, o in server.objects.items()}


def test_list_gives_every_object_of_a_kind_in_every_namespace_as_the_api_has_it():
    cache = ObjectCache()
    for namespace in ("a", "b"):
        cache.put(
            {
                "kind": "ModelDeployment",
                "metadata": {"name": "m", "namespace": namespace, "resourceVersion": "1"},
            }
        )
    cache.put({"kind": "Pod", "metadata": {"name": "p", "namespace": "a", "resourceVersion": "2"}})
    listed = cache.list("ModelDeployment")
    assert sorted(md["metadata"]["namespace"] for md in listed) == ["a", "b"]
    assert all(md["kind"] == "ModelDeployment" for md in listed)
