"""What the operator knows of the cluster: the objects its watches deliver, kept by kind, namespace, name.

Reconcile passes read from here instead of asking the API server, so that evaluating hundreds of
ModelDeployments every few seconds costs no reads. The watches (kopf's streams) put every change; the
operator's own writes put their results at once, so a pass right after a write sees it. An object never goes
back to an older resourceVersion: a watch event that arrives late cannot undo a newer write.
"""

from __future__ import annotations

import copy
import threading
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

Key = tuple[str, str, str]  # kind, namespace, name


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace") or "", meta["name"]


def _version(obj: Mapping[str, Any] | None) -> int | None:
    try:
        return int(obj["metadata"]["resourceVersion"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return None


class ObjectCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
        self._deleted: dict[Key, int] = {}  # resourceVersion at deletion, so a late event cannot revive it

    def put(self, obj: Mapping[str, Any]) -> None:
        kind, namespace, name = key_of(obj)
        version = _version(obj)
        with self._lock:
            known = self._objects[kind, namespace].get(name)
            newest = _version(known) if known is not None else self._deleted.get((kind, namespace, name))
            if version is not None and newest is not None and version < newest:
                return
            self._deleted.pop((kind, namespace, name), None)
            self._objects[kind, namespace][name] = copy.deepcopy(dict(obj))

    def delete(self, obj: Mapping[str, Any]) -> None:
        kind, namespace, name = key_of(obj)
        with self._lock:
            self._objects[kind, namespace].pop(name, None)
            version = _version(obj)
            if version is not None:
                self._deleted[kind, namespace, name] = version

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._objects[kind, namespace].get(name)
            return copy.deepcopy(found) if found is not None else None

    def select(self, kind: str, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """Objects of a kind in a namespace whose labels include all of `labels`."""
        with self._lock:
            return [
                copy.deepcopy(obj)
                for obj in self._objects[kind, namespace].values()
                if labels.items() <= (obj["metadata"].get("labels") or {}).items()
            ]

    def list(self, kind: str) -> list[dict[str, Any]]:
        """Every cached object of a kind, in every namespace."""
        with self._lock:
            return [
                copy.deepcopy(obj)
                for (k, _), objs in self._objects.items()
                if k == kind
                for obj in objs.values()
            ]

    def names(self, kind: str) -> list[tuple[str, str]]:
        """(namespace, name) of every cached object of a kind."""
        with self._lock:
            return [(ns, name) for (k, ns), objs in self._objects.items() if k == kind for name in objs]

    def replace_all(self, kind: str, namespace: str | None, objects: list[Mapping[str, Any]]) -> None:
        """A fresh listing of a kind (in one namespace, or all for None): what it lacks is gone."""
        listed = {key_of(obj) for obj in objects}
        with self._lock:
            for (k, ns), objs in self._objects.items():
                if k != kind or (namespace is not None and ns != namespace):
                    continue
                for name in [n for n in objs if (k, ns, n) not in listed]:
                    del objs[name]
        for obj in objects:
            self.put(obj)
