"""Routing on the local stack: the same ModelDeployment (3 runtime pods) under the same open-loop load, through
its plain Service (kube-proxy's choice per kept connection, played by the stack's Service proxy) and through
its router with each strategy. Throughput, time to first token (p50/p99) and how evenly the pods were loaded.

    .venv/bin/python bench/bench_routing.py [--quick] [--state-dir .cluster]

The load mixes what skews a plain Service: many chat requests sharing a few long system prompts, short
requests, and a few long requests (long prompt, long answer) that hold a pod. Arrivals are Poisson at a rate
set from a short calibration (a fraction of what the router sustains), the same for every variant, so the
variants are compared at equal offered load; the achieved throughput is reported with each. The clients keep
their connections (httpx's pool), as real clients do. Per-pod load is sampled from each pod's own gauges
(waiting + running) twice a second. Prints one JSON object on stdout (machine included); progress on stderr.

Our runtime has no prefix cache, so PrefixAware cannot save prefill work here as it does on vLLM (its
automatic prefix caching): it shows what prefix affinity costs or keeps in balance, not its cache gains.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))
sys.path.insert(0, str(ROOT / "hack"))
import machine  # noqa: E402
from bench_local_pods import demo_checkpoint, log  # noqa: E402
from operator_harness import OperatorUnderTest  # noqa: E402
from stack import fresh_namespace, on_local_stack  # noqa: E402

from moe_runtime.tools.loadgen import LoadConfig, parse_mix, run_load  # noqa: E402
from tests.integration.local_stack import local_md, processes, routed_md, service_url  # noqa: E402
from tests.integration.runtime_server.test_server_metrics import total  # noqa: E402

NAME = "routing-bench"
PODS = 3
# chat sharing 4 system prompts (weight 6), short (3), long prompt with a long answer (1)
MIX = "160:16:6:4,8:8:3,400:96:1"
BATCHING = {"maxBatchSequences": 4, "tokenBudget": 256, "prefillChunk": 128, "maxQueue": 512}
STRATEGIES = ("RoundRobin", "LeastLoad", "PrefixAware")
LOAD_FRACTION = 0.7  # of the calibrated throughput, by default
TIMEOUT_S = 300


def body(model_dir: Path, routing: dict | None) -> dict:
    spec = routed_md(NAME, {"hostPath": {"path": str(model_dir)}}, replicas=PODS)
    spec["spec"]["routing"]["replicas"] = 1
    spec["spec"]["runtime"]["batching"] = BATCHING
    spec["spec"]["runtime"]["drainDelaySeconds"] = 1
    if routing is None:
        plain = local_md(NAME, {"hostPath": {"path": str(model_dir)}}, replicas=PODS)
        plain["spec"]["runtime"] = spec["spec"]["runtime"]
        return plain
    spec["spec"]["routing"].update(routing)
    return spec


def wait(condition, what: str, timeout: float = TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.3)
    raise TimeoutError(f"no {what} within {timeout:.0f}s")


def engine_ports(cluster, namespace: str) -> dict[str, int]:
    return {
        pod: p["port"]
        for pod, p in processes(cluster.state_dir, namespace, NAME).items()
        if not pod.startswith(f"{NAME}-router-")
    }


def serving_through(cluster, namespace: str, router: bool) -> str | None:
    """The loopback URL of status.url once it answers through the router (or, router False, without one)."""
    url = service_url(cluster.services_file, f"http://{NAME}.{namespace}.svc.cluster.local")
    if not url:
        return None
    try:
        answer = httpx.post(f"{url}/v1/completions", json={"prompt": "ping", "max_tokens": 1}, timeout=10)
    except httpx.HTTPError:
        return None
    routed = "x-moedeploy-pod" in answer.headers
    return url if answer.status_code == 200 and routed == router else None


def settled(cluster, namespace: str, strategy: str | None) -> bool:
    """Exactly the pods the variant needs run, none terminating (a draining router or pod skews a start)."""
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    if len(live) != len(pods):
        return False
    routers = [p for p in live if p["metadata"]["labels"].get("app.kubernetes.io/component") == "router"]
    engines = [p for p in live if p["metadata"]["labels"].get("app.kubernetes.io/component") == "engine"]
    ready = all(
        any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", ()))
        for p in live
    )
    if strategy is None:
        return ready and not routers and len(engines) == PODS
    env = [{e["name"]: e.get("value") for e in p["spec"]["containers"][0]["env"]} for p in routers]
    return (
        ready
        and len(engines) == PODS
        and len(routers) == 1
        and env[0]["MOE_RUNTIME_ROUTER_STRATEGY"] == strategy
    )


class LoadSampler:
    """Each engine pod's waiting + running requests, twice a second, from its own /metrics."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports, self.samples = ports, {pod: [] for pod in ports}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        while not self._stop.wait(0.5):
            for pod, port in self.ports.items():
                try:
                    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                except httpx.HTTPError:
                    continue
                samples = {}
                for family in text_string_to_metric_families(text):
                    for sample in family.samples:
                        samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
                load = total(samples, "moe_runtime_queue_depth") + total(
                    samples, "moe_runtime_requests_running"
                )
                self.samples[pod].append(load)

    def spread(self) -> dict:
        means = {pod: round(statistics.mean(v), 2) for pod, v in self.samples.items() if v}
        peaks = {pod: max(v) for pod, v in self.samples.items() if v}
        values = list(means.values())
        return {
            "mean_load_per_pod": means,
            "max_load_per_pod": peaks,
            "mean_load_spread": round(max(values) - min(values), 2) if values else None,
            "mean_load_cv": round(statistics.pstdev(values) / statistics.mean(values), 3)
            if values and statistics.mean(values)
            else None,
        }


