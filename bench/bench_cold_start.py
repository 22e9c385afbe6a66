"""Scale from zero on the local stack: a request that arrives while a ModelDeployment runs no pod, from its
arrival at the router to its first token, and the parts in between.

    .venv/bin/python bench/bench_cold_start.py [--quick] [--rounds N] [--state-dir .cluster]

The ModelDeployment (spec.routing.scaleToZero, idle after 3 s) is left to reach zero pods, then one streaming
request goes to its status.url. Seen from outside, each round times, from the request's sending:
- held_at_router_s: the router reports it held (its own /metrics, read directly every 50 ms);
- held_in_prometheus_s: Prometheus has the held request (queried every 100 ms; the stack scrapes every 1 s);
- scale_decision_s: the operator set the Deployment to 1 replica (its measurement loop reads the routers through
  Prometheus every ROUTERS_AT_ZERO_S while at zero, and the read wakes the reconcile pass);
- pod_created_s, pod_ready_s: the runtime pod exists, and is Ready (weights loaded, its probe passed);
- first_token_s: the client got the first token (the router sent the request on the moment the pod's
  endpoint turned Ready).
`prometheus_delay_s` (held_in_prometheus - held_at_router) is what reading Prometheus costs over reading the
router directly; `decision_after_prometheus_s` the operator's own reaction. Medians over the rounds; prints one
JSON object on stdout (machine included); progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from moe_operator.decisions.measurements import ROUTERS_AT_ZERO_S

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))
sys.path.insert(0, str(ROOT / "hack"))
import machine  # noqa: E402
from bench_local_pods import demo_checkpoint, log  # noqa: E402
from operator_harness import OperatorUnderTest  # noqa: E402
from stack import fresh_namespace, on_local_stack  # noqa: E402

from tests.integration.local_stack import routed_md, service_url  # noqa: E402

NAME = "cold-bench"
IDLE_S = 3
PARTS = (
    "held_at_router_s",
    "held_in_prometheus_s",
    "scale_decision_s",
    "pod_created_s",
    "pod_ready_s",
    "first_token_s",
)
TIMEOUT_S = 300


def wait(condition, what: str, timeout: float = TIMEOUT_S, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(interval)
    raise TimeoutError(f"no {what} within {timeout:.0f}s")


class Watcher:
    """Times, from `start`, the first moment each part is seen; polls on its own threads."""

    def __init__(self, start: float) -> None:
        self.start, self.seen = start, {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def poll(self, part: str, check, interval: float) -> None:
        def loop() -> None:
            while not self._stop.is_set() and part not in self.seen:
                try:
                    if check():
                        self.seen[part] = round(time.monotonic() - self.start, 3)
                        return
                except Exception:  # noqa: BLE001 - a failed look is no sighting; look again
                    pass
                self._stop.wait(interval)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=2).status_code == 200
    except httpx.HTTPError:  # the Service proxy has no Ready router to send the connection to yet
        return False


def router_holds(url: str) -> bool:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=1).text):
        if family.name == "moe_router_held_requests":
            return any(sample.value > 0 for sample in family.samples)
    return False


def engine_pods(core, namespace: str) -> list:
    pods = core.list_namespaced_pod(
        namespace, label_selector=f"moedeploy.dev/model-deployment={NAME},app.kubernetes.io/component=engine"
    )
    return pods.items


def one_round(cluster, core, apps, prom, namespace: str, url: str, index: int) -> dict:
    wait(lambda: apps.read_namespaced_deployment(NAME, namespace).spec.replicas == 0 and not engine_pods(core, namespace),
         "zero pods", interval=0.5)  # fmt: skip
    time.sleep(2)
    query = f'sum(moe_router_held_requests{{namespace="{namespace}",model_deployment="{NAME}"}})'
    start = time.monotonic()
    watcher = Watcher(start)
    watcher.poll("held_at_router_s", lambda: router_holds(url), 0.05)
    watcher.poll("held_in_prometheus_s", lambda: float(prom.custom_query(query)[0]["value"][1]) > 0, 0.1)
    watcher.poll(
        "scale_decision_s", lambda: apps.read_namespaced_deployment(NAME, namespace).spec.replicas >= 1, 0.1
    )
    watcher.poll("pod_created_s", lambda: bool(engine_pods(core, namespace)), 0.1)
    watcher.poll(
        "pod_ready_s",
        lambda: any(c.type == "Ready" and c.status == "True" for p in engine_pods(core, namespace) for c in p.status.conditions or ()),
        0.1,
    )  # fmt: skip
    body = {"prompt": f"cold start {index}", "max_tokens": 8, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=TIMEOUT_S) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:]).get("choices"):
                watcher.seen.setdefault("first_token_s", round(time.monotonic() - start, 3))
        status = response.status_code
    wait(
        lambda: all(part in watcher.seen for part in PARTS), "every part to be seen", timeout=30, interval=0.1
    )
    watcher.stop()
    times = {part: watcher.seen[part] for part in PARTS}
    log(f"round {index}: {status} {times}")
    return times


def run(cluster, rounds: int, workdir: Path) -> dict:
    from kubernetes import client
    from prometheus_api_client import PrometheusConnect

    api = cluster.api_client()
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    prom = PrometheusConnect(url=cluster.prometheus_url, disable_ssl=True)
    model_dir = demo_checkpoint(workdir / "qwen3-moe-demo")
    namespace = fresh_namespace(cluster)
    operator = OperatorUnderTest(
        cluster.kubeconfig, workdir, ["--namespace", namespace, "--prometheus-url", cluster.prometheus_url]
    )
    try:
        md = routed_md(
            NAME, {"hostPath": {"path": str(model_dir)}}, replicas=1, scaleToZero={"idleSeconds": IDLE_S}
        )
        md["spec"]["minReplicas"] = 0
        md["spec"]["routing"]["replicas"] = 1
        md["spec"]["runtime"]["drainDelaySeconds"] = 1
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(md))
        address = wait(
            lambda: service_url(cluster.services_file, f"http://{NAME}.{namespace}.svc.cluster.local"),
            "status.url",
        )
        wait(lambda: ready(address), "the router")
        results = [one_round(cluster, core, apps, prom, namespace, address, i) for i in range(rounds)]
    finally:
        operator.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    medians = {part: round(statistics.median(r[part] for r in results), 3) for part in PARTS}
    derived = [
        {
            "prometheus_delay_s": r["held_in_prometheus_s"] - r["held_at_router_s"],
            "decision_after_prometheus_s": r["scale_decision_s"] - r["held_in_prometheus_s"],
            "pod_start_s": r["pod_ready_s"] - r["pod_created_s"],
            "ready_to_first_token_s": r["first_token_s"] - r["pod_ready_s"],
        }
        for r in results
    ]
    return {
        "benchmark": "bench_cold_start",
        "rounds": rounds,
        "idle_seconds": IDLE_S,
        "prometheus_scrape_interval": cluster.scrape_interval,
        "operator_read_at_zero_s": ROUTERS_AT_ZERO_S,
        "median_s": medians,
        "median_derived_s": {k: round(statistics.median(d[k] for d in derived), 3) for k in derived[0]},
        "runs": results,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--state-dir", type=Path, help="a running `make cluster-up` stack (default: a fresh one)"
    )
    args = parser.parse_args()
    rounds = 2 if args.quick else args.rounds
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        result = on_local_stack(args.state_dir, Path(tmp), lambda cluster: run(cluster, rounds, Path(tmp)))
    machine.print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
