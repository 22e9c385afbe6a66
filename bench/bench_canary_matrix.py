"""Canary judgement on the local stack: a matrix of good and bad revisions under steady load, with and without a
CPU burner beside it. False promotions (goal 0), false rollbacks (goal 0 of the good ones), seconds from the bad
canary's first breach to its pods gone, requests failed, and how long each analysis took to decide.

    .venv/bin/python bench/bench_canary_matrix.py [--quick] [--rounds N] [--state-dir .cluster]

Without --state-dir it starts a fresh local stack (hack/localcluster.py) and stops it afterwards. The operator runs
as a process reading the stack's Prometheus; the load generator in a process of its own (closed loop, the canary
tests' load and SLO: tests/integration/canary_stack.py, judged against the stable track). One ModelDeployment of
one stable pod serving a LoRA adapter, a canary of one pod. Every round deploys, against the same stable track:
two good revisions (the same model, another seed), one under the tests' load and one under a load whose prompts
share long prefixes the stable pods have cached, and one bad revision of each kind: slower per token, slow only
on long prompts, hanging on some requests, crash-looping after some requests (runtime/moe_runtime/faults.py), and
failing to load the adapter the stable track serves. A rollback's first breach is the canary's readiness (its
faults act from its first request); its end, the canary's pods gone. Prints one JSON object; progress to stderr.
"""

from __future__ import annotations

import argparse
import itertools
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
from stack import fresh_namespace, on_local_stack  # noqa: E402

from moe_operator.timestamps import from_time  # noqa: E402
from tests.burner import cpu_burner  # noqa: E402
from tests.integration.canary_stack import (  # noqa: E402
    ANALYSIS,
    LOAD_CONCURRENCY,
    LOAD_MIX,
    SLOWER_PER_TOKEN,
    SteadyLoad,
    canary_gone,
    canary_md,
    faulty,
    new_revision,
    rejected,
    requests_of,
)
from tests.integration.local_stack import START_TIMEOUT_S, write_tiny_checkpoint  # noqa: E402
from tests.integration.lora_support import peft_adapter  # noqa: E402
from tests.integration.operator_support import Models  # noqa: E402
from tests.waiting import wait_for  # noqa: E402

NAME = "bench"
POLL_S = 0.3
LONG_MIX = "8:16:3,64:16:1"
# prompts of 64 words opening with one of 32 fixed 63-word prefixes, the same in every load: the stable pods'
# prefix caches hold them, a new canary's do not (the judge scales its TTFT tolerance by the prompt work)
PREFIX_MIX = "64:16:1:32"
GOOD_LOADS = {"good": LOAD_MIX, "good-shared-prefixes": PREFIX_MIX}
KINDS = {
    # kind: (spec patch, load mix)
    "slower-per-token": ({"runtime": faulty(SLOWER_PER_TOKEN)}, LOAD_MIX),
    "slow-on-long-prompts": ({"runtime": faulty("long_prompt=40:1.5")}, LONG_MIX),
    "hangs": ({"runtime": faulty("hang_every=12:25")}, LOAD_MIX),
    # its 3 windows end before its liveness probe restarts it: the operator stretches the analysis over that
    "crash-loops": ({"runtime": faulty("unhealthy_after=12")}, LOAD_MIX),
    "fails-adapter": ({"runtime": {"args": [], "maxLoraRank": 4}}, LOAD_MIX),
}


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, cluster, models: Models, prom: PrometheusConnect, workdir: Path) -> None:
        self.cluster, self.models, self.prom, self.workdir = cluster, models, prom, workdir
        self.timeout_s = START_TIMEOUT_S + 40 * ANALYSIS["analysisIntervalSeconds"]
        self.revision = ""

    def deploy(self, patch: dict, mix: str) -> dict:
        """Applies a change under load and follows it to a decision and the canary gone. The analysis's length
        is the matrix's own unless the change sets it (a patch stays in the spec for the revisions after it)."""
        patch = {"slo": {"measurements": ANALYSIS["measurements"]}, **patch}
        log_path = self.workdir / f"load-{uuid.uuid4().hex[:6]}.log"
        seen: dict = {}
        with SteadyLoad(self.cluster.targets_file, self.models.namespace, NAME, log_path, mix=mix) as load:
            wait_for(lambda: requests_of(self.prom, self.models.namespace, NAME, 4) >= 5, timeout=90,
                     what="the load to show in Prometheus")  # fmt: skip
            changed = time.time()
            self.models.patch_spec(NAME, patch)
            revision = new_revision(self.models, NAME, self.revision)
            deadline = time.monotonic() + self.timeout_s
            while time.monotonic() < deadline:
                now, status = time.time(), self.models.get(NAME)["status"]
                canary = status.get("canary") or {}
                if canary.get("readyTime"):
                    seen.setdefault("ready_at", from_time(canary["readyTime"]))
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
                    seen["gone_at"] = now
                    break
                time.sleep(POLL_S)
            else:
                canary = self.models.get(NAME)["status"].get("canary") or {}
                raise TimeoutError(
                    f"revision {revision}: no decision within {self.timeout_s}s ({seen}); canary: {canary}"
                )
        entry = rejected({"status": self.models.get(NAME)["status"]}, revision) or {}
        ready = seen.get("ready_at") or changed
        return {
            "revision": revision,
            "outcome": seen["outcome"],
            "reason": entry.get("reason"),
            "rules": sorted({m.get("rule") for m in entry.get("measurements", []) if m.get("rule")}),
            "analysis_s": round(seen["decided_at"] - ready, 1),  # canary Ready to the decision
            "breach_to_gone_s": round(seen["gone_at"] - ready, 1),
            "requests": load.result["completed"],
            "requests_failed": sum(load.result["errors"].values()),
        }


