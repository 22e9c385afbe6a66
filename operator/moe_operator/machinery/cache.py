"""What the operator knows of the cluster: the objects its watches deliver, kept by kind, namespace, name.

Reconcile passes read from here instead of asking the API server, so that evaluating hundreds of
ModelDeployments every few seconds costs no reads. Three sources feed it:
- the watches (`observe`, `delete`): every change, in order, but late, and after a watch gap (410 Gone) kopf
  lists again without telling what vanished meanwhile;
- the operator's own writes (`put`), at once, so that a pass right after a write sees it;
- fresh listings (`replace_all`), which the manager runs now and then: what a listing lacks is gone.

resourceVersions are compared for equality only (Kubernetes guarantees nothing more before 1.35), so which of
two versions is newer comes from the watch's order alone. A version the cache took from a write or a listing
that the watch has not shown yet stands until the watch shows it (the watch's events before it are older),
until a write conflict says the server holds something newer, or until `expectation_s` passed (the watch
restarted past it); the watch's latest event meanwhile is kept and taken then. A version the watch showed
already is never taken again from a late write answer. A deleted object's uid is never let back in.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Key = tuple[str, str, str]  # kind, namespace, name

# how long a version the watch has not shown yet holds back the watch's own events
EXPECTATION_S = 30.0
_TOMBSTONES = 10_000  # uids of deleted objects remembered


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace") or "", meta["name"]


def _version(obj: Mapping[str, Any]) -> str | None:
    return (obj.get("metadata") or {}).get("resourceVersion")


def _uid(obj: Mapping[str, Any]) -> str | None:
    return (obj.get("metadata") or {}).get("uid")


@dataclass
class _Entry:
    obj: dict[str, Any]
    seen_at: float  # when the cache last took a version of it
    watched: dict[str, float] = field(default_factory=dict)  # versions the watch showed lately -> when
    expected: str | None = None  # a version taken from a write or a listing that the watch has yet to show
    expected_at: float = 0.0
    held: dict[str, Any] | None = None  # the watch's latest event while `expected` stands
    listed_at: float = float("-inf")  # when the listing whose version it holds was asked for


class ObjectCache:
    def __init__(
        self, clock: Callable[[], float] = time.monotonic, expectation_s: float = EXPECTATION_S
    ) -> None:
        self.clock = clock
        self._expectation_s = expectation_s
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str], dict[str, _Entry]] = defaultdict(dict)
        self._gone: OrderedDict[str, None] = OrderedDict()  # uids of deleted objects

    # ---- what feeds it ------------------------------------------------------------------------------------

    def observe(self, obj: Mapping[str, Any]) -> None:
        """A watch event (ADDED, MODIFIED, or an object kopf lists again after a gap)."""
        kind, namespace, name = key_of(obj)
        with self._lock:
            if _uid(obj) in self._gone:
                return
            now = self.clock()
            entry = self._objects[kind, namespace].get(name)
            if entry is None or _uid(entry.obj) != _uid(obj):
                self._objects[kind, namespace][name] = _Entry(
                    copy.deepcopy(dict(obj)), now, {_version(obj): now}
                )
                return
            entry.watched[_version(obj)] = now
            entry.watched = {v: t for v, t in entry.watched.items() if now - t <= self._expectation_s}
            if entry.expected is not None and _version(obj) != entry.expected:
                entry.held = copy.deepcopy(
                    dict(obj)
                )  # older than the expected version, or the watch skipped it
                self._expire(entry, now)
                return
            entry.obj, entry.seen_at = copy.deepcopy(dict(obj)), now
            entry.expected = entry.held = None

    def put(self, obj: Mapping[str, Any], sent_at: float | None = None) -> None:
        """The answer to the operator's own write (or a read just made), whose request left at `sent_at`."""
        kind, namespace, name = key_of(obj)
        with self._lock:
            if _uid(obj) in self._gone:
                return  # the write raced a deletion the watch reported already
            now = self.clock()
            entry = self._objects[kind, namespace].get(name)
            if entry is not None and _uid(entry.obj) == _uid(obj):
                if _version(obj) in entry.watched:
                    return  # the watch showed this version already, and perhaps newer ones since
                if sent_at is not None and max(entry.seen_at, entry.listed_at) >= sent_at:
                    # what the cache took since the write left (the watch after a restart, a listing) may be
                    # newer than it: the watch will show the write if it is the newest
                    return
            self._take(kind, namespace, name, obj, now, entry)

    def delete(self, obj: Mapping[str, Any]) -> None:
        """A watch DELETED event, or the operator's own delete."""
        kind, namespace, name = key_of(obj)
        with self._lock:
            entry = self._objects[kind, namespace].get(name)
            if entry is not None and _uid(obj) in (None, _uid(entry.obj)):
                del self._objects[kind, namespace][name]  # not a namesake created since
                self._bury(_uid(entry.obj))
            self._bury(_uid(obj))

    def evict(self, kind: str, namespace: str, name: str) -> None:
        """The API server answered 404: the object is gone, whatever the watch said last."""
        with self._lock:
            entry = self._objects[kind, namespace].pop(name, None)
            if entry is not None:
                self._bury(_uid(entry.obj))

    def stale(self, kind: str, namespace: str, name: str) -> None:
        """A write conditioned on the cached version conflicted: the server holds a newer one, so the version
        the cache waits for is not the newest; take what the watch showed meanwhile."""
        with self._lock:
            entry = self._objects[kind, namespace].get(name)
            if entry is not None and entry.expected is not None:
                self._release(entry, self.clock())

    def replace_all(
        self,
        kind: str,
        namespace: str | None,
        objects: list[Mapping[str, Any]],
        listed_at: float,
        watching: bool = True,
    ) -> list[dict[str, Any]]:
        """A fresh listing of a kind (in one namespace, or all for None), asked for at `listed_at` (this
        cache's clock): what it lacks and the cache knew before then is gone. Returns what went.
        `watching` False: no watch has started yet, so whatever one shows later is as new as the listing or
        newer, and is taken at once (held back, a change made while the operator restarted waited out
        `expectation_s`)."""
        listed = {key_of(obj): obj for obj in objects}
        gone = []
        with self._lock:
            now = self.clock()
            for (k, ns), entries in self._objects.items():
                if k != kind or (namespace is not None and ns != namespace):
                    continue
                for name in [
                    n for n, e in entries.items() if (k, ns, n) not in listed and e.seen_at < listed_at
                ]:
                    entry = entries.pop(name)
                    self._bury(_uid(entry.obj))
                    gone.append(copy.deepcopy(entry.obj))
            for (k, ns, name), obj in listed.items():
                if _uid(obj) in self._gone:
                    continue  # deleted after the listing was asked for
                entry = self._objects[k, ns].get(name)
                if entry is not None and entry.seen_at >= listed_at:
                    continue  # changed after the listing was asked for: as new as it, or newer
                watched = (
                    entry is not None and _uid(entry.obj) == _uid(obj) and _version(obj) in entry.watched
                )
                if watched and entry.expected is None:
                    continue  # the watch showed the listed version: the cache holds it, or a newer one
                self._take(k, ns, name, obj, now, entry)
                taken = self._objects[k, ns][name]
                taken.listed_at = listed_at
                if not watching:
                    taken.expected = None
        return gone

    # ---- what passes read ---------------------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._objects[kind, namespace].get(name)
            if entry is None:
                return None
            self._expire(entry, self.clock())
            return copy.deepcopy(entry.obj)

    def select(self, kind: str, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """Objects of a kind in a namespace whose labels include all of `labels`."""
        with self._lock:
            now = self.clock()
            found = []
            for entry in self._objects[kind, namespace].values():
                if labels.items() <= (entry.obj["metadata"].get("labels") or {}).items():
                    self._expire(entry, now)
                    found.append(copy.deepcopy(entry.obj))
            return found

    def list(self, kind: str, copies: bool = True) -> list[dict[str, Any]]:
        """Every cached object of a kind, in every namespace. `copies` False: the cached objects themselves, for
        a reader that only reads, often (the cache replaces an object when it changes, never edits one)."""
        with self._lock:
            now = self.clock()
            found = []
            for (k, _), entries in self._objects.items():
                if k == kind:
                    for entry in entries.values():
                        self._expire(entry, now)
                        found.append(copy.deepcopy(entry.obj) if copies else entry.obj)
            return found

    def names(self, kind: str) -> list[tuple[str, str]]:
        """(namespace, name) of every cached object of a kind."""
        with self._lock:
            return [(ns, name) for (k, ns), objs in self._objects.items() if k == kind for name in objs]

    # ---- inside -------------------------------------------------------------------------------------------

    def _take(self, kind: str, namespace: str, name: str, obj: Mapping[str, Any], now: float, entry) -> None:
        """A version from a write or a listing: unless the watch showed it already, it stands until it does."""
        same = entry is not None and _uid(entry.obj) == _uid(obj)
        watched = entry.watched if same else {}
        expected = None if _version(obj) in watched else _version(obj)
        taken = _Entry(copy.deepcopy(dict(obj)), now, watched, expected, now)
        if same:
            taken.listed_at = entry.listed_at
        self._objects[kind, namespace][name] = taken

    def _expire(self, entry: _Entry, now: float) -> None:
        if entry.expected is not None and now - entry.expected_at > self._expectation_s:
            self._release(entry, now)

    @staticmethod
    def _release(entry: _Entry, now: float) -> None:
        if entry.held is not None:
            entry.obj, entry.seen_at = entry.held, now
        entry.expected = entry.held = None

    def _bury(self, uid: str | None) -> None:
        if uid is None:
            return
        self._gone[uid] = None
        while len(self._gone) > _TOMBSTONES:
            self._gone.popitem(last=False)
