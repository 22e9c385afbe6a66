"""The kubelet's hands: volumes on disk, processes, probes over loopback."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath

from localkubelet.launch import Launch
from localkubelet.probes import Probe
from localkubelet.volumes import Mounts, Volume, volume_files


class MountError(Exception):
    """A volume cannot be set up now (the kubelet's FailedMount); it may work on a later try."""


_HOST_PATH_TYPES = {
    "Directory": stat.S_ISDIR,
    "File": stat.S_ISREG,
    "Socket": stat.S_ISSOCK,
    "CharDevice": stat.S_ISCHR,
    "BlockDevice": stat.S_ISBLK,
}


def prepare_volumes(
    volumes: Mapping[str, Volume], read: Callable[[Volume], Mapping[str, str] | None], mounts: Mounts
) -> None:
    """Checks hostPath types, creates emptyDirs, writes configMap/secret volumes; `read` fetches their data."""
    for volume in volumes.values():
        path = Path(volume.host_path)
        if volume.kind == "hostPath":
            _check_host_path(volume, path)
        elif volume.kind == "emptyDir":
            path.mkdir(parents=True, exist_ok=True)
        else:
            data = read(volume)
            if data is None and not volume.optional:
                raise MountError(
                    f'MountVolume.SetUp failed for volume "{volume.name}" : {volume.kind.lower()} '
                    f'"{volume.source}" not found'
                )
            write_config_volume(path, volume_files(volume, data, mounts))


def refresh_config_volumes(
    volumes: Mapping[str, Volume], read: Callable[[Volume], Mapping[str, str] | None], mounts: Mounts
) -> list[str]:
    """Brings the configMap/secret volumes of a running pod up to date, as the kubelet's periodic sync does;
    the names of those that changed. An object that vanished leaves its files as they were."""
    changed = []
    for volume in volumes.values():
        if volume.kind not in ("configMap", "secret") or (data := read(volume)) is None:
            continue
        if write_config_volume(Path(volume.host_path), volume_files(volume, data, mounts)):
            changed.append(volume.name)
    return changed


def write_config_volume(path: Path, files: Mapping[str, str]) -> bool:
    """The kubelet's atomic writer: the files go to a new `..<timestamp>` folder, the `..data` symlink is swapped
    to it in one rename, and each top-level name is a symlink through `..data`. A reader sees the old files or
    the new ones, never a mix; the files' own paths never change. False when the files are as they were."""
    data = path / "..data"
    if data.is_dir() and _files_in(data) == dict(files):
        return False
    path.mkdir(parents=True, exist_ok=True)
    old = data.resolve() if data.is_symlink() else None
    folder = path / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.time_ns()}"
    for relative, text in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text)
    folder.mkdir(exist_ok=True)
    staging = path / "..data_tmp"
    staging.unlink(missing_ok=True)
    staging.symlink_to(folder.name)
    staging.replace(data)
    tops = {PurePosixPath(relative).parts[0] for relative in files}
    for top in tops:
        link = path / top
        if link.is_dir() and not link.is_symlink():
            shutil.rmtree(link)  # written by hand before: the symlink takes its place
        elif link.exists() and not link.is_symlink():
            link.unlink()
        if not link.is_symlink():
            link.symlink_to(f"..data/{top}")
    for entry in path.iterdir():
        if not entry.name.startswith("..") and entry.is_symlink() and entry.name not in tops:
            entry.unlink()
    if old is not None and old != folder.resolve():
        shutil.rmtree(old, ignore_errors=True)
    return True


def _files_in(folder: Path) -> dict[str, str]:
    return {str(f.relative_to(folder)): f.read_text() for f in folder.rglob("*") if f.is_file()}


def _check_host_path(volume: Volume, path: Path) -> None:
    kind = volume.host_path_type
    if kind == "DirectoryOrCreate":
        path.mkdir(parents=True, exist_ok=True)
    elif kind == "FileOrCreate":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
    elif kind in _HOST_PATH_TYPES:
        try:
            ok = _HOST_PATH_TYPES[kind](path.stat().st_mode)
        except OSError:
            ok = False
        if not ok:
            article = "an" if kind[0] in "AEIOU" else "a"
            raise MountError(
                f'MountVolume.SetUp failed for volume "{volume.name}" : hostPath type check failed: '
                f"{path} is not {article} {kind.lower()}"
            )


def spawn(launch: Launch, log_path: Path) -> subprocess.Popen:
    """The container's process, its output appended to the pod's log. It stays in the kubelet's process
    group, so that stopping the kubelet's group stops every pod with it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    Path(launch.cwd).mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            launch.argv,
            env=launch.env,
            cwd=launch.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def send(process: subprocess.Popen, sig: signal.Signals) -> None:
    """SIGTERM goes to the container's process, which stops its own children (vLLM's engine core and workers);
    SIGKILL to every process under it too, as a container runtime kills everything in the container."""
    if process.poll() is not None:
        return
    pids = [process.pid, *descendants(process.pid)] if sig == signal.SIGKILL else [process.pid]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def descendants(pid: int) -> list[int]:
    """The processes under `pid` (children, their children, ...), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def run_probe(probe: Probe, host: str = "127.0.0.1") -> tuple[bool, str]:
    """(passed, what failed): HTTP 200-399 or an open TCP port, within the probe's timeout."""
    try:
        if probe.action == "tcp":
            with socket.create_connection((host, probe.port), timeout=probe.timeout):
                return True, ""
        connection = http.client.HTTPConnection(host, probe.port, timeout=probe.timeout)
        try:
            connection.request(
                "GET", probe.path, headers={"User-Agent": "kube-probe/local", **dict(probe.headers)}
            )
            response = connection.getresponse()
            response.read()
        finally:
            connection.close()
    except (OSError, http.client.HTTPException) as err:
        return False, f'Get "http://{host}:{probe.port}{probe.path}": {err}'
    if 200 <= response.status < 400:
        return True, ""
    return False, f"HTTP probe failed with statuscode: {response.status}"
