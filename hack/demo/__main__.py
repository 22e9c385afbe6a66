"""`make demo`: the whole loop on one machine, in a few minutes.

    python hack/demo [--quick] [--keep] [--state-dir .cluster] [--out demo-output]

On the local stack (real control plane, a local kubelet running every pod as a real runtime process, a real
Prometheus), with the chart installed by Helm and the operator running with the chart's identity, it:
  1. applies a ModelDeployment with autoscaling and an SLO, and waits until it serves;
  2. answers one chat request through its status.url (its router, reached through the stack's Service proxy);
  3. drives load: the queue rises, the operator scales out, the queue drains;
  4. applies a bad revision under that load: judged against the stable track in the same windows, its canary
     breaks the SLO and is rolled back, no request fails;
  5. applies a good revision: it is promoted, and bakes;
  6. stops the load: the operator scales back in;
then prints a summary (each step, its duration, the figures behind the decisions, all read from Prometheus
and the status), writes a picture and a timeline, and stops everything it started (Ctrl-C too).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "hack"))

import httpx  # noqa: E402
import manifests  # noqa: E402
import plot  # noqa: E402
import stack  # noqa: E402
from figures import Recorder  # noqa: E402
from kubernetes import client, config  # noqa: E402
from stack import say  # noqa: E402

from moe_operator.io.prometheus import Prometheus  # noqa: E402
from moe_runtime.tools.loadgen import LoadConfig, LoadGenerator, Shape  # noqa: E402

NS, NAME = manifests.NAMESPACE, manifests.NAME
BOLD, RESET = "\033[1m", "\033[0m"


@dataclass
class Step:
    name: str
    started: float
    ended: float = 0.0
    ok: bool = False
    figures: dict = field(default_factory=dict)


class Failed(Exception):
    pass


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.steps: list[Step] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="moedeploy-demo-"))
        self.out = args.out.resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.cluster = self.operator = self.recorder = self.load = None
        self.started_stack = False

    # ---- the loop ----------------------------------------------------------------------------------------

    def run(self) -> None:
        self._step("Local stack: control plane, local kubelet, Prometheus", self._stack)
        self._step("helm install the chart; the operator runs with its ServiceAccount", self._install)
        self.t0 = time.time()
        self._step("1. kubectl apply a ModelDeployment with autoscaling and an SLO", self._apply_first)
        self._step("2. one chat request through status.url (the router)", self._chat)
        self._step("3. load: the queue rises, the operator scales out, the queue drains", self._scale_out)
        self._step("4. a bad revision under load: judged against the stable track, rolled back", self._bad)
        self._step("5. a good revision: analysed, promoted, baked", self._good)
        self._step("6. the load stops: the operator scales back in", self._scale_in)

    def _stack(self, step: Step) -> None:
        self.cluster, self.started_stack = stack.cluster(self.args.state_dir.resolve())
        self.kubectl(
            "get",
            "nodes",
            "-o",
            "custom-columns=NODE:.metadata.name,GPUS:.status.allocatable.nvidia\\.com/gpu",
        )

    def _install(self, step: Step) -> None:
        self.cluster.kubectl(
            "create", "namespace", NS, check=False
        )  # the chart grants the operator a Role there
        stack.helm_install(self.cluster, manifests.chart_values(str(self.workdir)), self.workdir)
        self.operator = stack.Operator(self.cluster, self.workdir)
        say(f"  python -m moe_operator {' '.join(self.operator.args)}  (log: {self.operator.log_path})")
        self.checkpoint = stack.checkpoint(self.workdir / "qwen3-moe-demo")
        # the bad revision: a deeper and wider model of the same family (16 ms a token against 1 ms here), with
        # batching off. A deeper model alone was not enough: a tiny model's time per token is mostly the server's
        # own overhead, and under load its p99 came out only twice the stable one's, inside the SLO's margin.
        self.slow_checkpoint = stack.checkpoint(self.workdir / "qwen3-moe-demo-deep", layers=24, hidden=256)
        api = config.new_client_from_config(config_file=str(self.cluster.kubeconfig))
        prometheus_url = self.cluster.prometheus_url
        self.recorder = Recorder(
            Prometheus(prometheus_url), client.CustomObjectsApi(api), client.CoreV1Api(api), NS, NAME
        )

    def _apply_first(self, step: Step) -> None:
        self.apply(manifests.model_deployment(str(self.checkpoint)))
        self.recorder.start()
        status = self.wait(lambda s: s.get("readyReplicas", 0) >= 1 and self.settled(s), 240, "serving")
        step.figures = {"revision": status["stableRevision"], "ready": status["readyReplicas"]}

    def _chat(self, step: Step) -> None:
        url = self.service_url()
        body = {"model": NAME, "messages": [{"role": "user", "content": "Which experts answer today?"}],
                "max_tokens": 16, "temperature": 0}  # fmt: skip
        answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()
        say(f"  POST {url}/v1/chat/completions -> {answer['choices'][0]['message']['content']!r}")
        say("  (random weights: the words are noise, the machinery is real)")
        step.figures = {"completion_tokens": answer["usage"]["completion_tokens"]}

    def _scale_out(self, step: Step) -> None:
        concurrency = 10 if self.args.quick else 12
        self.load = LoadGenerator(
            LoadConfig(service_url=self.status()["url"], services_file=self.cluster.services_file,
                       concurrency=concurrency, duration_s=1800, mix=(Shape(12, 24),), timeout_s=120, temperature=0)
        )  # fmt: skip
        self._load_context = self.load.background()
        self._load_context.__enter__()
        say(f"  loadgen: {concurrency} clients in a closed loop through {self.status()['url']} (the router)")
        self.wait(lambda s: s.get("desiredReplicas", 1) >= 2, 120, "a scale-out")
        status = self.wait(
            lambda s: s.get("readyReplicas", 0) >= s.get("desiredReplicas", 9) >= 2 and self.queue_per_pod() <= manifests.TARGET_QUEUE,
            240,
            "the new pods to serve and the queue to drain",
        )  # fmt: skip
        samples = self.recorder.between(step.started, time.time())
        step.figures = {
            "max_queue_waiting": max((s.queue or 0 for s in samples), default=0),
            "queue_target_per_pod": manifests.TARGET_QUEUE,
            "replicas": f"1 -> {status['desiredReplicas']}",
            "queue_per_pod_now": round(self.queue_per_pod(), 1),
        }

    def _bad(self, step: Step) -> None:
        before = self.stable_template()
        say(
            "  the SLO: the canary at most 1.5x the stable track, both measured in the same windows under this load"
        )
        say(
            "  the new revision serves a much deeper and wider checkpoint, with batching off: many times slower"
        )
        self.apply(manifests.model_deployment(str(self.slow_checkpoint), maxBatchSequences=1))
        status = self.wait(
            lambda s: bool(s.get("rejectedRevisions")) and "canary" not in s, 300, "the rollback"
        )
        rejected = status["rejectedRevisions"][-1]
        unchanged = self.stable_template() == before
        if not unchanged:
            raise Failed("the stable Deployment's template changed while the canary was analysed")
        deciding = (rejected.get("measurements") or [{}])[-1]
        say(f"  {rejected['reason']}: {rejected['message'][:300]}")
        step.figures = {
            "rejected": rejected["revision"],
            "reason": rejected["reason"],
            "rule": deciding.get("rule"),
            "canary_p99": (deciding.get("canary") or {}).get("p99LatencySeconds"),
            "stable_p99": (deciding.get("stable") or {}).get("p99LatencySeconds"),
            "stable_template_unchanged": unchanged,
        }

    def _good(self, step: Step) -> None:
        self.apply(manifests.model_deployment(str(self.checkpoint), maxQueue=200))
        self.wait(
            lambda s: s.get("canary", {}).get("phase") in ("Analyzing", "Promoting", "Baking"),
            600,  # a pod's start takes seconds here, minutes on a machine busy with other work
            "the canary's analysis",
        )
        self.wait(
            lambda s: s.get("canary", {}).get("phase") == "Baking" or self.settled(s), 600, "the promotion"
        )
        say("  promoted; it bakes: judged a little longer against the previous revision's figures")
        status = self.wait(
            lambda s: self.settled(s) and s.get("readyReplicas", 0) >= s.get("desiredReplicas", 9),
            600,
            "the bake",
        )
        canary_p99 = [s.p99_canary for s in self.recorder.between(step.started, time.time()) if s.p99_canary]
        step.figures = {
            "promoted": status["stableRevision"],
            "canary_p99": round(statistics.median(canary_p99), 3) if canary_p99 else None,
            "stable_p99": round(self.stable_p99(), 3),
        }

    def _scale_in(self, step: Step) -> None:
        self._load_context.__exit__(None, None, None)
        summary = self.load.result or self.load.summary()
        say(f"  loadgen: {summary.get('requests')} requests, errors {summary.get('errors')}")
        before = self.status().get("desiredReplicas")
        self.wait(
            lambda s: s.get("desiredReplicas") == 1 and s.get("readyReplicas") == 1, 180, "the scale-in"
        )
        step.figures = {"replicas": f"{before} -> 1", "requests": summary.get("requests"),
                        "failed_requests": _failed(summary)}  # fmt: skip
        self.load_summary = summary
        if _failed(summary):
            raise Failed(f"{_failed(summary)} requests failed: {summary.get('errors')}")

    # ---- helpers ---------------------------------------------------------------------------------------

    def _step(self, name: str, body) -> None:
        step = Step(name, time.time())
        self.steps.append(step)
        say(f"\n{BOLD}== {name}{RESET}")
        body(step)
        step.ended, step.ok = time.time(), True
        if self.recorder is not None and step.name[0].isdigit():
            self.kubectl("get", "md", "-n", NS)
            self.show_events(step.started)

    def kubectl(self, *args: str) -> None:
        say(self.cluster.kubectl(*args).stdout.rstrip())

    def apply(self, body: dict) -> None:
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
        source = body["spec"]["model"]["source"]["hostPath"]["path"]
        batching = json.dumps(body["spec"]["runtime"]["batching"])
        say(f"  kubectl apply -f {NAME}.yaml  (model {Path(source).name}, batching {batching})")

    def status(self) -> dict:
        return self.recorder.status()

    @staticmethod
    def settled(status: dict) -> bool:
        return (
            bool(status.get("stableRevision"))
            and status.get("stableRevision") == status.get("currentRevision")
            and "canary" not in status
        )

    def wait(self, done, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if done(status):
                return status
            time.sleep(1)
        raise Failed(f"no {what} within {timeout:.0f}s; status: {json.dumps(self.status())[:1500]}")

    def service_url(self, timeout: float = 60) -> str:
        """status.url as this machine reaches it (the stack's Service proxy), once the router is Ready there."""
        from moe_runtime.tools.loadgen import service_address

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = service_address(json.loads(self.cluster.services_file.read_text()), self.status()["url"])
            try:
                if found and httpx.get(f"{found[0]}/ready", timeout=2).status_code == 200:
                    return found[0]
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise Failed(f"{self.status().get('url')} did not answer through the Service proxy in {timeout:.0f}s")

    def queue_per_pod(self) -> float:
        ready = max(1, self.status().get("readyReplicas", 1))
        return (self.recorder.queue() or 0) / ready

    def stable_p99(self) -> float:
        recent = [s.p99_stable for s in self.recorder.samples[-8:] if s.p99_stable]
        return (
            statistics.median(recent) if recent else self.recorder.p99(self.status()["stableRevision"]) or 0.5
        )

    def stable_template(self) -> dict:
        deployment = json.loads(
            self.cluster.kubectl("get", "deployment", NAME, "-n", NS, "-o", "json").stdout
        )
        return deployment["spec"]["template"]

    def show_events(self, since: float) -> None:
        for at, kind, reason, message in self.recorder.events():
            if at >= since - 1:
                say(f"  {time.strftime('%H:%M:%S', time.localtime(at))} {kind:7} {reason:18} {message[:110]}")

    # ---- the end -------------------------------------------------------------------------------------------

    def report(self) -> None:
        say(f"\n{BOLD}== Summary{RESET}")
        say(f"{'step':<76} {'seconds':>8}  figures")
        for step in self.steps:
            figures = ", ".join(f"{k}={v}" for k, v in step.figures.items())
            mark = "" if step.ok else "  (FAILED)"
            say(
                f"{step.name[:76]:<76} {step.ended - step.started if step.ended else 0:8.1f}  {figures}{mark}"
            )
        timeline = {
            "steps": [vars(step) for step in self.steps],
            "load": getattr(self, "load_summary", None),
            "events": self.recorder.events() if self.recorder else [],
            "ok": all(step.ok for step in self.steps) and len(self.steps) == 8,
            "workdir": str(self.workdir),
            "state_dir": str(self.args.state_dir.resolve()),
        }
        (self.out / "timeline.json").write_text(json.dumps(timeline, indent=2, default=str))
        if self.recorder is not None:
            self.recorder.stop()
        if self.recorder is not None and self.recorder.samples:
            picture = plot.draw(self.recorder.samples, self.recorder.events(), self.t0, self.out / "demo.png")
            say(f"\nthe picture: {picture}")
        say(f"the timeline: {self.out / 'timeline.json'}")

    def cleanup(self) -> None:
        if (
            self.load is not None
            and getattr(self, "_load_context", None) is not None
            and self.load.result is None
        ):
            self.load.abandon()
            self._load_context.__exit__(None, None, None)
        if self.recorder is not None:
            self.recorder.stop()
        if self.args.keep:
            say(
                f"--keep: left running; `make cluster-down` stops the stack (operator log {self.operator.log_path})"
            )
            return
        if self.cluster is not None:
            self.cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)
        if self.operator is not None:
            self.operator.stop()
        if self.started_stack:
            self.cluster.down()
        subprocess.run(["rm", "-rf", str(self.workdir)], check=False)


def _failed(summary: dict) -> int:
    return (
        sum((summary.get("errors") or {}).values())
        if isinstance(summary.get("errors"), dict)
        else int(summary.get("errors") or 0)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="lighter load (the test's mode)")
    parser.add_argument(
        "--keep", action="store_true", help="leave the stack, the operator and the model running"
    )
    parser.add_argument("--state-dir", type=Path, default=ROOT / ".cluster")
    parser.add_argument("--out", type=Path, default=ROOT / "demo-output")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    demo = Demo(args)
    code = 0
    try:
        demo.run()
    except (Failed, KeyboardInterrupt) as err:
        say(f"\ndemo stopped: {err or 'interrupted'}")
        code = 1
    except Exception as err:
        say(f"\ndemo failed: {type(err).__name__}: {err}")
        code = 1
    finally:
        try:
            demo.report()
        finally:
            demo.cleanup()
    return code


if __name__ == "__main__":
    sys.exit(main())
