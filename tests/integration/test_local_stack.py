"""`make cluster-up` / `make cluster-down` (hack/localcluster.py up/down): the contract files, idempotence,
kwokctl running only our binaries, a pod the local kubelet runs without any operator, and nothing left behind:
no process, no listening port; a failed `up` names the component, shows its log and leaves nothing running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from localcluster import FLAGS, LocalCluster, assets_dir

from tests.integration.local_stack import processes, write_tiny_checkpoint
from tests.paths import ROOT
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def localcluster(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "hack" / "localcluster.py"), *args],
        env=env, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip


def listening_ports() -> set[int]:
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def ports_of(pid: int) -> set[int]:
    """The ports `pid` listens on (sockets it holds that are in the LISTEN table)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def bare_runtime_pod(model_dir: Path) -> dict:
    """A pod the way a kubelet sees any pod: no operator, its own env and volumes."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bare-0", "labels": {"moedeploy.dev/model-deployment": "bare"}},
        "spec": {
            "nodeName": "gpu-node-0",
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "runtime",
                "image": "moe-runtime:test",
                "command": ["python", "-m", "moe_runtime", "serve"],
                "args": ["--model", "/weights/$(MODEL_NAME)"],
                "env": [{"name": "MODEL_NAME", "value": model_dir.name}, {"name": "HOME", "value": "/scratch"}],
                "ports": [{"name": "http", "containerPort": 8000}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1},
                "volumeMounts": [{"name": "w", "mountPath": "/weights"}, {"name": "s", "mountPath": "/scratch"}],
            }],
            "volumes": [{"name": "w", "hostPath": {"path": str(model_dir.parent)}}, {"name": "s", "emptyDir": {}}],
        },
    }  # fmt: skip


def test_cluster_up_is_idempotent_and_cluster_down_leaves_nothing(tmp_path):
    model_dir = write_tiny_checkpoint(tmp_path / "tiny-qwen3-moe")
    state = tmp_path / "stack"
    assets = assets_dir()
    env = {**os.environ, "KUBEBUILDER_ASSETS": str(assets)}
    localcluster("up", "--state-dir", str(state), env=env)
    try:
        pids = json.loads((state / "pids.json").read_text())
        again = localcluster("up", "--state-dir", str(state), env=env)
        assert "already running" in again.stdout and json.loads((state / "pids.json").read_text()) == pids

        contract = dict(line.split("=", 1) for line in (state / "env").read_text().splitlines())
        assert contract["KUBECONFIG"] == str(state / "kubeconfig")
        assert httpx.get(f"{contract['PROMETHEUS_URL']}/-/ready", timeout=5).status_code == 200
        assert json.loads((state / "targets.json").read_text()) == []
        # kwokctl ran our binaries (it links each into its workdir) and downloaded nothing into its cache
        kwokctl = state / "kwokctl"
        linked = {
            link.name: link.resolve() for link in (kwokctl / "clusters" / "moedeploy" / "bin").iterdir()
        }
        assert linked.pop("prometheus") == Path("/usr/bin/prometheus").resolve()
        assert {path.parent for path in linked.values()} == {assets.resolve()}
        assert not (kwokctl / "cache").exists()

        kubectl = [str(assets / "kubectl"), "--kubeconfig", str(state / "kubeconfig")]
        subprocess.run([*kubectl, "apply", "-f", "-"], input=json.dumps(bare_runtime_pod(model_dir)), text=True,
                       check=True, capture_output=True)  # fmt: skip

        def serving():
            entries = json.loads((state / "targets.json").read_text())
            listed = [e for e in entries if e["labels"]["pod"] == "bare-0"]
            return listed and processes(state, "default", "bare")

        [runtime] = wait_for(serving, timeout=120, what="the bare pod's process in targets.json").values()
        assert runtime["env"]["HOME"] == str(state / "pods" / "default_bare-0" / "volumes" / "s")

        # a Service of the pod, reachable from the machine as kube-proxy makes it reachable in a cluster
        bare_service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bare"},
                        "spec": {"selector": {"moedeploy.dev/model-deployment": "bare"},
                                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}  # fmt: skip
        subprocess.run([*kubectl, "apply", "-f", "-"], input=json.dumps(bare_service), text=True, check=True,
                       capture_output=True)  # fmt: skip

        def through_service():
            address = json.loads((state / "services.json").read_text()).get("default/bare")
            try:
                return address and httpx.get(f"http://{address}/ready", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(through_service, timeout=60, what="the bare pod through its Service in services.json")
        stack_pids = [*pids.values(), runtime["pid"]]
        stack_ports = set().union(*(ports_of(pid) for pid in stack_pids))
        assert runtime["port"] in stack_ports and len(stack_ports) >= 8
    finally:
        localcluster("down", "--state-dir", str(state), env=env)

    for pid in stack_pids:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"pid {pid} of the stack still runs"
    assert not stack_ports & listening_ports(), "a port of the stack still listens"
    assert not state.exists()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_failed_up_names_the_component_shows_its_log_and_leaves_nothing_running(tmp_path, monkeypatch):
    monkeypatch.setitem(FLAGS, "kube-apiserver", {"no-such-flag": "1"})
    state = tmp_path / "stack"
    with pytest.raises(TimeoutError) as failed:
        LocalCluster(state, assets=assets_dir()).up()
    assert "kube-apiserver exited" in str(failed.value)
    assert "unknown flag: --no-such-flag" in str(failed.value)  # the tail of its log
    assert "unknown flag: --no-such-flag" in (state / "logs" / "kube-apiserver.log").read_text()
    assert [child.name for child in state.iterdir()] == ["logs"]
    assert not _pids_mentioning(state), "a process of the failed stack still runs"


def _pids_mentioning(path: Path) -> list[int]:
    """Live processes whose command line names `path`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if (
                proc.name.isdigit()
                and str(path).encode() in (proc / "cmdline").read_bytes()
                and not _zombie(int(proc.name))
            ):
                found.append(int(proc.name))
        except OSError:
            continue
    return found