def load(url: str, rate: float | None, seconds: float, concurrency: int) -> LoadConfig:
    return LoadConfig(
        urls=(url,), rate=rate, duration_s=seconds, concurrency=concurrency, mix=parse_mix(MIX),
        timeout_s=120, temperature=0,
    )  # fmt: skip


def variant(
    cluster, namespace: str, model_dir: Path, strategy: str | None, rate: float, seconds: float
) -> dict:
    routing = None if strategy is None else {"strategy": strategy}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body(model_dir, routing)))
    wait(lambda: settled(cluster, namespace, strategy), f"the {strategy or 'plain'} variant to settle")
    url = wait(lambda: serving_through(cluster, namespace, strategy is not None), "status.url to answer")
    log(f"{strategy or 'plain Service'}: {rate:.2f} req/s for {seconds:.0f}s")
    with LoadSampler(engine_ports(cluster, namespace)) as sampler:
        summary = run_load(load(url, rate, seconds, concurrency=64))
    log(f"  {summary['requests_per_s']} req/s, ttft {summary['ttft_s']}, errors {summary['errors']}")
    return {
        "requests_per_s": summary["requests_per_s"],
        "output_tokens_per_s": summary["output_tokens_per_s"],
        "completed": summary["completed"],
        "errors": summary["errors"],
        "ttft_s": summary["ttft_s"],
        "latency_s": summary["latency_s"],
        "by_pod": summary["by_pod"],
        **sampler.spread(),
    }


def run(cluster, quick: bool, workdir: Path, fraction: float = LOAD_FRACTION) -> dict:
    seconds, calibration_s = (30.0, 15.0) if quick else (90.0, 30.0)
    model_dir = demo_checkpoint(workdir / "qwen3-moe-demo")
    namespace = fresh_namespace(cluster)
    operator = OperatorUnderTest(cluster.kubeconfig, workdir, ["--namespace", namespace])
    try:
        cluster.kubectl(
            "apply", "-n", namespace, "-f", "-", input=json.dumps(body(model_dir, {"strategy": "LeastLoad"}))
        )
        wait(lambda: settled(cluster, namespace, "LeastLoad"), "the pods to start")
        url = wait(lambda: serving_through(cluster, namespace, True), "status.url to answer")
        calibration = run_load(load(url, None, calibration_s, concurrency=8))
        rate = round(fraction * calibration["requests_per_s"], 2)
        log(
            f"calibration: {calibration['requests_per_s']} req/s closed loop (8 clients) -> {rate} req/s offered"
        )
        results = {"plain_service": variant(cluster, namespace, model_dir, None, rate, seconds)}
        for strategy in STRATEGIES:
            results[strategy] = variant(cluster, namespace, model_dir, strategy, rate, seconds)
    finally:
        operator.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    plain_p99 = (results["plain_service"]["ttft_s"] or {}).get("p99")
    ratios = {
        strategy: round(plain_p99 / results[strategy]["ttft_s"]["p99"], 2)
        for strategy in STRATEGIES
        if plain_p99 and results[strategy]["ttft_s"]
    }
    return {
        "benchmark": "bench_routing",
        "pods": PODS,
        "mix": MIX,
        "batching": BATCHING,
        "offered_rate_per_s": rate,
        "load_fraction": fraction,
        "calibration_requests_per_s": calibration["requests_per_s"],
        "seconds_per_variant": seconds,
        "variants": results,
        "ttft_p99_plain_over_router": ratios,
        "goal": "p99 TTFT at least 2x lower through the router than through the plain Service, at equal throughput",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 s per variant instead of 90")
    parser.add_argument(
        "--state-dir", type=Path, help="a running `make cluster-up` stack (default: a fresh one)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-routing-") as tmp:
        result = on_local_stack(
            args.state_dir, Path(tmp), lambda cluster: run(cluster, args.quick, Path(tmp))
        )
    machine.print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
