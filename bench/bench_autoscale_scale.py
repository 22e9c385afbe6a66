"""Autoscaling at scale: 500 ModelDeployments evaluated every interval from a real Prometheus.

    python bench/bench_autoscale_scale.py [--quick] [--count N] [--interval S]

A fresh local control plane, extra fake nodes that KWOK plays (no runtime processes: the fleet's pods are API
objects), a small synthetic exporter that publishes each ModelDeployment's queue as `moe_runtime_queue_depth`
per pod (a fixed total per ModelDeployment, shared by its pods, so the right replica count is a fixed point),
a real Prometheus scraping it, and the operator as a process. Measured: time until every ModelDeployment has
the replicas the decision rule gives for its queue, then over a steady period how late each evaluation came
(the gap between two evaluations minus the interval), the operator's CPU (cores) and peak RSS, and the
decisions that differ from the pure function's. Goals: no evaluation later than one interval; under one core.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import yaml
from kubernetes import client, config
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack"))

import machine  # noqa: E402
from localcluster import LocalCluster, fake_node  # noqa: E402
from operator_harness import OperatorUnderTest, free_port, reconcile_passes  # noqa: E402

GROUP, VERSION, PLURAL = "moedeploy.dev", "v1alpha1", "modeldeployments"
BENCH_LABEL = "moedeploy.dev/bench-node"
TARGET = 4
MAX_REPLICAS = 3
QUEUES = (0, 4, 4, 8, 0, 12)  # total waiting requests per ModelDeployment, cycled
CREATORS = 8


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def expected_replicas(queue: int) -> int:
    return min(MAX_REPLICAS, max(1, math.ceil(queue / TARGET)))


def model_deployment(name: str, interval: int) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "minReplicas": 1,
            "maxReplicas": MAX_REPLICAS,
            "model": {"family": "qwen3_moe", "source": {"image": {"path": "/opt/model"}}},
            "runtime": {
                "image": "moe-runtime:bench",
                "resources": {"gpu": 0},
                "nodeSelector": {BENCH_LABEL: "true"},
            },
            "autoscaling": {
                "enabled": True,
                "targetQueueDepth": TARGET,
                "intervalSeconds": interval,
                "metricWindowSeconds": interval,
                "scaleUp": {"stabilizationWindowSeconds": 0, "maxPods": 4, "periodSeconds": interval},
                "scaleDown": {"stabilizationWindowSeconds": 0, "maxPods": 4, "periodSeconds": interval},
            },
        },
    }


class QueueExporter:
    """`moe_runtime_queue_depth{namespace, model_deployment, pod}`: each ModelDeployment's total shared by its
    Running pods, as the pods of one Service would share a queue."""

    def __init__(self, core: client.CoreV1Api, namespace: str, queues: dict[str, int]) -> None:
        self._core, self._namespace, self._queues = core, namespace, queues
        self._pods: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        registry = CollectorRegistry()
        registry.register(self)
        self.port = free_port()
        start_http_server(self.port, addr="127.0.0.1", registry=registry)
        threading.Thread(target=self._follow_pods, daemon=True).start()

    def collect(self):
        family = GaugeMetricFamily(
            "moe_runtime_queue_depth", "Requests waiting", labels=["namespace", "model_deployment", "pod"]
        )
        with self._lock:
            pods = dict(self._pods)
        for md, names in pods.items():
            for pod in names:
                family.add_metric([self._namespace, md, pod], self._queues.get(md, 0) / len(names))
        yield family

    def _follow_pods(self) -> None:
        while not self._stop.wait(1.0):
            try:
                found = self._core.list_namespaced_pod(
                    self._namespace, label_selector="moedeploy.dev/model-deployment"
                )
            except Exception as err:  # the API server is busy: the next round catches up
                log(f"exporter: listing pods failed: {err}")
                continue
            pods: dict[str, list[str]] = {}
            for pod in found.items:
                if pod.status.phase == "Running" and not pod.metadata.deletion_timestamp:
                    pods.setdefault(pod.metadata.labels["moedeploy.dev/model-deployment"], []).append(
                        pod.metadata.name
                    )
            with self._lock:
                self._pods = pods

    def stop(self) -> None:
        self._stop.set()


def start_prometheus(workdir: Path, exporter_port: int, scrape_s: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump({
        "global": {"scrape_interval": f"{int(scrape_s * 1000)}ms", "evaluation_interval": f"{int(scrape_s * 1000)}ms"},
        "scrape_configs": [{"job_name": "synthetic", "honor_labels": True,
                            "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}],
    }))  # fmt: skip
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    log_path = workdir / "prometheus.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [binary, f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if process.poll() is not None:
            raise RuntimeError(f"Prometheus exited: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2):
                return process, url
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("Prometheus did not become ready")


def epoch(text: str | None) -> float | None:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").timestamp() if text else None  # noqa: DTZ007 (UTC both)


def run(cluster: LocalCluster, count: int, interval: int, steady_intervals: int, workdir: Path) -> dict:
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    queues = {f"md-{i:03d}": QUEUES[i % len(QUEUES)] for i in range(count)}
    pods_needed = sum(expected_replicas(q) for q in queues.values())
    nodes = [fake_node(f"bench-node-{i}", 0) for i in range(math.ceil(pods_needed / 100) + 1)]
    for node in nodes:
        node["metadata"]["labels"][BENCH_LABEL] = "true"
        node["status"]["capacity"]["pods"] = node["status"]["allocatable"]["pods"] = "110"
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes})
    )
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}")
    cluster.kubectl("create", "namespace", namespace)
    exporter = QueueExporter(core, namespace, queues)
    prometheus, prometheus_url = start_prometheus(workdir, exporter.port, scrape_s=min(2.0, interval / 3))
    operator = OperatorUnderTest(
        cluster.kubeconfig,
        workdir,
        ["--namespace", namespace, "--prometheus-url", prometheus_url, "--workers", "8"],
    )
    try:
        log(f"creating {count} autoscaled ModelDeployments ({pods_needed} pods at the fixed point)")
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=CREATORS) as pool:
            list(pool.map(lambda name: custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, model_deployment(name, interval)), queues))  # fmt: skip

        def statuses() -> dict[str, dict]:
            items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
            return {md["metadata"]["name"]: md.get("status", {}) for md in items}

        def converged(found: dict[str, dict]) -> int:
            return sum(
                found.get(name, {}).get("autoscaling", {}).get("desiredReplicas") == expected_replicas(queue)
                and found.get(name, {}).get("readyReplicas") == expected_replicas(queue)
                for name, queue in queues.items()
            )

        deadline = started + 30 * interval + count
        while (done := converged(statuses())) < count and time.monotonic() < deadline:
            time.sleep(2)
        converge_seconds = time.monotonic() - started
        log(
            f"{done}/{count} at their replica count after {converge_seconds:.0f}s; measuring {steady_intervals} intervals"
        )

        for name, status in statuses().items():
            want = expected_replicas(queues[name])
            auto = status.get("autoscaling", {})
            if auto.get("desiredReplicas") != want or status.get("readyReplicas") != want:
                log(
                    f"  not converged: {name} queue {queues[name]} ready {status.get('readyReplicas')} {auto}"
                )
        cpu_before, passes_before = operator.cpu_seconds(), reconcile_passes(operator.metrics())
        evaluations: dict[str, set[float]] = {name: set() for name in queues}
        steady_start = time.monotonic()
        while time.monotonic() - steady_start < steady_intervals * interval:
            for name, status in statuses().items():
                if (at := epoch(status.get("autoscaling", {}).get("lastEvaluationTime"))) is not None:
                    evaluations[name].add(at)
            time.sleep(1)
        steady = time.monotonic() - steady_start
        cpu = operator.cpu_seconds() - cpu_before
        passes = reconcile_passes(operator.metrics()) - passes_before
        final = statuses()
        peak_rss = operator.peak_rss_mib()
    finally:
        operator.stop()
        exporter.stop()
        prometheus.terminate()
        prometheus.wait(timeout=30)
    lateness = sorted(
        max(0.0, later - earlier - interval)
        for times in evaluations.values()
        for earlier, later in zip(sorted(times), sorted(times)[1:], strict=False)
    )
    never = [name for name, times in evaluations.items() if len(times) < 2]
    wrong = [name for name, queue in queues.items()
             if final.get(name, {}).get("autoscaling", {}).get("desiredReplicas") != expected_replicas(queue)]  # fmt: skip
    pct = lambda q: round(lateness[min(len(lateness) - 1, int(q * len(lateness)))], 2) if lateness else None  # noqa: E731
    cores = cpu / steady
    return {
        "model_deployments": count,
        "interval_seconds": interval,
        "pods_at_fixed_point": pods_needed,
        "converged": done,
        "converge_seconds": round(converge_seconds, 1),
        "steady_seconds": round(steady, 1),
        "evaluations_seen": sum(len(t) for t in evaluations.values()),
        "lateness_p50_seconds": pct(0.5),
        "lateness_p99_seconds": pct(0.99),
        "lateness_max_seconds": round(lateness[-1], 2) if lateness else None,
        "evaluated_fewer_than_twice": len(never),
        "decisions_differing_from_the_rule": len(wrong),
        "first_differing": wrong[:5],
        "reconcile_passes_per_second": round(passes / steady, 1),
        "operator_cpu_cores": round(cores, 3),
        "operator_peak_rss_mib": peak_rss,
        "goal_met": bool(lateness) and lateness[-1] <= interval and cores < 1.0 and not wrong and not never,
        **operator.log_problems(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 ModelDeployments, 5 s interval")
    parser.add_argument("--count", type=int)
    parser.add_argument("--interval", type=int)
    parser.add_argument("--steady-intervals", type=int, default=4)
    args = parser.parse_args()
    count = args.count or (50 if args.quick else 500)
    interval = args.interval or (5 if args.quick else 15)
    with tempfile.TemporaryDirectory(prefix="bench-autoscale-") as tmp:
        workdir = Path(tmp)
        cluster = LocalCluster(workdir / "cluster")
        log("starting a fresh local control plane")
        cluster.up()
        try:
            result = run(cluster, count, interval, args.steady_intervals, workdir)
        finally:
            cluster.down()
    machine.print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
