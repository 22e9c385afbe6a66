"""Autoscaling under real load on the local stack: how fast the operator reacts to a load step and a ramp,
how far it overshoots, whether it scales again while new pods load or flaps on steady load, and how long
after the load stops it scales back in.

    .venv/bin/python bench/bench_autoscale_load.py [--quick] [--repeats N] [--state-dir .cluster]

Everything real: a fresh local stack (or a running `make cluster-up` one with --state-dir) whose pods are
`moe_runtime serve` processes and whose Prometheus scrapes them every second, the operator as a process reading
that Prometheus, and the load generator sending closed-loop requests through targets.json to one ModelDeployment
of a tiny checkpoint (1 to MAX_REPLICAS pods, maxBatchSequences MAX_BATCH, so the requests beyond that wait).

- Step (--repeats times, one with --quick): CLIENTS_STEP clients at once, held until HOLD_S after the new pods
  serve, then stopped. Seconds from the step to the queue over target in Prometheus (its first scrape over),
  to the operator's windowed read over target (each pod's mean over metricWindowSeconds, out of the tolerance
  band), to the Deployment patch; decision latency = patch - first over-target sample, against the configured
  interval; from the load stop to the scale-in, against the scale-down window (counted from the last
  recommendation that held the replicas, as the operator keeps it in status.autoscaling.memory).
- Ramp (once): clients added RAMP_STEP at a time up to RAMP_TOP, each step held until its pods serve plus
  RAMP_HOLD_S. Most replicas reached against what the load needed (the fewest pods whose queue stays under the
  target: closed-loop clients C over N pods leave C/N - MAX_BATCH waiting each), and the queue per pod at the top.
  Per step, the operator's evaluations up to its first patch (time from the step, the windowed queue it read,
  its recommendation, decision and reason, from status.autoscaling).
- Both: scale-ups decided while some pod was not Ready yet (goal 0: the cascade), scale-downs and direction
  changes under steady load (goal 0: no flapping).

Prints one JSON object (medians over the repetitions, every run, the configuration, CPU model and ISA flags);
progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))
sys.path.insert(0, str(ROOT / "hack"))
import machine  # noqa: E402
from operator_harness import OperatorUnderTest  # noqa: E402
from stack import fresh_namespace, on_local_stack  # noqa: E402

from moe_runtime.tools.loadgen import LoadConfig, LoadGenerator, Shape  # noqa: E402
from tests.integration.autoscale_support import (  # noqa: E402
    PromReader,
    Recorder,
    ScaleChange,
    autoscaled_md,
    first_over,
)
from tests.integration.local_stack import pod_ready, write_tiny_checkpoint  # noqa: E402
from tests.integration.operator_support import Models  # noqa: E402

MD = "bench-auto"
MAX_BATCH = 2
TARGET = 8.0
TOLERANCE = 0.1  # the CRD's default
MIN_REPLICAS, MAX_REPLICAS = 1, 4
CLIENTS_STEP = 16  # needs 2 pods: 16/1 - 2 = 14 waiting on one, 16/2 - 2 = 6 on each of two
RAMP_STEP, RAMP_TOP = 8, 24  # 8, 16, 24 clients: 1, 2, 3 pods
MIX = (Shape(8, 32),)
POD_TIMEOUT_S = 240


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def needed_replicas(clients: int) -> int:
    """The fewest pods whose queue stays under the target: `clients` in flight, MAX_BATCH running on each."""
    return max(MIN_REPLICAS, math.ceil(clients / (TARGET + MAX_BATCH)))


def wait(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
    return value


class Bench:
    def __init__(self, cluster, namespace: str, prometheus: PromReader, args: argparse.Namespace) -> None:
        self.cluster, self.namespace, self.prometheus, self.args = cluster, namespace, prometheus, args
        self.models = Models(cluster, namespace)

    # ---- observing ---------------------------------------------------------------------------------------

    def pods(self) -> tuple[int, int]:
        """(Ready, all) pods that are not terminating."""
        live = [p for p in self.models.pods(MD) if not p["metadata"].get("deletionTimestamp")]
        return sum(pod_ready(p) for p in live), len(live)

    def replicas(self) -> int | None:
        deployment = self.models.deployment(MD)
        return deployment["spec"]["replicas"] if deployment else None

    def serving(self) -> bool:
        """Every pod the Deployment asks for exists and is Ready, and no other one is left."""
        want = self.replicas()
        return self.pods() == (want, want) and len(self.models.pods(MD)) == want

    def mean_queue(self) -> float | None:
        return self.prometheus.mean_queue(self.namespace, MD, self.args.window)

    def settled_queue(self) -> float | None:
        """The queue per pod once every serving pod has been scraped for a whole metric window."""
        wait(self.serving, POD_TIMEOUT_S, "the pods serving")
        since = time.time()
        wait(
            lambda: len(self.prometheus.queue_samples(self.namespace, MD, since, time.time())) == self.replicas(),
            30, "every pod scraped",
        )  # fmt: skip
        time.sleep(self.args.window + 1)  # a whole window of samples from every pod
        return self.mean_queue()

    def settle_at_min(self) -> None:
        wait(lambda: self.replicas() == MIN_REPLICAS and self.serving(), POD_TIMEOUT_S, "one serving pod")
        wait(lambda: self.mean_queue() == 0, 60, "an empty queue")

    def client(self, clients: int) -> LoadGenerator:
        return LoadGenerator(
            LoadConfig(
                targets_file=self.cluster.targets_file, model_deployment=MD, namespace=self.namespace,
                concurrency=clients, duration_s=3600, mix=MIX, timeout_s=60,
            )
        )  # fmt: skip

    def window_end(self, recorder: Recorder, change: ScaleChange) -> float | None:
        """When the scale-down window of a scale-in ended: the last recommendation of at least the replicas it
        removed, as the operator remembered it in status.autoscaling.memory, plus the window."""
        held = {
            (r["at"], r["replicas"])
            for s in recorder.snapshots
            if s.at <= change.at
            for r in (s.autoscaling.get("memory") or {}).get("recommendations") or ()
        }
        last = max((at for at, replicas in held if replicas >= change.before), default=None)
        return None if last is None else last + self.args.scale_down_window

    # ---- scenarios ---------------------------------------------------------------------------------------

    def step(self, recorder: Recorder, index: int) -> dict:
        self.settle_at_min()
        load = self.client(CLIENTS_STEP)
        with load.background():
            started = time.time()
            patched = wait(lambda: recorder.changes(since=started), 60, "a scale-out")[0]
            wait(self.serving, POD_TIMEOUT_S, "the new pods serving")
            served = time.time()
            wait(lambda: (self.mean_queue() or TARGET) < TARGET, 60, "the queue per pod under the target")
            drained = time.time()
            queue = self.settled_queue()
            time.sleep(max(0.0, drained + self.args.hold - time.time()))  # steady load: a measuring period
            stopped = time.time()
        samples = self.prometheus.queue_samples(self.namespace, MD, started - 5, patched.at + 1)
        seen = first_over(samples, TARGET, since=started)
        readable = first_over(samples, TARGET * (1 + TOLERANCE), window_s=self.args.window, since=started)
        scale_in = wait(
            lambda: [c for c in recorder.changes(since=stopped) if c.after < c.before],
            self.args.scale_down_window + 60, "the scale-in",
        )[0]  # fmt: skip
        wait(lambda: self.replicas() == MIN_REPLICAS and self.serving(), 120, "back to one serving pod")
        window_end = self.window_end(recorder, scale_in)
        loaded = [c for c in recorder.changes(since=started) if c.at <= stopped]
        run = {
            "queue_over_target_in_prometheus_s": _since(started, seen),
            "queue_over_target_in_window_s": _since(started, readable),
            "deployment_patched_s": round(patched.at - started, 2),
            "decision_latency_s": _since(seen, patched.at),
            "decision_latency_from_window_s": _since(readable, patched.at),
            "new_pods_serving_s": round(served - started, 2),
            "queue_under_target_s": round(drained - started, 2),
            "queue_per_pod_served": _round(queue),
            "scaled_to": patched.after,
            "needed_replicas": needed_replicas(CLIENTS_STEP),
            "max_replicas_reached": max(c.after for c in loaded),
            "scale_in_after_load_stop_s": round(scale_in.at - stopped, 2),
            "scale_in_after_window_end_s": _since(window_end, scale_in.at),
            "scale_in_to": scale_in.after,
            **_under_load(loaded),
        }
        log(f"step {index}: {run}")
        return run

    def ramp(self, recorder: Recorder) -> dict:
        self.settle_at_min()
        steps = []
        started = time.time()
        with contextlib.ExitStack() as loads:
            for clients in range(RAMP_STEP, RAMP_TOP + 1, RAMP_STEP):
                loads.enter_context(self.client(RAMP_STEP).background())
                at = time.time()
                time.sleep(self.args.ramp_hold)  # a measuring period at this load
                queue = self.settled_queue()
                changes = recorder.changes(since=at)
                # from a window before the step: the operator's first reads still average samples from before it
                samples = self.prometheus.queue_samples(
                    self.namespace, MD, at - self.args.window, time.time()
                )
                readable = first_over(samples, TARGET * (1 + TOLERANCE), window_s=self.args.window, since=at)
                steps.append(
                    {
                        "clients": clients,
                        "needed_replicas": needed_replicas(clients),
                        "replicas": self.replicas(),
                        "queue_per_pod": _round(queue),
                        "first_patch_s": round(changes[0].at - at, 2) if changes else None,
                        "decision_latency_from_window_s": _since(readable, changes[0].at)
                        if changes
                        else None,
                        "windowed_read_over_s": _since(at, readable),
                        # what each evaluation up to the first patch read and decided, to tell a late
                        # decision (a step limit, the window) from a late read
                        "evaluations": [
                            {**e, "at": round(e["at"] - at, 1)}
                            for e in recorder.evaluations(at, changes[0].at if changes else time.time())
                        ],
                    }
                )
                log(f"ramp: {steps[-1]}")
            stopped = time.time()
        wait(
            lambda: self.replicas() == MIN_REPLICAS and self.serving(), self.args.scale_down_window + 120,
            "the scale-in after the ramp",
        )  # fmt: skip
        loaded = [c for c in recorder.changes(since=started) if c.at <= stopped]
        top = max(c.after for c in loaded) if loaded else MIN_REPLICAS
        return {
            "steps": steps,
            "needed_replicas": needed_replicas(RAMP_TOP),
            "max_replicas_reached": top,
            "overshoot_replicas": top - needed_replicas(RAMP_TOP),
            "queue_per_pod_at_top": steps[-1]["queue_per_pod"],
            **_under_load(loaded),
        }


def scrape_health(prometheus: PromReader, namespace: str, seconds: float) -> dict:
    """How the runtime pods' scrapes went (1 s interval, so 1 s timeout): failed ones leave gaps in the queue."""
    match, span = f'namespace="{namespace}"', f"{math.ceil(seconds)}s"

    def value(expr: str) -> float | None:
        result = prometheus.query(expr)
        return round(float(result[0]["value"][1]), 3) if result else None

    return {
        "scrapes": value(f"sum(count_over_time(up{{{match}}}[{span}]))"),
        "failed_scrapes": value(
            f"sum(count_over_time(up{{{match}}}[{span}]) - sum_over_time(up{{{match}}}[{span}]))"
        ),
        "scrape_duration_p99_s": value(
            f"max(quantile_over_time(0.99, scrape_duration_seconds{{{match}}}[{span}]))"
        ),
        "scrape_duration_max_s": value(f"max(max_over_time(scrape_duration_seconds{{{match}}}[{span}]))"),
    }


