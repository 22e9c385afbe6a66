"""ConfigMap volumes of the local kubelet: laid out and updated as the kubelet's atomic writer does, with the
container paths in JSON values mapped to host paths (hack/localkubelet/volumes.py, process.py)."""

from __future__ import annotations

import json

from localkubelet.process import refresh_config_volumes, write_config_volume
from localkubelet.volumes import Mounts, Volume, volume_files

MOUNTS = Mounts((("/adapters/adapter-host-1", "/data/loras/legal"), ("/models", "/data/ckpt")))


def test_json_values_have_their_container_paths_mapped_and_other_text_stays():
    volume = Volume("adapters", "configMap", "/pod/volumes/adapters", source="md-adapters")
    listed = [
        {"name": "legal", "path": "/adapters/adapter-host-1"},
        {"name": "sql", "path": "/models/loras/sql"},
        {"name": "image", "path": "/opt/in-the-image"},
    ]
    data = {"adapters.json": json.dumps(listed), "notes.txt": "/models stays as written"}
    files = volume_files(volume, data, MOUNTS)
    assert [a["path"] for a in json.loads(files["adapters.json"])] == [
        "/data/loras/legal",
        "/data/ckpt/loras/sql",
        "/opt/in-the-image",
    ]
    assert files["notes.txt"] == "/models stays as written"
    only = Volume(
        "adapters", "configMap", "/p", source="md-adapters", items=(("adapters.json", "list/a.json"),)
    )
    assert list(volume_files(only, data, MOUNTS)) == ["list/a.json"]


def test_an_update_swaps_the_data_link_and_keeps_the_files_path(tmp_path):
    root = tmp_path / "adapters"
    assert write_config_volume(root, {"adapters.json": "[]", "extra": "x"})
    first = (root / "..data").resolve()
    assert (root / "adapters.json").is_symlink() and (root / "adapters.json").read_text() == "[]"
    assert not write_config_volume(root, {"adapters.json": "[]", "extra": "x"}), "unchanged: nothing written"
    assert write_config_volume(root, {"adapters.json": "[1]"})
    assert (root / "adapters.json").read_text() == "[1]" and not (root / "extra").exists()
    assert (root / "..data").resolve() != first and not first.exists(), "the old folder goes"
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith("..")) == ["adapters.json"]


def test_a_running_pods_volumes_follow_their_objects(tmp_path):
    volume = Volume("adapters", "configMap", str(tmp_path / "adapters"), source="md-adapters")
    objects = {"md-adapters": {"adapters.json": "[]"}}
    read = lambda v: objects.get(v.source)  # noqa: E731
    assert refresh_config_volumes({"adapters": volume}, read, MOUNTS) == ["adapters"]
    assert refresh_config_volumes({"adapters": volume}, read, MOUNTS) == []
    objects["md-adapters"] = {
        "adapters.json": json.dumps([{"name": "legal", "path": "/adapters/adapter-host-1"}])
    }
    assert refresh_config_volumes({"adapters": volume}, read, MOUNTS) == ["adapters"]
    assert json.loads((tmp_path / "adapters" / "adapters.json").read_text())[0]["path"] == "/data/loras/legal"
    del objects["md-adapters"]
    assert refresh_config_volumes({"adapters": volume}, read, MOUNTS) == [], (
        "a vanished object changes nothing"
    )
