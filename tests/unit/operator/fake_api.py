"""An in-memory stand-in for the API server, for the reconciler's unit tests: resourceVersions and their
preconditions, generations, AlreadyExists, immutable ConfigMaps, and a watch that feeds the operator's cache."""

from __future__ import annotations

import copy
import itertools
import json

from kubernetes.client.exceptions import ApiException

from moe_operator.machinery.cache import ObjectCache


def _error(status: int, message: str) -> ApiException:
    err = ApiException(status=status, reason=message)
    err.body = json.dumps({"message": message})
    return err


class FakeApi:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.versions = itertools.count(1)
        self.writes: list[tuple[str, str, str]] = []  # (verb, kind, name)
        self.events: list[dict] = []
        self.refuse: dict[str, ApiException] = {}  # kind -> error every write of that kind gets
        self.fail_next: dict[str, ApiException] = {}  # kind -> error the next write of that kind gets, once
        self.interfere_next_status = (
            False  # another client changes the ModelDeployment before the next status write
        )
        self.cache = ObjectCache()

    # ---- what the tests do to the world -------------------------------------------------------------

    def put(self, obj: dict) -> dict:
        """Stores an object as a client other than the operator would, and lets the watch deliver it."""
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        key = (obj["kind"], meta["namespace"], meta["name"])
        before = self.objects.get(key)
        meta.setdefault("uid", f"uid-{meta['name']}-{next(self.versions)}")
        if before is not None:
            meta["uid"] = before["metadata"]["uid"]
            meta["generation"] = before["metadata"].get("generation", 1) + (
                before.get("spec") != obj.get("spec")
            )
        else:
            meta["generation"] = 1
        meta["resourceVersion"] = str(next(self.versions))
        meta.setdefault("creationTimestamp", f"2026-01-01T00:00:{next(self.versions) % 60:02d}Z")
        self.objects[key] = obj
        self.cache.observe(obj)
        return copy.deepcopy(obj)

    def get_obj(self, kind: str, namespace: str, name: str) -> dict | None:
        return copy.deepcopy(self.objects.get((kind, namespace, name)))

    def of_kind(self, kind: str) -> list[dict]:
        return [copy.deepcopy(o) for (k, _, _), o in sorted(self.objects.items()) if k == kind]

    def deployment_controller_catches_up(self, name: str, namespace: str, ready: int | None = None) -> None:
        deployment = self.objects[("Deployment", namespace, name)]
        replicas = deployment["spec"]["replicas"]
        deployment["status"] = {
            "observedGeneration": deployment["metadata"]["generation"],
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas if ready is None else ready,
        }
        deployment["metadata"]["resourceVersion"] = str(next(self.versions))
        self.cache.observe(deployment)

    # ---- the Kube interface the operator uses ---------------------------------------------------------

    def get(self, kind, namespace, name):
        return self.get_obj(kind, namespace, name)

    def create(self, obj):
        self._refused(obj["kind"])
        meta = obj["metadata"]
        if (obj["kind"], meta["namespace"], meta["name"]) in self.objects:
            raise _error(409, f"{obj['kind']} {meta['name']} already exists")
        self.writes.append(("create", obj["kind"], meta["name"]))
        return self.put(obj)

    def apply(self, obj):
        self._refused(obj["kind"])
        meta = obj["metadata"]
        key = (obj["kind"], meta["namespace"], meta["name"])
        stored = self.objects.get(key)
        if stored is None or meta.get("resourceVersion") not in (None, stored["metadata"]["resourceVersion"]):
            raise _error(409, "the object has been modified")
        if obj["kind"] == "ConfigMap" and stored.get("immutable") and stored.get("data") != obj.get("data"):
            raise _error(422, "field is immutable when `immutable` is set")
        self.writes.append(("apply", obj["kind"], meta["name"]))
        merged = {**copy.deepcopy(obj), "status": copy.deepcopy(stored.get("status", {}))}
        merged["metadata"] = {**stored["metadata"], **copy.deepcopy(meta)}
        return self.put(merged)

    def delete(self, kind, namespace, name, uid=None):
        stored = self.objects.get((kind, namespace, name))
        if stored is None or (uid and stored["metadata"]["uid"] != uid):
            return
        self.writes.append(("delete", kind, name))
        del self.objects[(kind, namespace, name)]
        self.cache.delete(
            {**stored, "metadata": {**stored["metadata"], "resourceVersion": str(next(self.versions))}}
        )

    def replace_status(self, md, status):
        meta = md["metadata"]
        key = ("ModelDeployment", meta["namespace"], meta["name"])
        stored = self.objects.get(key)
        if stored is None:
            raise _error(404, "not found")
        if self.interfere_next_status:
            self.interfere_next_status = False
            changed = copy.deepcopy(stored)
            changed["metadata"].setdefault("annotations", {})["touched-by"] = str(next(self.versions))
            stored = self.put(changed)
        if meta.get("resourceVersion") != stored["metadata"]["resourceVersion"]:
            raise _error(409, "the object has been modified")
        self.writes.append(("status", "ModelDeployment", meta["name"]))
        stored = copy.deepcopy(stored)
        stored["status"] = copy.deepcopy(status)
        stored["metadata"]["resourceVersion"] = str(next(self.versions))
        self.objects[key] = stored
        self.cache.observe(stored)
        return copy.deepcopy(stored)

    def _refused(self, kind):
        if kind in self.refuse:
            raise self.refuse[kind]
        if kind in self.fail_next:
            raise self.fail_next.pop(kind)


class Events:
    """An event recorder that remembers what it was asked to post."""

    def __init__(self) -> None:
        self.posted = []

    def post(self, obj, event) -> None:
        self.posted.append(event)

    @property
    def reasons(self) -> list[str]:
        return [e.reason for e in self.posted]
