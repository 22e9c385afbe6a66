"""One round of the sidecar: read the list, ask the engine what it holds, unload and load, report."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from moe_runtime.adapter_sync.engine_api import EngineApi, EngineUnavailable, Refused
from moe_runtime.adapter_sync.plan import Failure, Snapshot, engine_reason, failed, plan, snapshot
from moe_runtime.adapters.sources import AdapterSource
from moe_runtime.adapters.watch import LoraListWatcher

log = logging.getLogger(__name__)


class Syncer:
    def __init__(self, api: EngineApi, lora_list: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.api = api
        self._clock = clock
        self._watcher = LoraListWatcher(lora_list, self._listed)
        self._list: list[AdapterSource] | None = None
        self._failures: dict[str, Failure] = {}
        self._unavailable: str | None = None
        self._lock = threading.Lock()
        self._snapshot = Snapshot()
        self.failure_counts: dict[tuple[str, str], int] = {}  # (adapter, reason) -> failed loads
        self.last_round = clock()

    @property
    def snapshot(self) -> Snapshot:
        with self._lock:
            return self._snapshot

    def round(self) -> None:
        self._watcher.check()
        listed = self._list
        try:
            loaded = self.api.loaded()
            if listed is not None:
                actions = plan(listed, loaded, self._failures, self._clock())
                for name in actions.unloads:
                    self._unload(name)
                for load in actions.loads:
                    self._load(load.name, load.path, load.replace)
                if actions.unloads or actions.loads:
                    loaded = self.api.loaded()
        except EngineUnavailable as err:
            if str(err) != self._unavailable:
                log.info("engine not answering (%s): adapters wait for it", err)
                self._unavailable = str(err)
            loaded = None
        else:
            if self._unavailable is not None:
                log.info("engine answers again")
            self._unavailable = None
        names = {a.name for a in listed or ()}
        self._failures = {name: f for name, f in self._failures.items() if name in names}
        with self._lock:
            self._snapshot = snapshot(listed, loaded, self._failures)
        self.last_round = self._clock()

    def _listed(self, entries: list[AdapterSource]) -> None:
        log.info("adapter list: %s", ", ".join(f"{a.name}={a.path}" for a in entries) or "empty")
        self._list = entries

    def _unload(self, name: str) -> None:
        try:
            self.api.unload(name)
            log.info("unloaded adapter %s", name)
        except Refused as err:
            log.warning("unloading adapter %s refused (%d): %s", name, err.status, err.message)

    def _load(self, name: str, path: str, replace: bool) -> None:
        try:
            self.api.load(name, path, replace)
        except Refused as err:
            if "already been loaded" in err.message:
                return  # loaded meanwhile (the next list of the engine's adapters says from where)
            reason = engine_reason(err.status, err.message)
            self._failures[name] = failed(self._failures.get(name), path, reason, err.message, self._clock())
            self.failure_counts[name, reason] = self.failure_counts.get((name, reason), 0) + 1
            log.error(
                "adapter %s from %s failed to load (%s, %d): %s", name, path, reason, err.status, err.message
            )
            return
        self._failures.pop(name, None)
        log.info("loaded adapter %s from %s%s", name, path, " in place" if replace else "")
