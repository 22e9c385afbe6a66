"""Fixtures shared by every test folder: the real local stack (control plane, local kubelet, Prometheus)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import ROOT

sys.path.insert(0, str(ROOT / "hack"))

from localcluster import LOCAL_KUBELET_LABEL, LocalCluster, assets_dir, read_env_file  # noqa: E402

# The session's node served by the local kubelet, where ModelDeployment pods run as real processes. It is
# tainted, so only tests that ask (tests/integration/test_local_*.py) put pods there: the GPU nodes
# gpu-node-0/1 stay KWOK's, for the operator tests' many pods whose model paths exist nowhere.
LOCAL_NODE = "gpu-local-0"


class ExistingCluster:
    """The cluster named by KUBECONFIG, for USE_EXISTING_CLUSTER=true. When it is a `make cluster-up`
    cluster, its state folder (next to the kubeconfig) gives the targets file, pod logs and Prometheus."""

    def __init__(self) -> None:
        self.kubeconfig = Path(os.environ["KUBECONFIG"])
        self.state_dir = self.kubeconfig.parent
        self.targets_file = self.state_dir / "targets.json"
        self.services_file = self.state_dir / "services.json"
        self.pods_dir = self.state_dir / "pods"
        self.env_file = self.state_dir / "env"
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
        served = self.kubectl(
            "get", "nodes", "-l", f"{LOCAL_KUBELET_LABEL}=true", "-o", "name"
        ).stdout.split()
        self.served_nodes = [name.removeprefix("node/") for name in served]

    @property
    def prometheus_url(self) -> str:
        return read_env_file(self.env_file)["PROMETHEUS_URL"]

    kubectl = LocalCluster.kubectl
    api_client = LocalCluster.api_client
    env = LocalCluster.env


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """A real kube-apiserver + etcd + controller-manager + scheduler, KWOK fake GPU nodes, the local kubelet's
    node and Prometheus scraping its pods, for the session."""
    if os.environ.get("USE_EXISTING_CLUSTER") == "true":
        yield ExistingCluster()
        return
    local = LocalCluster(
        tmp_path_factory.mktemp("cluster"),
        gpu_nodes=["gpu-node-0", "gpu-node-1", LOCAL_NODE],
        served_nodes=[LOCAL_NODE],
        taint_served=True,
    )
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
