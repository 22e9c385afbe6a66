"""What the demo stands on: the local stack (`make cluster-up`), the chart installed with Helm, the operator as
a process with the chart's identity (its ServiceAccount token, its arguments, its policy), and a checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml
from localcluster import LocalCluster

ROOT = Path(__file__).resolve().parents[2]
RELEASE, RELEASE_NAMESPACE = "moedeploy", "moedeploy-system"


def say(message: str) -> None:
    print(message, flush=True)


def cluster(state_dir: Path) -> tuple[LocalCluster, bool]:
    """The local stack, started if it is not running; and whether this call started it."""
    stack = LocalCluster(state_dir)
    if stack.running():
        say(f"  the local stack in {state_dir} is already running: using it")
        return stack, False
    stack.up()
    return stack, True


def helm_install(stack: LocalCluster, values: dict, workdir: Path) -> None:
    values_file = workdir / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    result = subprocess.run(
        [str(stack.assets / "helm"), "upgrade", "--install", RELEASE, str(ROOT / "helm" / "moedeploy"),
         "-n", RELEASE_NAMESPACE, "--create-namespace", "--wait", "--timeout", "2m", "-f", str(values_file)],
        env=stack.env(), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"helm install failed: {result.stderr.strip()}")


class Operator:
    """`python -m moe_operator` with the arguments of the chart's Deployment, authenticated by a token of the
    chart's ServiceAccount: what it may do is exactly what the chart's RBAC grants."""

    def __init__(self, stack: LocalCluster, workdir: Path) -> None:
        deployment = json.loads(
            stack.kubectl("get", "deployment", RELEASE, "-n", RELEASE_NAMESPACE, "-o", "json").stdout
        )
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        policy = json.loads(
            stack.kubectl(
                "get", "configmap", f"{RELEASE}-policy", "-n", RELEASE_NAMESPACE, "-o", "json"
            ).stdout
        )
        (workdir / "policy.yaml").write_text(policy["data"]["policy.yaml"])
        prometheus = stack.prometheus_url
        args = []
        for arg in container["args"]:
            if arg.startswith("--policy-file="):
                arg = f"--policy-file={workdir / 'policy.yaml'}"
            elif arg.startswith("--prometheus-url="):
                arg = f"--prometheus-url={prometheus}"
            elif arg.startswith(("--liveness=", "--metrics-port=")):
                continue  # the pod's ports: not needed on this machine, and may be taken
            args.append(arg)
        self.args = args
        kubeconfig = _token_kubeconfig(stack, workdir / "operator.kubeconfig")
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "POD_NAME": "moedeploy-demo",
               "POD_NAMESPACE": RELEASE_NAMESPACE, "PYTHONUNBUFFERED": "1"}  # fmt: skip
        self.log_path = workdir / "operator.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moe_operator", *args], cwd=ROOT, env=env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _token_kubeconfig(stack: LocalCluster, path: Path) -> Path:
    token = stack.kubectl("create", "token", RELEASE, "-n", RELEASE_NAMESPACE, "--duration=2h").stdout.strip()
    admin = yaml.safe_load(stack.kubeconfig.read_text())
    cluster_entry = admin["clusters"][0]
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "clusters": [cluster_entry],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": cluster_entry["name"], "user": "operator"}}],
        "current-context": "operator",
    }))  # fmt: skip
    return path


def checkpoint(out: Path, layers: int = 4, hidden: int = 128) -> Path:
    """A small random Qwen3-MoE: big enough to queue under load on two cores, small enough to start fast."""
    subprocess.run(
        [sys.executable, "-m", "moe_runtime", "make-checkpoint", "--family", "qwen3_moe", "--out", str(out),
         "--num-experts", "8", "--top-k", "2", "--num-layers", str(layers), "--hidden-size", str(hidden),
         "--moe-intermediate-size", str(hidden)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return out
