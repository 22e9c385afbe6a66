"""Canary rollback on the local stack under steady load: seconds from the first measurement window that breached
the SLO to the canary's pods gone, false rollbacks of good revisions, and requests failed during a rollback.

    .venv/bin/python bench/bench_canary_rollback.py [--quick] [--rounds N] [--interval S] [--state-dir .cluster]

Without --state-dir it starts a fresh local stack (hack/localcluster.py) and stops it afterwards; with it, it
uses that running `make cluster-up` stack. The operator runs as a process reading the stack's Prometheus; the
load generator runs in a process of its own (closed loop, the canary tests' load: tests/integration/canary_stack.py).
One ModelDeployment of one stable pod, a canary of one pod, a small random checkpoint. First a calibration: a
good revision is analysed against a lax SLO, and its median window p99 sets the SLO of the rounds (the rule of
tests/integration/test_canary_e2e.py). Then each round deploys a good revision (a harmless setting; a
rollback is a false one) and a bad one (`maxBatchSequences: 1`, several times slower under this load).

For each rollback: the end of the first window that breached (the operator's own record of it, in
status.rejectedRevisions), when the rejection showed in the status, when the canary left targets.json (no new
request reaches it: what a Service does), and when its pods were gone (its queued requests drained, the
processes exited, the pod objects deleted). Goal: pods gone within (failureLimit + 1) analysis intervals of the
first breach; 0 false rollbacks; 0 failed requests. Prints one JSON object (medians and maxima, every round, CPU
model and ISA flags, load average); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))
sys.path.insert(0, str(ROOT / "hack"))
import machine  # noqa: E402
from operator_harness import OperatorUnderTest  # noqa: E402
from prometheus_api_client import PrometheusConnect  # noqa: E402
from stack import on_local_stack  # noqa: E402

from tests.integration.canary_stack import (  # noqa: E402
    ANALYSIS,
    BAD_MARGIN,
    CHECKPOINT_LAYERS,
    GOOD_MARGIN,
    LOAD_CONCURRENCY,
    SteadyLoad,
    canary_gone,
    canary_md,
    measured_p99,
    new_revision,
    rejected,
    requests_of,
    slo_threshold,
)
from tests.integration.local_stack import START_TIMEOUT_S, targets, write_tiny_checkpoint  # noqa: E402
from tests.integration.operator_support import Models, install_crd  # noqa: E402
from tests.waiting import wait_for  # noqa: E402

NAME = "bench"
POLL_S = 0.2


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, cluster, models: Models, prom: PrometheusConnect, workdir: Path, interval_s: int):
        self.cluster, self.models, self.prom, self.workdir = cluster, models, prom, workdir
        self.interval_s = interval_s
        self.timeout_s = START_TIMEOUT_S + 3 * ANALYSIS["initialDelaySeconds"] + 12 * interval_s
        self.revision = ""

    def load(self) -> SteadyLoad:
        log_path = self.workdir / f"load-{uuid.uuid4().hex[:6]}.log"
        return SteadyLoad(self.cluster.targets_file, self.models.namespace, NAME, log_path)

    def status(self) -> dict:
        return self.models.get(NAME)["status"]

    def canary_targets(self) -> dict[str, dict]:
        listed = targets(self.cluster.targets_file, self.models.namespace, NAME)
        return {pod: entry for pod, entry in listed.items() if pod.startswith(f"{NAME}-canary-")}

    def deploy(self, batching: dict, p99_s: float | None = None) -> dict:
        """Applies a change under load and follows its canary to promotion (and the canary gone) or rollback
        (and the canary gone); what it saw, with wall-clock times."""
        patch: dict = {"runtime": {"batching": batching}}
        if p99_s is not None:
            patch["slo"] = {"p99LatencySeconds": p99_s}
        seen: dict = {"windows": {}, "canary_urls": set()}
        with self.load() as load:
            wait_for(lambda: requests_of(self.prom, self.models.namespace, NAME, self.interval_s) >= 5,
                     timeout=90, what="the load to show in Prometheus")  # fmt: skip
            self.models.patch_spec(NAME, patch)
            revision = new_revision(self.models, NAME, self.revision)
            deadline = time.monotonic() + self.timeout_s + START_TIMEOUT_S
            while time.monotonic() < deadline:
                now, status = time.time(), self.status()
                canary = status.get("canary") or {}
                for outcome in (canary.get("analysis") or {}).get("recent") or ():
                    seen["windows"][outcome["at"]] = outcome
                listed = self.canary_targets()
                if listed:
                    seen.setdefault("in_traffic_at", now)
                    seen["canary_urls"] |= {f"http://{e['targets'][0]}" for e in listed.values()}
                elif "in_traffic_at" in seen:
                    seen.setdefault("out_of_traffic_at", now)
                if rejected({"status": status}, revision):
                    seen.setdefault("decided_at", now)
                    seen["outcome"] = "RolledBack"
                elif status.get("stableRevision") == revision:
                    seen.setdefault("decided_at", now)
                    seen["outcome"] = "Promoted"
                if (
                    "decided_at" in seen
                    and "canary" not in status
                    and canary_gone(self.cluster, self.models, NAME)
                ):
                    seen["pods_gone_at"] = now
                    break
                time.sleep(POLL_S)
            else:
                raise TimeoutError(f"revision {revision}: no decision within the deadline ({seen})")
        entry = rejected({"status": self.status()}, revision)
        if entry:  # the measurements that condemned it, in case the polls missed the last one
            seen["windows"].update({m["at"]: m for m in entry["measurements"]})
        failed_at = [m["at"] for m in entry["measurements"] if m["kind"] == "Failed"] if entry else []
        by_target = load.result["by_target"]
        return {
            "revision": revision,
            "outcome": seen["outcome"],
            "window_p99_s": _p99s_by_kind(seen["windows"].values()),
            "first_breach_at": min(failed_at) if failed_at else None,
            **{
                key: seen.get(key)
                for key in ("in_traffic_at", "decided_at", "out_of_traffic_at", "pods_gone_at")
            },
            "requests": load.result["completed"],
            "requests_failed": sum(load.result["errors"].values()),
            "errors": load.result["errors"],
            "canary_requests": sum(by_target.get(url, 0) for url in seen["canary_urls"]),
        }


def _p99s_by_kind(outcomes) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for outcome in outcomes:
        if outcome.get("p99LatencySeconds") is not None:
            out.setdefault(outcome["kind"], []).append(round(outcome["p99LatencySeconds"], 3))
    return out


def since(run: dict, key: str) -> float | None:
    if run["first_breach_at"] is None or run[key] is None:
        return None
    return round(run[key] - run["first_breach_at"], 2)


def spread(values: list[float | None]) -> dict | None:
    known = [v for v in values if v is not None]
    if not known:
        return None
    return {"median": round(statistics.median(known), 2), "max": round(max(known), 2)}


def run(cluster, rounds: int, interval_s: int, workdir: Path) -> dict:
    install_crd(cluster)
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", namespace)
    models = Models(cluster, namespace)
    prom = PrometheusConnect(url=cluster.prometheus_url, disable_ssl=True)
    model_dir = write_tiny_checkpoint(workdir / "tiny-qwen3-moe", CHECKPOINT_LAYERS)
    operator = OperatorUnderTest(
        cluster.kubeconfig, workdir, ["--namespace", namespace, "--prometheus-url", cluster.prometheus_url]
    )
    bench = Bench(cluster, models, prom, workdir, interval_s)
    try:
        models.apply(canary_md(NAME, model_dir, p99_s=30, analysisIntervalSeconds=interval_s))
        bench.revision = models.wait_ready(NAME, replicas=1, timeout=START_TIMEOUT_S)["status"][
            "stableRevision"
        ]
        with bench.load():
            started = time.monotonic()
            baseline = wait_for(
                lambda: measured_p99(prom, models, NAME, bench.revision, started, 2 * interval_s),
                timeout=120, what="the stable revision's p99 under load",
            )  # fmt: skip
        log(f"stable alone: p99 {baseline:.3g}s; calibrating on a good canary")
        calibration = bench.deploy({"maxQueue": 100}, slo_threshold(baseline, GOOD_MARGIN))
        bench.revision = calibration["revision"]
        good_p99 = statistics.median(calibration["window_p99_s"]["Passed"])
        threshold = slo_threshold(good_p99, BAD_MARGIN)
        log(f"good canary: window p99 {calibration['window_p99_s']}; SLO of the rounds: p99 {threshold}s")
        goods, bads = [], []
        for index in range(rounds):
            good = bench.deploy({"maxQueue": 200 + index, "maxBatchSequences": 32}, threshold)
            bench.revision = good["revision"]
            goods.append(good)
            log(f"round {index}: good revision {good['outcome']}, window p99 {good['window_p99_s']}")
            bad = bench.deploy({"maxBatchSequences": 1})
            bench.revision = bad["revision"]
            bads.append(bad)
            log(f"round {index}: bad revision {bad['outcome']}, window p99 {bad['window_p99_s']}, "
                f"pods gone {since(bad, 'pods_gone_at')}s after the first breach")  # fmt: skip
        operator_metrics = operator.metrics()
        problems = operator.log_problems()
    finally:
        operator.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    goal_s = (ANALYSIS["failureLimit"] + 1) * interval_s
    rolled_back = [b for b in bads if b["outcome"] == "RolledBack"]
    to_gone = [since(b, "pods_gone_at") for b in rolled_back]
    return {
        "rounds": rounds,
        "analysis": {**ANALYSIS, "analysisIntervalSeconds": interval_s},
        "load": {"concurrency": LOAD_CONCURRENCY, "closed_loop": True},
        "slo_p99_s": threshold,
        "calibration": {
            "stable_alone_p99_s": round(baseline, 3),
            "good_canary_window_p99_s": calibration["window_p99_s"],
        },
        "goal_s": goal_s,
        "first_breach_to_decision_s": spread([since(b, "decided_at") for b in rolled_back]),
        "first_breach_to_out_of_traffic_s": spread([since(b, "out_of_traffic_at") for b in rolled_back]),
        "first_breach_to_pods_gone_s": spread(to_gone),
        "pods_gone_within_goal": bool(to_gone) and all(t is not None and t <= goal_s for t in to_gone),
        "bad_revisions_rolled_back": f"{len(rolled_back)}/{len(bads)}",
        "false_rollbacks": sum(g["outcome"] == "RolledBack" for g in goods),
        "good_revisions": len(goods),
        "requests_failed_during_rollbacks": sum(b["requests_failed"] for b in bads),
        "requests_during_rollbacks": sum(b["requests"] for b in bads),
        "requests_failed_during_promotions": sum(g["requests_failed"] for g in goods),
        "good_window_p99_s": sorted(p for g in goods for p in g["window_p99_s"].get("Passed", [])),
        "bad_window_p99_s": sorted(p for b in bads for p in b["window_p99_s"].get("Failed", [])),
        "operator_rollbacks_total": operator_metrics.get(
            'moe_operator_rollbacks_total{reason="SLOBreached"}'
        ),
        "operator_promotions_total": operator_metrics.get("moe_operator_promotions_total"),
        **problems,
        "runs": {"calibration": calibration, "good": goods, "bad": bads},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round instead of three")
    parser.add_argument("--rounds", type=int, help="good + bad revision rounds (overrides --quick)")
    parser.add_argument("--interval", type=int, default=5, help="analysisIntervalSeconds (default 5)")
    parser.add_argument("--state-dir", type=Path, help="a running `make cluster-up` stack to use")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="bench-canary-rollback-") as tmp:
        workdir = Path(tmp)
        result = on_local_stack(
            args.state_dir, workdir, lambda cluster: run(cluster, rounds, args.interval, workdir)
        )
    machine.print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
