"""Which LoRA adapters are in memory, which load next and which make room for them. Pure: plain data in, a
plan out; adapters/manager.py loads and unloads.

An adapter is pending (never tried, or its path changed), loading, resident, evicted (it loaded, then made room
for another: it loads again on demand) or failed (retried with back-off). At most `max_resident` adapters are
resident or loading.

Requests for an adapter wait until it is resident; they never fail for lack of room:
- An adapter that is not resident and has waiting requests loads first (the one whose oldest request came
  first). Room comes from the least recently used resident adapter that has no request at all, else from one
  that ran requests since it loaded and has none running now (more of its own may wait: they wait for it to
  come back). When every resident adapter has requests running, one of them (the least recently used, then
  the longest resident) drains: it takes no new requests and is evicted once its running ones finish. An
  adapter that has not run anything since it loaded is never evicted for another, so every residency serves
  at least one batch: swapping cannot go on without progress, and a steady stream of requests for the
  resident adapters cannot keep another one out.
- Then adapters never tried load (a bad one is reported early, and /ready waits for the first try of each),
  then failed ones whose back-off has passed; those take only free room or the room of an adapter without
  requests.
An adapter removed from the configuration still serves the requests already accepted for it and is unloaded
once it has none; one whose path changed takes no new requests until its running ones finish, then reloads.
A failed load is retried after BACKOFF_INITIAL_S, doubling up to BACKOFF_CAP_S; the requests waiting for it
fail (`unservable`), as do waiting requests for an adapter that is not configured at all.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

BACKOFF_INITIAL_S = 1.0
BACKOFF_CAP_S = 60.0


class Status(StrEnum):
    PENDING = "pending"
    LOADING = "loading"
    RESIDENT = "resident"
    EVICTED = "evicted"
    FAILED = "failed"


@dataclass
class Entry:
    name: str
    path: str
    order: int  # configuration order: eager loads go in this order
    status: Status = Status.PENDING
    tried: bool = False  # a load of the current path finished, well or not
    error: str | None = None  # the last failed load's message
    reason: str | None = None  # ... and its reason word (adapters/reasons.py)
    failures: int = 0  # failed loads in a row
    retry_at: float = 0.0
    last_used: float = -math.inf
    loaded_at: float = -math.inf
    removed: bool = False  # gone from the configuration: unloaded once it has no requests
    reload: bool = False  # its path changed while it was resident or loading
    has_loaded: bool = False  # its current path loaded at least once
    served: bool = False  # ran requests since it last loaded

    @property
    def servable(self) -> bool:
        """New requests may ask for it: configured, and its last load (if any) did not fail."""
        return not self.removed and self.error is None

    @property
    def loaded(self) -> bool:
        """It loaded and serves: in memory, or evicted for room and loaded again on demand."""
        return self.has_loaded and self.error is None


@dataclass(frozen=True)
class Demand:
    """One adapter's requests in the scheduler."""

    waiting: int = 0
    running: int = 0
    oldest_waiting: float = math.inf  # arrival of its oldest waiting request


NO_DEMAND = Demand()


@dataclass(frozen=True)
class Plan:
    unload: tuple[str, ...] = ()  # drop from the engine now: evicted, removed or reloading, none running
    load: tuple[tuple[str, str], ...] = ()  # (name, path) to start loading
    admissible: frozenset[str] = frozenset()  # adapters whose waiting requests may start
    unservable: frozenset[str] = frozenset()  # adapters whose waiting requests must fail


