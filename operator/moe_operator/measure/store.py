"""The newest measurements of each ModelDeployment, as the measurement loop took them. Thread-safe.

Memory only, like the watch cache: what they decided is in the status; after a restart the loop reads again
(analysis windows are time ranges, so the same windows are measured again from Prometheus' history).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from moe_operator.decisions.adapters import AdapterRead
from moe_operator.decisions.promdata import Measurement, NoData
from moe_operator.decisions.scaling import QueueRead, RouterRead

Key = tuple[str, str]  # namespace, name
KEPT_WINDOWS = 64  # per revision: far more than one pass catches up on


class Measurements:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: dict[Key, QueueRead] = {}
        self._adapters: dict[Key, AdapterRead] = {}
        self._routers: dict[Key, RouterRead] = {}
        self._windows: dict[Key, dict[tuple[str, int], Measurement | NoData]] = {}

    def put_queue(self, key: Key, read: QueueRead) -> None:
        with self._lock:
            self._queue[key] = read

    def put_adapters(self, key: Key, read: AdapterRead) -> None:
        with self._lock:
            self._adapters[key] = read

    def put_routers(self, key: Key, read: RouterRead) -> None:
        with self._lock:
            self._routers[key] = read

    def put_window(self, key: Key, revision: str, index: int, measured: Measurement | NoData) -> None:
        with self._lock:
            windows = self._windows.setdefault(key, {})
            windows[revision, index] = measured
            for old in sorted(windows)[:-KEPT_WINDOWS]:
                del windows[old]

    def queue(self, key: Key) -> QueueRead | None:
        with self._lock:
            return self._queue.get(key)

    def adapters(self, key: Key) -> AdapterRead | None:
        with self._lock:
            return self._adapters.get(key)

    def routers(self, key: Key) -> RouterRead | None:
        with self._lock:
            return self._routers.get(key)

    def windows(self, key: Key, revision: str) -> Mapping[int, Measurement | NoData]:
        with self._lock:
            return {i: m for (r, i), m in self._windows.get(key, {}).items() if r == revision}

    def measured(self, key: Key) -> frozenset[tuple[str, int]]:
        with self._lock:
            return frozenset(self._windows.get(key, {}))

    def forget(self, key: Key) -> None:
        with self._lock:
            for table in (self._queue, self._adapters, self._routers, self._windows):
                table.pop(key, None)
