"""Watches the `--lora-list` file and hands each new version of it over.

In a pod the file is a mounted ConfigMap, which the kubelet refreshes by writing a new folder and swapping a
`..data` symlink: the file's own inode, mtime and path may all stay what they were. So the watcher reads the
whole file (following the links) every POLL_S and compares a hash of its bytes. A file that cannot be read or
parsed is reported once and the adapters stay as they were; a good version after it counts again.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from moe_runtime.adapters.sources import AdapterSource, SourceError, parse_lora_list

log = logging.getLogger(__name__)

POLL_S = 1.0


class LoraListWatcher:
    def __init__(
        self, path: str | Path, on_change: Callable[[list[AdapterSource]], None], poll_s: float = POLL_S
    ) -> None:
        self.path = Path(path)
        self._on_change = on_change
        self._poll_s = poll_s
        self._digest: bytes | None = None
        self._problem: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lora-list", daemon=True)

    def start(self) -> None:
        """Reads the file once now (so that the first version is known before serving starts), then polls."""
        self.check()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> None:
        try:
            data = self.path.read_bytes()
        except OSError as err:
            return self._report(f"cannot read {self.path}: {err.strerror or err}")
        digest = hashlib.sha256(data).digest()
        if digest == self._digest:
            return
        try:
            entries, problems = parse_lora_list(data.decode("utf-8", errors="replace"))
        except SourceError as err:
            return self._report(f"{self.path}: {err}; keeping the adapters as they are")
        self._digest, self._problem = digest, None
        for problem in problems:
            log.error("--lora-list %s: %s", self.path, problem)
        self._on_change(entries)

    def _run(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                self.check()
            except Exception:  # the watcher must outlive anything a file can do to it
                log.exception("--lora-list %s: unexpected error", self.path)

    def _report(self, problem: str) -> None:
        if problem != self._problem:
            log.error("--lora-list %s", problem)
            self._problem = problem