def spread(values: list[float]) -> dict | None:
    return {"median": round(statistics.median(values), 1), "max": round(max(values), 1)} if values else None


def summarize(runs: list[dict]) -> dict:
    goods = [r for r in runs if r["kind"] in GOOD_LOADS]
    bads = [r for r in runs if r["kind"] not in GOOD_LOADS]
    rolled_back = [r for r in bads if r["outcome"] == "RolledBack"]
    return {
        "false_promotions": sum(r["outcome"] == "Promoted" for r in bads),
        "false_rollbacks": sum(r["outcome"] == "RolledBack" for r in goods),
        "good_revisions": len(goods),
        "bad_revisions": len(bads),
        "breach_to_canary_gone_s": spread([r["breach_to_gone_s"] for r in rolled_back]),
        "analysis_s_to_rollback": spread([r["analysis_s"] for r in rolled_back]),
        "analysis_s_to_promotion": spread([r["analysis_s"] for r in goods if r["outcome"] == "Promoted"]),
        "requests_failed": sum(r["requests_failed"] for r in runs),
        "requests": sum(r["requests"] for r in runs),
        "by_kind": {
            kind: {
                "outcomes": [r["outcome"] for r in runs if r["kind"] == kind],
                "reasons": sorted({r["reason"] for r in runs if r["kind"] == kind and r["reason"]}),
                "breach_to_canary_gone_s": spread([r["breach_to_gone_s"] for r in runs if r["kind"] == kind]),
            }
            for kind in [*GOOD_LOADS, *KINDS]
        },
    }


def run(cluster, rounds: int, workdir: Path) -> dict:
    namespace = fresh_namespace(cluster)
    models = Models(cluster, namespace)
    prom = PrometheusConnect(url=cluster.prometheus_url, disable_ssl=True)
    seeds = [write_tiny_checkpoint(workdir / f"tiny-{seed}", 4, seed=seed) for seed in range(3)]
    other_seeds = itertools.cycle(
        [*seeds[1:], seeds[0]]
    )  # each good revision: another seed than the stable one
    adapter = peft_adapter(seeds[0], workdir / "adapter", seed=7, experts=False, r=8)
    operator = OperatorUnderTest(
        cluster.kubeconfig, workdir, ["--namespace", namespace, "--prometheus-url", cluster.prometheus_url]
    )
    bench = Bench(cluster, models, prom, workdir)
    matrix: dict[str, list[dict]] = {"quiet": [], "cpu_burner": []}
    try:
        body = canary_md(NAME, seeds[0])
        body["spec"]["adapters"] = [{"name": "sql", "source": {"hostPath": {"path": str(adapter)}}}]
        models.apply(body)
        bench.revision = models.wait_ready(NAME, replicas=1, timeout=START_TIMEOUT_S)["status"][
            "stableRevision"
        ]
        for condition, burners in (("quiet", 0), ("cpu_burner", 1)):
            with cpu_burner(burners):
                for index in range(rounds):
                    for kind, (patch, mix) in KINDS.items():
                        result = {"kind": kind, "round": index, **bench.deploy(patch, mix)}
                        matrix[condition].append(result)
                        log(f"{condition} round {index}: {kind} {result['outcome']} ({result['reason']}) after "
                            f"{result['analysis_s']}s, gone {result['breach_to_gone_s']}s after Ready")  # fmt: skip
                    for kind, mix in GOOD_LOADS.items():
                        model = {"source": {"hostPath": {"path": str(next(other_seeds))}}}
                        good = {"model": model, "runtime": {"args": [], "maxLoraRank": 16}}
                        result = {"kind": kind, "round": index, **bench.deploy(good, mix)}
                        if result["outcome"] == "Promoted":
                            bench.revision = result["revision"]
                        matrix[condition].append(result)
                        log(
                            f"{condition} round {index}: {kind} {result['outcome']} after {result['analysis_s']}s"
                        )
        problems = operator.log_problems()
    except Exception:
        log("operator log, last lines:\n" + operator.log_path.read_text()[-6000:])
        raise
    finally:
        operator.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    return {
        "rounds": rounds,
        "analysis": ANALYSIS,
        "load": {
            "concurrency": LOAD_CONCURRENCY,
            "closed_loop": True,
            "mix": LOAD_MIX,
            "long_prompts_mix": LONG_MIX,
            "shared_prefixes_mix": PREFIX_MIX,
        },
        "goals": {"false_promotions": 0, "false_rollbacks": 0, "requests_failed": 0},
        **{condition: summarize(runs) for condition, runs in matrix.items()},
        **problems,
        "runs": matrix,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round instead of two")
    parser.add_argument("--rounds", type=int, help="rounds of every kind (overrides --quick)")
    parser.add_argument("--state-dir", type=Path, help="a running `make cluster-up` stack to use")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 2)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="bench-canary-matrix-") as tmp:
        workdir = Path(tmp)
        result = on_local_stack(args.state_dir, workdir, lambda cluster: run(cluster, rounds, workdir))
    machine.print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
