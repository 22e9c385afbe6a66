"""Where to dial a pod address: itself, or what an address map file says (a local stack, whose pod IPs are not
routable, maps each `ip:port` to the loopback port its process listens on). The file is JSON,
`{"10.245.0.3:8000": "127.0.0.1:41234", ...}`, replaced whole by its writer and re-read when it changes.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("moe_runtime.router.addresses")


class AddressMap:
    def __init__(self, path: str | None) -> None:
        self._path = Path(path) if path else None
        self._seen: tuple[int, int, int] | None = None
        self._map: dict[str, str] = {}

    def dial(self, address: str) -> str:
        if self._path is None:
            return address
        self._reload(self._path)
        return self._map.get(address, address)

    def _reload(self, path: Path) -> None:
        try:
            info = os.stat(path)
        except OSError:
            return
        version = (info.st_ino, info.st_mtime_ns, info.st_size)
        if version == self._seen:
            return
        try:
            loaded = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            log.warning("address map %s unreadable (%s); keeping the last one", path, err)
            return
        self._seen = version
        self._map = {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}