class Residency:
    def __init__(
        self,
        max_resident: int,
        backoff_initial_s: float = BACKOFF_INITIAL_S,
        backoff_cap_s: float = BACKOFF_CAP_S,
    ) -> None:
        if max_resident < 1:
            raise ValueError(f"max_resident must be at least 1, not {max_resident}")
        self.max_resident = max_resident
        self.backoff_initial_s, self.backoff_cap_s = backoff_initial_s, backoff_cap_s
        self.entries: dict[str, Entry] = {}
        self._draining: str | None = None
        self._order = itertools.count()

    # ---- what happened ---------------------------------------------------------------------------------

    def configure(self, wanted: Mapping[str, str]) -> None:
        """The adapters to serve now (name -> path)."""
        for name, entry in self.entries.items():
            entry.removed = name not in wanted
        for name, path in wanted.items():
            entry = self.entries.get(name)
            if entry is None:
                self.entries[name] = Entry(name, path, next(self._order))
            elif entry.path != path:
                entry.path = path
                entry.tried = entry.has_loaded = False
                if entry.status in (Status.RESIDENT, Status.LOADING):
                    entry.reload = True
                else:
                    self._forget_load(entry)

    def loaded(self, name: str, now: float) -> None:
        entry = self.entries[name]
        entry.status, entry.tried, entry.has_loaded = Status.RESIDENT, not entry.reload, not entry.reload
        entry.failures, entry.error, entry.reason = 0, None, None
        entry.last_used = entry.loaded_at = now
        entry.served = False

    def failed(self, name: str, error: str, reason: str, now: float) -> None:
        entry = self.entries[name]
        if entry.reload:  # it failed on the old path: the new one is still to try
            entry.reload = False
            self._forget_load(entry)
            return
        entry.status, entry.tried = Status.FAILED, True
        entry.error, entry.reason = error, reason
        entry.failures += 1
        entry.retry_at = now + min(self.backoff_cap_s, self.backoff_initial_s * 2 ** (entry.failures - 1))

    def used(self, names: Iterable[str], now: float) -> None:
        for name in names:
            if (entry := self.entries.get(name)) is not None:
                entry.last_used, entry.served = now, True

    # ---- what to do ------------------------------------------------------------------------------------

    @property
    def all_tried(self) -> bool:
        return all(entry.tried for entry in self.entries.values() if not entry.removed)

    def plan(self, demand: Mapping[str, Demand], now: float) -> Plan:
        unload: list[str] = []
        for entry in list(self.entries.values()):
            use = demand.get(entry.name, NO_DEMAND)
            if entry.status is Status.LOADING:
                continue
            if entry.removed and not use.waiting and not use.running:
                if entry.status is Status.RESIDENT:
                    unload.append(entry.name)
                del self.entries[entry.name]
            elif entry.reload and entry.status is Status.RESIDENT and not use.running:
                unload.append(entry.name)
                entry.reload = False
                self._forget_load(entry)
        unservable = frozenset(
            name
            for name, use in demand.items()
            if use.waiting and (name not in self.entries or self.entries[name].status is Status.FAILED)
        )
        parked = sorted(
            (
                e
                for e in self.entries.values()
                if e.status in (Status.PENDING, Status.EVICTED) and demand.get(e.name, NO_DEMAND).waiting
            ),
            key=lambda e: (demand[e.name].oldest_waiting, e.order),
        )
        draining = self.entries.get(self._draining or "")
        if draining is None or draining.status is not Status.RESIDENT or not parked:
            self._draining = draining = None
        elif not demand.get(draining.name, NO_DEMAND).running:  # drained: make room now
            unload.append(draining.name)
            draining.status = Status.EVICTED
            self._draining = draining = None

        load: list[Entry] = []
        free = self.max_resident - sum(
            e.status in (Status.RESIDENT, Status.LOADING) for e in self.entries.values()
        )
        for entry in parked:
            if free == 0 and (victim := self._idle(demand) or self._waiting_only(demand)) is not None:
                unload.append(victim.name)
                victim.status = Status.EVICTED
                free += 1
            if free == 0:
                if self._draining is None:
                    self._draining = self._busiest_lru(demand)
                break  # later ones wait behind the oldest: no overtaking
            load.append(entry)
            free -= 1
        eager = sorted(
            (
                e
                for e in self.entries.values()
                if e.status is Status.PENDING and not e.removed and e not in load
            ),
            key=lambda e: e.order,
        ) + sorted(
            (
                e
                for e in self.entries.values()
                if e.status is Status.FAILED and not e.removed and e.retry_at <= now
            ),
            key=lambda e: e.retry_at,
        )
        for entry in eager:
            if free == 0 and (victim := self._idle(demand)) is not None:
                unload.append(victim.name)
                victim.status = Status.EVICTED
                free += 1
            if free == 0:
                break
            load.append(entry)
            free -= 1
        for entry in load:
            entry.status = Status.LOADING
        admissible = frozenset(
            e.name
            for e in self.entries.values()
            if e.status is Status.RESIDENT and not e.reload and e.name != self._draining
        )
        return Plan(tuple(unload), tuple((e.name, e.path) for e in load), admissible, unservable)

    def _idle(self, demand: Mapping[str, Demand]) -> Entry | None:
        """The least recently used resident adapter without any request."""
        idle = [
            e
            for e in self.entries.values()
            if e.status is Status.RESIDENT
            and not demand.get(e.name, NO_DEMAND).waiting
            and not demand.get(e.name, NO_DEMAND).running
        ]
        return min(idle, key=lambda e: (e.last_used, e.loaded_at, e.order), default=None)

    def _waiting_only(self, demand: Mapping[str, Demand]) -> Entry | None:
        """The least recently used resident adapter that ran requests since it loaded and has none running
        now (more of its own may wait: they wait for it to come back)."""
        served = [
            e
            for e in self.entries.values()
            if e.status is Status.RESIDENT and e.served and not demand.get(e.name, NO_DEMAND).running
        ]
        return min(served, key=lambda e: (e.last_used, e.loaded_at, e.order), default=None)

    def _busiest_lru(self, demand: Mapping[str, Demand]) -> str | None:
        busy = [
            e
            for e in self.entries.values()
            if e.status is Status.RESIDENT and demand.get(e.name, NO_DEMAND).running
        ]
        victim = min(busy, key=lambda e: (e.last_used, e.loaded_at, e.order), default=None)
        return None if victim is None else victim.name

    @staticmethod
    def _forget_load(entry: Entry) -> None:
        entry.status, entry.has_loaded = Status.PENDING, False
        entry.failures, entry.retry_at, entry.error, entry.reason = 0, 0.0, None, None
