"""Fixtures shared by every test folder: the real local Kubernetes control plane."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "hack"))

from localcluster import LocalCluster, assets_dir  # noqa: E402


class ExistingCluster:
    """The cluster named by KUBECONFIG, for USE_EXISTING_CLUSTER=true."""

    def __init__(self) -> None:
        self.kubeconfig = Path(os.environ["KUBECONFIG"])
        self.assets = assets_dir()
        nodes = self.kubectl(
            "get",
            "nodes",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.allocatable.nvidia\\.com/gpu}{'\\n'}{end}",
        ).stdout.split("\n")
        pairs = [line.split() for line in nodes if line.strip()]
        self.gpu_nodes = [p[0] for p in pairs if len(p) > 1 and p[1] != "0"]
        self.cpu_nodes = [p[0] for p in pairs if len(p) == 1 or p[1] == "0"]

    kubectl = LocalCluster.kubectl
    api_client = LocalCluster.api_client
    env = LocalCluster.env


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """A real kube-apiserver + etcd + controller-manager + scheduler + KWOK fake GPU nodes, for the session."""
    if os.environ.get("USE_EXISTING_CLUSTER") == "true":
        yield ExistingCluster()
        return
    local = LocalCluster(tmp_path_factory.mktemp("cluster"))
    try:
        local.up()
    except (subprocess.CalledProcessError, TimeoutError) as err:
        logs = local.state_dir / "logs"
        tails = "".join(f"\n--- {log.name}\n" + log.read_text()[-2000:] for log in sorted(logs.glob("*.log")))
        pytest.fail(f"local cluster failed to start: {err}{tails}")
    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(local.kubeconfig)
    yield local
    if previous is None:
        os.environ.pop("KUBECONFIG", None)
    else:
        os.environ["KUBECONFIG"] = previous
    local.down()
