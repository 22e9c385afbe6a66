"""The measurement loop's tick with many ModelDeployments: what it costs the operator to find the reads that are
due, every 0.5 s, whether or not any is. In process, no cluster: a watch cache holding `--count` ModelDeployments
(autoscaled, with a canary's analysis in their status), ticked with the reads themselves left out.

Two ways in one run: `copied` lists deep copies and parses every spec on each tick (the loop before this
benchmark); `cached` reads the cached objects and parses a spec again only when the cache holds another one.
Prints one JSON object: each way's median tick in ms and the share of a core it takes at one tick per 0.5 s.

    .venv/bin/python bench/bench_measure_tick.py [--quick] [--count N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))
import machine  # noqa: E402

from moe_operator.machinery.cache import ObjectCache  # noqa: E402
from moe_operator.measure.loop import TICK_S, Measurer  # noqa: E402
from moe_operator.measure.store import Measurements  # noqa: E402
from tests.unit.operator.samples import spec  # noqa: E402

WINDOW = {"at": 1.0, "kind": "Passed", "rule": "", "message": "within the objectives (40 canary requests)"}


def model_deployment(index: int) -> dict:
    body = spec(
        autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 4},
        slo={"maxRelativeIncrease": 0.2, "analysisIntervalSeconds": 30},
    )
    window = {**WINDOW, "canary": {"requests": 40, "ttftP99Seconds": 0.2}, "stable": {"requests": 160}}
    status = {
        "observedGeneration": 1,
        "stableRevision": "5f7c9d0a",
        "replicas": 2,
        "conditions": [
            {"type": t, "status": "True", "reason": "Ok", "message": "x" * 80}
            for t in ("Ready", "Progressing")
        ],
        "canary": {"revision": "0a1b2c3d", "analysis": {"recent": [window] * 10}},
    }
    meta = {"name": f"md-{index}", "namespace": "bench", "uid": f"uid-{index}", "resourceVersion": "1"}
    return {"kind": "ModelDeployment", "metadata": {**meta, "generation": 1}, "spec": body, "status": status}


def median_tick_ms(cache: ObjectCache, copies: bool, ticks: int) -> float:
    measurer = Measurer(
        None, lambda: cache.list("ModelDeployment", copies=copies), Measurements(), lambda k: None
    )
    measurer._submit = lambda *args: None  # the reads themselves are not what is measured
    times = []
    for _ in range(ticks):
        started = time.perf_counter()
        measurer.tick()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer ticks")
    parser.add_argument("--count", type=int, default=1000, help="ModelDeployments in the cache")
    args = parser.parse_args()
    ticks = 11 if args.quick else 41
    cache = ObjectCache()
    for index in range(args.count):
        cache.observe(model_deployment(index))
    result: dict = {"machine": machine.describe(), "model_deployments": args.count, "ticks": ticks}
    for way, copies in (("copied", True), ("cached", False)):
        ms = median_tick_ms(cache, copies, ticks)
        result[way] = {"tick_ms_median": round(ms, 2), "core_share": round(ms / 1000 / TICK_S, 3)}
    result["speedup"] = round(result["copied"]["tick_ms_median"] / result["cached"]["tick_ms_median"], 1)
    machine.print_result(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
