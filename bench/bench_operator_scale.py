"""200 ModelDeployments applied at once: time until all are Ready, reconciles per second, operator memory.

    python bench/bench_operator_scale.py [--quick] [--count N] [--kubeconfig PATH]

Without --kubeconfig it starts a fresh local control plane (hack/localcluster.py; KUBEBUILDER_ASSETS names
the binaries, or hack/testbin.sh builds them) and stops it afterwards. The operator runs as a subprocess
(`python -m moe_operator run --namespace <ns>`). Prints one JSON object on stdout; progress goes to stderr.
The pods ask for no GPU so that 200 of them fit on the fake nodes: the operator's work is the same.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kubernetes import client, config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack"))

import machine  # noqa: E402
from localcluster import LocalCluster  # noqa: E402
from operator_harness import OperatorUnderTest, reconcile_passes  # noqa: E402

GROUP, VERSION, PLURAL = "moedeploy.dev", "v1alpha1", "modeldeployments"
GOAL_SECONDS = 60
CREATORS = 8  # parallel clients creating the fleet


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def model_deployment(name: str) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"family": "qwen3_moe", "source": {"image": {"path": "/opt/model"}}},
            "runtime": {"image": "moe-runtime:bench", "resources": {"gpu": 0}},
        },
    }


def create(custom: client.CustomObjectsApi, namespace: str, body: dict) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def is_ready(md: dict) -> bool:
    status = md.get("status", {})
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", ()))
    return ready and status.get("observedGeneration") == md["metadata"]["generation"]


def count_ready(custom: client.CustomObjectsApi, namespace: str) -> int:
    items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    return sum(is_ready(md) for md in items)


def wait_until(predicate, timeout: float, interval: float = 1.0) -> float | None:
    """Seconds until `predicate()` held, or None on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval)
    return None


def run(kubeconfig: Path, kubectl: list[str], count: int, timeout: float, workdir: Path) -> dict:
    custom = client.CustomObjectsApi(config.new_client_from_config(config_file=str(kubeconfig)))
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    subprocess.run([*kubectl, "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds")],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run([*kubectl, "wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}"],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run([*kubectl, "create", "namespace", namespace], check=True, capture_output=True)
    operator = OperatorUnderTest(kubeconfig, workdir, ["--namespace", namespace])
    try:
        # one ModelDeployment first, so that the clock below measures the fleet and not the start-up
        create(custom, namespace, model_deployment("warm-up"))
        if wait_until(lambda: count_ready(custom, namespace) == 1, timeout=60) is None:
            raise RuntimeError(
                f"the operator did not make a first ModelDeployment Ready; see {operator.log_path}"
            )
        before = reconcile_passes(operator.metrics())

        log(f"creating {count} ModelDeployments at once in namespace {namespace}")
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=CREATORS) as pool:
            list(pool.map(lambda i: create(custom, namespace, model_deployment(f"md-{i:03d}")), range(count)))
        applied = time.monotonic() - started
        waited = wait_until(lambda: count_ready(custom, namespace) == count + 1, timeout=timeout)
        elapsed = time.monotonic() - started
        ready = count_ready(custom, namespace) - 1
        figures = {
            "operator_peak_rss_mib": operator.peak_rss_mib(),
            "operator_cpu_seconds": round(operator.cpu_seconds(), 1),
        }
        passes = reconcile_passes(operator.metrics()) - before
    finally:
        operator.stop()
        subprocess.run([*kubectl, "delete", "namespace", namespace, "--wait=false"], capture_output=True)
    return {
        "model_deployments": count,
        "ready": ready,
        "create_seconds": round(applied, 2),
        "all_ready_seconds": None if waited is None else round(elapsed, 2),
        "goal_seconds": GOAL_SECONDS,
        "goal_met": waited is not None and elapsed <= GOAL_SECONDS,
        "reconcile_passes": passes,
        "reconcile_passes_per_second": round(passes / elapsed, 1),
        **figures,
        **operator.log_problems(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 ModelDeployments instead of 200")
    parser.add_argument("--count", type=int, help="how many ModelDeployments (overrides --quick)")
    parser.add_argument("--timeout", type=float, default=300, help="give up waiting after this many seconds")
    parser.add_argument("--kubeconfig", type=Path, help="use this cluster instead of starting a fresh one")
    parser.add_argument("--operator-log", type=Path, help="keep the operator's log in this file")
    args = parser.parse_args()
    count = args.count or (20 if args.quick else 200)
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as tmp:
        workdir = Path(tmp)
        if args.kubeconfig:
            kubectl = ["kubectl", "--kubeconfig", str(args.kubeconfig)]
            result = run(args.kubeconfig, kubectl, count, args.timeout, workdir)
            result["cluster"] = "existing"
        else:
            # every node KWOK's: 200 ModelDeployments' pods stay API objects instead of runtime processes
            cluster = LocalCluster(workdir / "cluster", served_nodes=[])
            log("starting a fresh local control plane")
            cluster.up()
            try:
                kubectl = [str(cluster.assets / "kubectl"), "--kubeconfig", str(cluster.kubeconfig)]
                result = run(cluster.kubeconfig, kubectl, count, args.timeout, workdir)
                result["cluster"] = "fresh local control plane"
            finally:
                cluster.down()
        if args.operator_log:
            shutil.copy(workdir / "operator.log", args.operator_log)
    machine.print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
