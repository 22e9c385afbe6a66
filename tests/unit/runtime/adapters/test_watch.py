"""The --lora-list watcher against a ConfigMap volume as the kubelet updates it: a new timestamped folder and
an atomic swap of the `..data` symlink, the file's own path (a symlink) unchanged."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from moe_runtime.adapters.sources import AdapterSource
from moe_runtime.adapters.watch import LoraListWatcher
from tests.waiting import wait_for


class ConfigMapVolume:
    """A folder laid out as the kubelet's atomic writer lays out a ConfigMap volume."""

    def __init__(self, root: Path, key: str = "adapters.json") -> None:
        self.root, self.key, self.version = root, key, 0
        root.mkdir()

    def write(self, text: str) -> Path:
        self.version += 1
        folder = self.root / f"..2026_01_01_00_00_00.{self.version}"
        folder.mkdir()
        (folder / self.key).write_text(text)
        os.utime(folder / self.key, (0, 0))  # the same mtime every time: only the content tells
        link = self.root / "..data_tmp"
        link.symlink_to(folder.name)
        link.rename(self.root / "..data")
        if not (self.root / self.key).is_symlink():
            (self.root / self.key).symlink_to(f"..data/{self.key}")
        return self.root / self.key


def adapters(*names: str) -> str:
    return json.dumps([{"name": n, "path": f"/adapters/{n}"} for n in names])


def test_each_new_version_is_handed_over_once_and_a_broken_one_keeps_the_last_good(tmp_path, caplog):
    volume = ConfigMapVolume(tmp_path / "cm")
    seen: list[list[str]] = []
    watcher = LoraListWatcher(
        volume.write(adapters("a")), lambda entries: seen.append([e.name for e in entries])
    )
    watcher.check()
    watcher.check()
    volume.write(adapters("a", "b"))
    watcher.check()
    with caplog.at_level(logging.ERROR, "moe_runtime.adapters.watch"):
        volume.write("[{")
        watcher.check()
        watcher.check()
    [said] = [r.message for r in caplog.records]  # once, not at every poll
    assert "adapters.json: not valid JSON (" in said and said.endswith("; keeping the adapters as they are")
    volume.write(adapters("b"))
    watcher.check()
    assert seen == [["a"], ["a", "b"], ["b"]]


def test_a_missing_file_is_reported_and_its_appearance_counts(tmp_path, caplog):
    seen: list[list[AdapterSource]] = []
    path = tmp_path / "later.json"
    watcher = LoraListWatcher(path, seen.append, poll_s=0.05)
    with caplog.at_level(logging.ERROR, "moe_runtime.adapters.watch"):
        watcher.start()
        assert "cannot read" in caplog.text and seen == []
        path.write_text(adapters("a"))
        try:
            wait_for(lambda: seen, timeout=10, interval=0.05, what="the watcher to read the new file")
        finally:
            watcher.stop()
    assert seen == [[AdapterSource("a", "/adapters/a")]]