def _under_load(changes: list[ScaleChange]) -> dict:
    directions = [1 if c.after > c.before else -1 for c in changes]
    return {
        "scale_changes": [[c.before, c.after] for c in changes],
        "extra_scale_ups_while_pods_load": sum(c.after > c.before and c.starting > 0 for c in changes),
        "scale_downs_under_load": directions.count(-1),
        "direction_changes_under_load": sum(a != b for a, b in zip(directions, directions[1:], strict=False)),
    }


def _since(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round(end - start, 2)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _median(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(values), 2) if values else None


def run(cluster, args: argparse.Namespace, workdir: Path) -> dict:
    model_dir = write_tiny_checkpoint(workdir / "tiny-qwen3-moe")
    namespace = fresh_namespace(cluster)
    prometheus = PromReader(cluster.prometheus_url)
    operator = OperatorUnderTest(
        cluster.kubeconfig, workdir, ["--namespace", namespace, "--prometheus-url", prometheus.url]
    )
    bench = Bench(cluster, namespace, prometheus, args)
    body = autoscaled_md(
        MD, model_dir, min_replicas=MIN_REPLICAS, max_replicas=MAX_REPLICAS, max_batch_sequences=MAX_BATCH,
        target=TARGET, interval_s=args.interval, window_s=args.window, scale_down_window_s=args.scale_down_window,
    )  # fmt: skip
    try:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))
        with Recorder(Models(cluster, namespace), MD, period=0.1) as recorder:
            cpu_before, clock_before = operator.cpu_seconds(), time.monotonic()
            steps = [bench.step(recorder, i) for i in range(args.repeats)]
            ramp = bench.ramp(recorder)
            elapsed = time.monotonic() - clock_before
            cpu = (operator.cpu_seconds() - cpu_before) / elapsed
        problems = operator.log_problems()
        scrapes = scrape_health(prometheus, namespace, elapsed)
    finally:
        operator.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    keys = [k for k in steps[0] if isinstance(steps[0][k], int | float) or steps[0][k] is None]
    median = {key: _median(steps, key) for key in keys}
    extra = sum(r["extra_scale_ups_while_pods_load"] for r in [*steps, ramp])
    flapping = sum(r["direction_changes_under_load"] + r["scale_downs_under_load"] for r in [*steps, ramp])
    latency = median["decision_latency_from_window_s"]
    return {
        "config": {
            "interval_seconds": args.interval,
            "metric_window_seconds": args.window,
            "scale_down_window_seconds": args.scale_down_window,
            "target_queue_depth": TARGET,
            "max_batch_sequences": MAX_BATCH,
            "step_clients": CLIENTS_STEP,
            "ramp_clients": list(range(RAMP_STEP, RAMP_TOP + 1, RAMP_STEP)),
            "replicas": [MIN_REPLICAS, MAX_REPLICAS],
            "prometheus_scrape_interval_seconds": 1,
            "recorder_poll_seconds": 0.1,
        },
        "repeats": args.repeats,
        "step_median": median,
        "ramp": ramp,
        "goals": {
            # the windowed read is what the operator can act on; the recorder sees the patch within its poll
            "scale_out_within_one_interval_of_the_windowed_read": latency is not None
            and latency <= args.interval + 0.1,
            "no_extra_scale_ups_while_pods_load": extra == 0,
            "no_flapping_under_steady_load": flapping == 0,
            "scale_in_not_before_the_window": all(
                (r["scale_in_after_window_end_s"] or 0) >= 0 for r in steps
            ),
        },
        "operator_cpu_cores": round(cpu, 3),
        **scrapes,
        **problems,
        "step_runs": steps,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one step repetition, shorter holds")
    parser.add_argument("--repeats", type=int, help="load step repetitions (default 3; 1 with --quick)")
    parser.add_argument("--interval", type=int, default=3, help="spec.autoscaling.intervalSeconds")
    parser.add_argument("--window", type=int, default=3, help="spec.autoscaling.metricWindowSeconds")
    parser.add_argument(
        "--scale-down-window", type=int, default=20, help="scaleDown.stabilizationWindowSeconds"
    )
    parser.add_argument("--state-dir", type=Path, help="a running `make cluster-up` stack to use")
    args = parser.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.hold = 10 if args.quick else 30
    args.ramp_hold = 25 if args.quick else 40
    with tempfile.TemporaryDirectory(prefix="bench-autoscale-load-") as tmp:
        workdir = Path(tmp)
        result = on_local_stack(args.state_dir, workdir, lambda cluster: run(cluster, args, workdir))
    machine.print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
