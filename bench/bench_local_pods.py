"""Real pods on the local stack: seconds from `kubectl apply` to the first completion through targets.json,
from `kubectl scale` to the new pod serving, and the memory and idle CPU of one runtime process of the demo
model. The baseline the autoscaler's reaction times are read against.

    .venv/bin/python bench/bench_local_pods.py [--quick] [--rounds N] [--state-dir .cluster]

Without --state-dir it starts a fresh local stack (hack/localcluster.py: its GPU nodes are the local kubelet's)
and stops it afterwards; with it, it uses that running `make cluster-up` stack. The operator runs as a process.
Each phase is split where it can be seen from outside: pod created, process started, the runtime's /ready
answering 200, the pod listed in targets.json (Ready by its probes), a completion answered. Prints one JSON
object on stdout (medians over the rounds, every run, CPU model and ISA flags); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))
sys.path.insert(0, str(ROOT / "hack"))
import machine  # noqa: E402
from operator_harness import OperatorUnderTest  # noqa: E402
from stack import fresh_namespace, on_local_stack  # noqa: E402

from tests.integration.local_stack import local_md, processes, ready_status, targets  # noqa: E402

PHASES = ("pod_created", "process_started", "runtime_ready", "target_listed", "first_completion")
TIMEOUT_S = 300
IDLE_WINDOW_S = 10.0


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def demo_checkpoint(out: Path) -> Path:
    """The checkpoint `make demo` serves (hack/demo.sh)."""
    subprocess.run(
        [sys.executable, "-m", "moe_runtime", "make-checkpoint", "--family", "qwen3_moe", "--out", str(out),
         "--num-experts", "8", "--top-k", "2"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return out


def completes(url: str) -> bool:
    try:
        body = {"prompt": "Hello, experts", "max_tokens": 4}
        return httpx.post(f"{url}/v1/completions", json=body, timeout=30).status_code == 200
    except httpx.TransportError:
        return False


def time_phases(cluster, core, namespace: str, md: str, known: set[str], started: float) -> tuple[dict, dict]:
    """Seconds from `started` to each phase of the first pod of `md` not in `known`; and its process."""
    times: dict[str, float] = {}
    deadline = started + TIMEOUT_S
    while time.monotonic() < deadline:
        now = time.monotonic() - started
        pods = core.list_namespaced_pod(
            namespace, label_selector=f"moedeploy.dev/model-deployment={md}"
        ).items
        new = [
            p.metadata.name
            for p in pods
            if p.metadata.name not in known and not p.metadata.deletion_timestamp
        ]
        if new:
            times.setdefault("pod_created", now)
        live = {
            name: p for name, p in processes(cluster.state_dir, namespace, md).items() if name not in known
        }
        for name, process in live.items():
            times.setdefault("process_started", now)
            if "runtime_ready" not in times and ready_status(process["port"]) == 200:
                times["runtime_ready"] = now
            entry = targets(cluster.targets_file, namespace, md).get(name)
            if entry:
                times.setdefault("target_listed", now)
                if completes(f"http://{entry['targets'][0]}"):
                    times["first_completion"] = time.monotonic() - started
                    return {k: round(v, 2) for k, v in times.items()}, {"pod": name, **process}
        time.sleep(0.1)
    raise TimeoutError(f"{md}: only {sorted(times)} within {TIMEOUT_S}s")


def memory_of(pid: int) -> dict:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    rollup = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    )

    def mib(text: str) -> float:
        return round(int(text.split()[0]) / 1024, 1)

    return {
        "rss_mib": mib(status["VmRSS"]),
        "peak_rss_mib": mib(status["VmHWM"]),
        "pss_mib": mib(rollup["Pss"]),
        "uss_mib": round(mib(rollup["Private_Clean"]) + mib(rollup["Private_Dirty"]), 1),
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu_percent(pid: int) -> float:
    """CPU a serving process uses with no requests (its probes and its own loops), over a few seconds."""
    before, start = cpu_seconds(pid), time.monotonic()
    time.sleep(IDLE_WINDOW_S)
    return round(100 * (cpu_seconds(pid) - before) / (time.monotonic() - start), 2)


def stack_rss_mib(state_dir: Path) -> float:
    pids = json.loads((state_dir / "pids.json").read_text()).values()
    total = 0
    for pid in pids:
        text = Path(f"/proc/{pid}/status").read_text()
        total += int(next(line.split()[1] for line in text.splitlines() if line.startswith("VmRSS:")))
    return round(total / 1024, 1)


def one_round(cluster, core, namespace: str, model_dir: Path, index: int) -> dict:
    md = f"bench-{index}"
    body = local_md(md, {"hostPath": {"path": str(model_dir)}})
    started = time.monotonic()
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))
    applied, first = time_phases(cluster, core, namespace, md, set(), started)
    log(f"round {index}: apply -> first completion {applied['first_completion']}s {applied}")
    started = time.monotonic()
    cluster.kubectl("scale", "-n", namespace, f"md/{md}", "--replicas=2")
    scaled, second = time_phases(cluster, core, namespace, md, {first["pod"]}, started)
    log(f"round {index}: scale -> new pod serving {scaled['first_completion']}s {scaled}")
    memory = memory_of(second["pid"])
    idle = idle_cpu_percent(second["pid"]) if index == 0 else None
    cluster.kubectl("delete", "-n", namespace, "md", md, "--wait=true", "--timeout=120s")
    deadline = time.monotonic() + 120
    while processes(cluster.state_dir, namespace, md) and time.monotonic() < deadline:
        time.sleep(0.5)
    return {"apply": applied, "scale": scaled, "memory": memory, "idle_cpu_percent": idle}


def warm_up_operator(cluster, namespace: str, model_dir: Path) -> None:
    """The clock starts with an operator that already reconciles (a ModelDeployment of no pods)."""
    body = local_md("warm-up", {"hostPath": {"path": str(model_dir)}}, replicas=0)
    body["spec"]["minReplicas"] = 0
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))
    deadline = time.monotonic() + 120
    get = ("get", "-n", namespace, "md", "warm-up", "-o", "jsonpath={.status.observedGeneration}")
    while cluster.kubectl(*get).stdout != "1":
        if time.monotonic() > deadline:
            raise TimeoutError("the operator did not reconcile a first ModelDeployment")
        time.sleep(0.2)
    cluster.kubectl("delete", "-n", namespace, "md", "warm-up")


def median_phases(runs: list[dict]) -> dict:
    return {phase: round(statistics.median(run[phase] for run in runs), 2) for phase in PHASES}


def run(cluster, rounds: int, workdir: Path) -> dict:
    from kubernetes import client

    core = client.CoreV1Api(cluster.api_client())
    model_dir = demo_checkpoint(workdir / "qwen3-moe-demo")
    namespace = fresh_namespace(cluster)
    operator = OperatorUnderTest(cluster.kubeconfig, workdir, ["--namespace", namespace])
    try:
        warm_up_operator(cluster, namespace, model_dir)
        results = [one_round(cluster, core, namespace, model_dir, i) for i in range(rounds)]
        stack = stack_rss_mib(cluster.state_dir)
    finally:
        operator.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    memory = {key: statistics.median(r["memory"][key] for r in results) for key in results[0]["memory"]}
    total_mib = int(Path("/proc/meminfo").read_text().split()[1]) / 1024
    shared = memory["rss_mib"] - memory["uss_mib"]
    return {
        "rounds": rounds,
        "apply_to_first_completion_s": median_phases([r["apply"] for r in results]),
        "scale_up_to_serving_s": median_phases([r["scale"] for r in results]),
        "runtime_memory_mib": memory,
        "runtime_idle_cpu_percent": results[0]["idle_cpu_percent"],
        "stack_rss_mib": stack,
        "machine_memory_mib": round(total_mib),
        # every pod private memory on top of what they share (the torch libraries), next to the stack
        "pods_that_fit_by_memory": math.floor((total_mib - stack - shared) / memory["uss_mib"]),
        "pods_that_fit_by_rss": math.floor((total_mib - stack) / memory["rss_mib"]),
        "runs": results,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round instead of three")
    parser.add_argument("--rounds", type=int, help="apply/scale/delete rounds (overrides --quick)")
    parser.add_argument("--state-dir", type=Path, help="a running `make cluster-up` stack to use")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    with tempfile.TemporaryDirectory(prefix="bench-local-pods-") as tmp:
        workdir = Path(tmp)
        result = on_local_stack(args.state_dir, workdir, lambda cluster: run(cluster, rounds, workdir))
    machine.print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
