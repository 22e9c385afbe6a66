"""Kubernetes Events about ModelDeployments, posted through the API (what `kubectl describe md` shows).

Repeats of one event (same object, type, reason and message) within a while are folded into the first one's
count, as client-go's recorder does, so a condition that stays broken does not flood the namespace.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from moe_operator.decisions.events import Event
from moe_operator.timestamps import now_time

log = logging.getLogger(__name__)

COMPONENT = "moe-operator"
FOLD_WINDOW_S = 600
REMEMBERED = 4096


class EventRecorder:
    def __init__(self, kube, instance: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._kube = kube
        self._instance = instance
        self._clock = clock
        self._lock = threading.Lock()
        # (uid, type, reason, message) -> (event namespace, event name, count, first seen)
        self._recent: OrderedDict[tuple, tuple[str, str, int, float]] = OrderedDict()

    def post(self, obj: Mapping[str, Any], event: Event) -> None:
        """Never raises: an event that cannot be posted is logged and dropped."""
        meta = obj["metadata"]
        key = (meta.get("uid"), event.type, event.reason, event.message)
        try:
            with self._lock:
                seen = self._recent.get(key)
                if seen is not None and self._clock() - seen[3] > FOLD_WINDOW_S:
                    seen = None
            if seen is None:
                name = self._create(obj, event)
                self._remember(key, (meta["namespace"], name, 1, self._clock()))
            else:
                namespace, name, count, first = seen
                self._kube.patch_event(namespace, name, {"count": count + 1, "lastTimestamp": now_time()})
                self._remember(key, (namespace, name, count + 1, first))
        except Exception as err:
            log.warning(
                "could not post event %s on %s/%s: %s", event.reason, meta["namespace"], meta["name"], err
            )

    def _create(self, obj: Mapping[str, Any], event: Event) -> str:
        meta = obj["metadata"]
        now = now_time()
        name = f"{meta['name']}.{secrets.token_hex(8)}"
        self._kube.create_event(
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": meta["namespace"]},
                "involvedObject": {
                    "apiVersion": obj["apiVersion"],
                    "kind": obj["kind"],
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "uid": meta.get("uid"),
                    "resourceVersion": meta.get("resourceVersion"),
                },
                "type": event.type,
                "reason": event.reason,
                "message": event.message[:1024],
                "source": {"component": COMPONENT},
                "reportingComponent": COMPONENT,
                "reportingInstance": self._instance,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            }
        )
        return name

    def _remember(self, key: tuple, value: tuple[str, str, int, float]) -> None:
        with self._lock:
            self._recent[key] = value
            self._recent.move_to_end(key)
            while len(self._recent) > REMEMBERED:
                self._recent.popitem(last=False)
