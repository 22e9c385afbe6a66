"""Progress lines for a download: bytes so far, share of the total and rate, at most one per interval."""

from __future__ import annotations

import threading

PROGRESS_INTERVAL_S = 10.0


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class Progress:
    """Counts the bytes several download threads receive; `add` returns a line when one is due."""

    def __init__(self, total: int, started: float, interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self.total, self.done, self._started, self._interval = total, 0, started, interval_s
        self._last_line = started
        self._lock = threading.Lock()

    def add(self, n: int, now: float) -> str | None:
        with self._lock:
            self.done += n
            if now - self._last_line < self._interval:
                return None
            self._last_line = now
            return self.line(now)

    def line(self, now: float) -> str:
        elapsed = max(now - self._started, 1e-9)
        share = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{human_bytes(self.done)} of {human_bytes(self.total)} ({share:.0f}%), "
            f"{human_bytes(self.done / elapsed)}/s"
        )
