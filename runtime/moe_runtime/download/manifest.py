"""The record of which object version (key, size, ETag) each file of a local snapshot holds."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from moe_runtime.download.plan import RemoteObject

log = logging.getLogger("moe_runtime.download.s3")

VERSION = 1


class Manifest:
    """Written after every file that lands (atomically: temporary file, fsync, rename), so that a killed
    download leaves a true record; `complete` says the snapshot was whole when it was last written."""

    def __init__(self, path: Path, source: str) -> None:
        self.path, self.source = path, source
        self.objects: dict[str, RemoteObject] = {}
        self.complete = False
        self._lock = threading.Lock()

    def load(self) -> None:
        self.objects, self.complete = {}, False
        try:
            raw = json.loads(self.path.read_text())
            if raw.get("version") == VERSION and raw.get("source") == self.source:
                self.objects = {path: RemoteObject(**entry) for path, entry in raw["objects"].items()}
                self.complete = bool(raw.get("complete"))
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            self.objects = {}
            log.warning("%s: unreadable (%r); checking every file again", self.path, err)

    def record(self, path: str, obj: RemoteObject | None) -> None:
        """The file at `path` now holds `obj` (None: the file is gone). Safe from several threads."""
        with self._lock:
            if obj is None:
                self.objects.pop(path, None)
            else:
                self.objects[path] = obj
            self._save(complete=False)

    def save(self, complete: bool) -> None:
        with self._lock:
            self._save(complete)

    def _save(self, complete: bool) -> None:
        self.complete = complete
        body = {
            "version": VERSION,
            "source": self.source,
            "complete": complete,
            "objects": {path: obj.as_json() for path, obj in sorted(self.objects.items())},
        }
        temporary = self.path.with_suffix(f".{threading.get_ident()}.tmp")
        with open(temporary, "w") as file:
            json.dump(body, file, indent=1)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)
