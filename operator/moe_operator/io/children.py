"""Writing a ModelDeployment's children: create what is missing, apply what differs, delete what must go,
and never touch an object that belongs to someone else.

An object is ours only when its controlling ownerReference carries the ModelDeployment's uid. A missing
object is created with POST, which fails when a namesake appeared meanwhile instead of taking it over; an
existing one is changed by server-side apply with the resourceVersion it was read at, which fails when it
changed since. Either failure is an answer, not an error: a name conflict, or a cache to catch up with.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from moe_operator.decisions.naming import conflict_message, is_ours
from moe_operator.decisions.status import Problem
from moe_operator.machinery.cache import ObjectCache, key_of
from moe_operator.machinery.errors import Refused, StaleRead

MESSAGE_LIMIT = 1024


class NameConflict(Exception):
    """The name is taken by an object the ModelDeployment does not control."""

    def __init__(self, obj: Mapping[str, Any]) -> None:
        super().__init__(conflict_message(obj))
        self.obj = obj


class WriteRefused(Refused):
    """The API server refused a write for a reason that retrying the same write cannot fix."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def is_refusal(err: ApiException) -> bool:
    """4xx other than conflicts and throttling, and the 500 server-side apply answers for duplicate list keys
    (e.g. a user env var named like one the operator sets): the same write would be refused again."""
    if err.status in (409, 429):
        return False
    if err.status is not None and 400 <= err.status < 500:
        return True
    return err.status == 500 and "duplicate" in (err.body or "").lower()


def refusal_message(err: ApiException) -> str:
    try:
        detail = json.loads(err.body)["message"]
    except (TypeError, ValueError, KeyError):
        detail = err.body or err.reason
    return f"the API server refused a child object ({err.status}): {detail}"[:MESSAGE_LIMIT]


class Writer:
    def __init__(self, kube, cache: ObjectCache, owner_uid: str) -> None:
        self._kube, self._cache, self._uid = kube, cache, owner_uid

    def check(self, observed: Mapping[str, Any] | None) -> None:
        if observed is not None and not is_ours(observed, self._uid):
            raise NameConflict(observed)

    def create(self, desired: Mapping[str, Any]) -> dict[str, Any]:
        try:
            created = self._call(lambda: self._kube.create(desired))
        except ApiException as err:
            if err.status != 409:
                raise
            kind, namespace, name = key_of(desired)
            found = self._kube.get(kind, namespace, name)
            if found is None:
                raise StaleRead(f"{kind} {name} vanished while being created") from err
            found.setdefault("kind", kind)
            self.check(found)
            self._cache.put(found)
            raise StaleRead(f"{kind} {name} existed already") from err
        self._cache.put(created)
        return created

    def apply(self, desired: Mapping[str, Any], observed: Mapping[str, Any]) -> dict[str, Any]:
        self.check(observed)
        body = {
            **desired,
            "metadata": {**desired["metadata"], "resourceVersion": observed["metadata"]["resourceVersion"]},
        }
        try:
            applied = self._call(lambda: self._kube.apply(body))
        except ApiException as err:
            if err.status == 409:
                raise StaleRead(f"{key_of(desired)} changed since it was read") from err
            raise
        self._cache.put(applied)
        return applied

    def delete(self, observed: Mapping[str, Any]) -> None:
        self.check(observed)
        kind, namespace, name = key_of(observed)
        self._call(lambda: self._kube.delete(kind, namespace, name, uid=observed["metadata"].get("uid")))
        self._cache.delete(observed)

    @staticmethod
    def _call(write):
        try:
            return write()
        except ApiException as err:
            if is_refusal(err):
                raise WriteRefused(Problem("ApplyFailed", refusal_message(err))) from err
            raise
