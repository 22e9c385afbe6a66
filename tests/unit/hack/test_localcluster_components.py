"""The local control plane (hack/localcluster.py) without starting it: kwokctl's configuration names only our
binaries, a component just started is not taken for dead, one that exits is named with its log, and `down`
stops exactly the processes recorded, never one that merely took a recorded PID."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from localcluster import (
    BINARIES,
    FLAGS,
    KWOK_STAGES,
    OVERRIDE,
    LocalCluster,
    _alive,
    kwokctl_config,
    start_component,
)

from tests.waiting import wait_for


@pytest.fixture
def assets(tmp_path):
    folder = tmp_path / "assets"
    for stage in KWOK_STAGES:
        (folder / "kwok-stages" / stage).parent.mkdir(parents=True, exist_ok=True)
        (folder / "kwok-stages" / stage).write_text(f"kind: Stage\nmetadata:\n  name: {stage}\n")
    return folder


def test_kwokctl_is_given_our_binaries_by_path_and_kwoks_stages(assets, tmp_path):
    prometheus_yml = tmp_path / "prometheus.yml"
    configuration, *stages = kwokctl_config(assets, 9090, prometheus_yml).split("\n---\n")
    options = json.loads(configuration)["options"]
    # a binary option left out would make kwokctl download it from dl.k8s.io or GitHub
    assert {options[option] for option in BINARIES} == {str(assets / b) for b in BINARIES.values()}
    assert options["prometheusBinary"].startswith("/") and options["prometheusPort"] == 9090
    assert options["bindAddress"] == "127.0.0.1" and options["runtime"] == "binary"
    assert [stage.split("name: ")[1].strip() for stage in stages] == KWOK_STAGES
    patches = {p["name"]: p["extraArgs"] for p in json.loads(configuration)["componentsPatches"]}
    assert {"key": "config.file", "value": str(prometheus_yml), "override": True} in patches["prometheus"]
    assert {"key": "authorization-mode", "value": "RBAC", "override": True} in patches["kube-apiserver"]
    assert set(patches) == {*FLAGS, "prometheus"}
    overridden = {a["key"] for args in patches.values() for a in args if a["override"]}
    assert overridden == OVERRIDE


def test_a_component_just_started_is_not_taken_for_dead(tmp_path):
    # Right after the start, /proc/<pid>/cmdline can still be empty; CI once read the apiserver as exited
    # there and tore the stack down under it.
    for attempt in range(200):
        sleeper = start_component(tmp_path / f"sleeper-{attempt}.log", ["sleep", "30"])
        try:
            assert _alive(sleeper.pid, "sleep"), f"attempt {attempt}: taken for dead, down would not stop it"
        finally:
            sleeper.send_signal(signal.SIGKILL)
            sleeper.wait(timeout=10)
        assert not _alive(sleeper.pid, "sleep")


def test_a_component_that_exits_is_named_with_its_log(tmp_path, assets):
    cluster = LocalCluster(tmp_path / "state", assets=assets)
    cluster.logs_dir.mkdir(parents=True)
    pids = cluster.state_dir / "kwokctl" / "clusters" / "moedeploy" / "pids"
    pids.mkdir(parents=True)
    failing = start_component(cluster.logs_dir / "sh.log", ["sh", "-c", "echo no such flag >&2; exit 3"])
    (pids / "sh.pid").write_text(str(failing.pid))
    failing.wait(timeout=10)
    with pytest.raises(TimeoutError, match="sh exited while waiting for the nodes") as error:
        cluster._wait("the nodes", lambda: False, deadline=float("inf"))
    assert "--- sh.log\nno such flag\n" in str(error.value)


def test_down_stops_the_recorded_processes_and_no_process_that_took_a_stale_pid(tmp_path, assets):
    cluster = LocalCluster(tmp_path / "state", assets=assets)
    cluster.logs_dir.mkdir(parents=True)
    pids = cluster.state_dir / "kwokctl" / "clusters" / "moedeploy" / "pids"
    pids.mkdir(parents=True)
    component = start_component(cluster.logs_dir / "sleep.log", ["sleep", "60"])
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    # a process still in exec has no command line yet, and counts as the component its PID file names
    wait_for(lambda: Path(f"/proc/{bystander.pid}/cmdline").read_bytes(), timeout=10, what="sleep to exec")
    (pids / "sleep.pid").write_text(str(component.pid))
    (pids / "etcd.pid").write_text(str(bystander.pid))  # an etcd that died, its PID now another's
    try:
        cluster.down()
        assert component.wait(timeout=10) == -signal.SIGTERM
        assert bystander.poll() is None and not cluster.state_dir.exists()
    finally:
        bystander.kill()
        bystander.wait()
