"""A work queue of object keys, as controllers use them: deduplicating, delaying, one worker per key.

- A key added while it waits is not queued twice; a key added while a worker holds it is queued again
  once the worker is done, so the change that caused the add is never lost.
- `add_after` schedules a key for later; an earlier schedule wins over a later one.
- No two workers ever hold the same key, so passes over one object are serialised without locks.
- `failed` schedules a retry with a per-key exponential back-off (capped); `forget` resets it.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Hashable


class WorkQueue:
    def __init__(
        self,
        base_delay: float = 1.0,
        max_delay: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._clock = clock
        self._cond = threading.Condition()
        self._ready: dict[Hashable, None] = {}  # insertion-ordered set: FIFO among ready keys
        self._timers: list[tuple[float, int, Hashable]] = []
        self._due: dict[Hashable, float] = {}  # the earliest schedule of each delayed key
        self._held: set[Hashable] = set()
        self._again: set[Hashable] = set()  # added while held: ready again when released
        self._failures: dict[Hashable, int] = {}
        self._ties = itertools.count()
        self._shut = False

    def add(self, key: Hashable) -> None:
        with self._cond:
            self._make_ready(key)

    def add_after(self, key: Hashable, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            due = self._clock() + delay
            if key in self._ready or self._due.get(key, float("inf")) <= due:
                return
            self._due[key] = due
            heapq.heappush(self._timers, (due, next(self._ties), key))
            self._cond.notify()

    def get(self, timeout: float | None = None) -> Hashable | None:
        """The next ready key, now held by the caller until `done`; None on shutdown or timeout."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                if self._shut:
                    return None
                self._release_due_timers()
                if self._ready:
                    key = next(iter(self._ready))
                    del self._ready[key]
                    self._held.add(key)
                    return key
                wait = self._timers[0][0] - self._clock() if self._timers else None
                if deadline is not None:
                    left = deadline - self._clock()
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)

    def done(self, key: Hashable) -> None:
        with self._cond:
            self._held.discard(key)
            if key in self._again:
                self._again.discard(key)
                self._make_ready(key)

    def failed(self, key: Hashable) -> float:
        """Schedules a retry after the key's next back-off delay; returns the delay."""
        with self._cond:
            count = self._failures.get(key, 0)
            self._failures[key] = count + 1
        delay = min(self._max_delay, self._base_delay * 2**count)
        self.add_after(key, delay)
        return delay

    def forget(self, key: Hashable) -> None:
        """The key's last pass succeeded: its next failure starts the back-off afresh."""
        with self._cond:
            self._failures.pop(key, None)

    def shutdown(self) -> None:
        with self._cond:
            self._shut = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._ready) + len(self._due)

    def _make_ready(self, key: Hashable) -> None:
        self._due.pop(key, None)  # its timer entry turns stale and is skipped
        if key in self._held:
            self._again.add(key)
        elif key not in self._ready:
            self._ready[key] = None
            self._cond.notify()

    def _release_due_timers(self) -> None:
        now = self._clock()
        while self._timers and self._timers[0][0] <= now:
            due, _, key = heapq.heappop(self._timers)
            if self._due.get(key) == due:
                self._make_ready(key)
