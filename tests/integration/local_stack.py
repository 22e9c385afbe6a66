"""What the local-stack tests observe from outside the kubelet: processes in /proc, targets.json, the API,
Prometheus; and the ModelDeployments they apply."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from localcluster import LOCAL_KUBELET_LABEL
from localkubelet import POD_MARKER
from prometheus_api_client import PrometheusConnect

from tests.waiting import wait_for

START_TIMEOUT_S = 120  # loading torch and the weights on two busy cores, plus the probes' periods


def write_tiny_checkpoint(out: Path, num_layers: int = 2, seed: int = 0) -> Path:
    subprocess.run(
        [sys.executable, "-m", "moe_runtime", "make-checkpoint", "--family", "qwen3_moe", "--out", str(out),
         "--num-layers", str(num_layers), "--hidden-size", "32", "--num-experts", "4", "--vocab-size", "320",
         "--seed", str(seed)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return out


def local_md(name: str, source: dict, replicas: int = 1) -> dict:
    """A ModelDeployment whose pods go to the local kubelet's nodes (tolerating their taint, if any)."""
    return {
        "apiVersion": "moedeploy.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "model": {"family": "qwen3_moe", "source": source},
            "runtime": {
                "image": "moe-runtime:test",
                "resources": {"gpu": 1, "cpu": "1"},
                "nodeSelector": {LOCAL_KUBELET_LABEL: "true"},
                "tolerations": [{"key": LOCAL_KUBELET_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
            },
        },
    }


def processes(state_dir: Path, namespace: str, md: str) -> dict[str, dict]:
    """pod name -> {pid, port, env} of the live processes the local kubelet of `state_dir` runs for `md`'s
    pods, read from /proc: the kubelet's marker in the environment, the pod's folder as working directory."""
    marker = f"{POD_MARKER}={state_dir.resolve()}".encode()
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            if marker not in environ or (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            key = Path(os.readlink(proc / "cwd").removesuffix(" (deleted)")).name
        except OSError:
            continue
        env = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
        pod_namespace, _, pod = key.partition("_")
        if pod_namespace == namespace and pod.startswith(f"{md}-"):
            found[pod] = {"pid": int(proc.name), "port": int(env["MOE_RUNTIME_PORT"]), "env": env}
    return found


def targets(targets_file: Path, namespace: str, md: str) -> dict[str, dict]:
    """pod name -> its entry in targets.json."""
    entries = json.loads(targets_file.read_text())
    return {
        e["labels"]["pod"]: e
        for e in entries
        if e["labels"]["namespace"] == namespace and e["labels"]["model_deployment"] == md
    }


def up_series(prom: PrometheusConnect, namespace: str, md: str) -> list[dict]:
    return prom.custom_query(f'up{{namespace="{namespace}",model_deployment="{md}"}}')


def pod_ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or ())


def container_status(pod: dict) -> dict:
    return (pod["status"].get("containerStatuses") or [{}])[0]


def ready_status(port: int) -> int | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code
    except httpx.TransportError:
        return None


def settled(cluster, models, md: str, replicas: int) -> dict[str, dict] | None:
    """The processes when exactly `replicas` pods exist, all Ready, each with one process and one target."""
    pods = models.pods(md)
    live = processes(cluster.state_dir, models.namespace, md)
    listed = targets(cluster.targets_file, models.namespace, md)
    names = {p["metadata"]["name"] for p in pods}
    ok = (
        len(pods) == replicas
        and all(pod_ready(p) and not p["metadata"].get("deletionTimestamp") for p in pods)
        and set(live) == names == set(listed)
        and all(listed[n]["targets"] == [f"127.0.0.1:{live[n]['port']}"] for n in names)
    )
    return live if ok else None


def scale(cluster, models, md: str, replicas: int) -> dict[str, dict]:
    models.kubectl("scale", f"md/{md}", f"--replicas={replicas}")
    return wait_for(
        lambda: settled(cluster, models, md, replicas), timeout=START_TIMEOUT_S,
        what=f"{replicas} Ready pods of {md}, each one process and one target",
    )  # fmt: skip
