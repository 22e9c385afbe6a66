"""A ModelDeployment and its reconcile pass against the in-memory API server, with the measurement loop's store
filled by the test: the shared harness of the reconcile tests."""

from __future__ import annotations

from moe_operator.decisions.adapters import AdapterRead
from moe_operator.decisions.analysis import due_windows
from moe_operator.decisions.measurements import subject
from moe_operator.decisions.policy import Policy
from moe_operator.decisions.promdata import Measurement, NoData, PodSamples, TrackWindow
from moe_operator.decisions.scaling import QueueRead, RouterRead
from moe_operator.decisions.spec import parse_spec
from moe_operator.decisions.stats import Distribution
from moe_operator.machinery.errors import StaleRead
from moe_operator.measure.store import Measurements
from moe_operator.reconcile.reconciler import Reconciler
from tests.unit.operator.fake_api import Events, FakeApi
from tests.unit.operator.samples import OWNER, spec

NS, NAME = OWNER.namespace, OWNER.name
KEY = (NS, NAME)
OPEN_POLICY = Policy(
    allowed_source_kinds=("*",), allowed_host_path_prefixes=("*",), allowed_image_prefixes=("*",)
)
T0 = 1_800_000_000.0
AUTOSCALING = {
    "enabled": True,
    "targetQueueDepth": 4,
    "intervalSeconds": 10,
    "scaleUp": {"stabilizationWindowSeconds": 0, "maxPods": 4, "periodSeconds": 10},
    "scaleDown": {"stabilizationWindowSeconds": 60, "maxPods": 1, "periodSeconds": 10},
}
# an SLO whose analysis ends quickly: 2 windows of 10 s, read 2 s after they end
FAST_SLO = {
    "p99LatencySeconds": 1.0,
    "analysisIntervalSeconds": 10,
    "scrapeIntervalSeconds": 1,
    "measurements": 2,
}


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now


def track(latency_s: float, requests: int = 40, errors: int = 0) -> TrackWindow:
    """A track whose every request took `latency_s` (a tenth of it to the first token)."""
    return TrackWindow(
        latency=Distribution.of_samples([latency_s] * requests),
        ttft=Distribution.of_samples([latency_s / 10] * requests),
        tpot=Distribution.of_samples([latency_s / 100] * requests),
        outcomes={"200": float(requests - errors), **({"500": float(errors)} if errors else {})},
        oldest_in_flight_s=0.0,
        pods=1,
    )


GOOD = Measurement(0, track(0.2), track(0.2), track(0.2), track(0.2))
BAD = Measurement(0, track(5.0), track(5.0), track(0.2), track(0.2))
DOWN = NoData("PrometheusUnavailable", "connection refused")


class World:
    def __init__(self, policy=OPEN_POLICY, measuring=True, **md_spec):
        self.api = FakeApi()
        self.events = Events()
        self.clock = Clock()
        self.measurements = Measurements()
        self.policy = policy
        self.measuring = measuring
        self.reconciler = self._reconciler()
        self.queue_answer: PodSamples | NoData | None = None  # read at every tick while autoscaling is on
        self.api.put(
            {
                "apiVersion": "moedeploy.dev/v1alpha1",
                "kind": "ModelDeployment",
                "metadata": {"name": NAME, "namespace": NS, "uid": OWNER.uid},
                "spec": spec(**{"replicas": 2, **md_spec}),
            }
        )

    def _reconciler(self):
        return Reconciler(
            self.api, self.api.cache, self.events, policy=lambda: self.policy, measurements=self.measurements,
            measuring=self.measuring, clock=self.clock,
        )  # fmt: skip

    def restart(self):
        """A new operator: all it knows is the status (measurements are taken again)."""
        self.measurements = Measurements()
        self.reconciler = self._reconciler()

    def reconcile(self):
        """One pass; a stale read is retried at once, as the workers do."""
        for _ in range(5):
            try:
                return self.reconciler.reconcile(NS, NAME)
            except StaleRead:
                continue
        raise AssertionError("stale five times in a row")

    def tick(self, seconds=10):
        """Time passes; the measurement loop reads the queue (when it would); one pass."""
        self.clock.now += seconds
        if self.queue_answer is not None and parse_spec(self.md()["spec"]).autoscaling.enabled:
            self.read_queue(self.queue_answer)
        return self.reconcile()

    # ---- what the measurement loop would have read --------------------------------------------------------

    def read_queue(self, samples):
        self.measurements.put_queue(KEY, QueueRead(self.clock.now, samples))

    def read_routers(self, demand):
        self.measurements.put_routers(KEY, RouterRead(self.clock.now, demand))

    def read_adapters(self, states):
        self.measurements.put_adapters(KEY, AdapterRead(self.clock.now, states))

    def measure(self, measurement=GOOD) -> int:
        """Every window of the running analysis that is measurable now gets `measurement`; how many."""
        running = subject(parse_spec(self.md()["spec"]), self.status())
        if running is None:
            return 0
        due = due_windows(running.state, running.policy, self.clock.now)
        for window in due:
            self.measurements.put_window(KEY, running.candidate, window.index, measurement)
        return len(due)

    def analyse_until(self, measurement=GOOD, phase_gone=("Analyzing", "Holding"), limit=40):
        """Time passes in analysis windows, each measured as `measurement`, until the canary leaves `phase_gone`."""
        for _ in range(limit):
            canary = self.status().get("canary")
            if canary is None or canary["phase"] not in phase_gone:
                return
            running = subject(parse_spec(self.md()["spec"]), self.status())
            self.clock.now += running.policy.interval_s if running else 5
            self.measure(measurement)
            self.reconcile()
        raise AssertionError(f"still {self.status().get('canary')} after {limit} steps")

    # ---- reading the world ---------------------------------------------------------------------------------

    def md(self):
        return self.api.get_obj("ModelDeployment", NS, NAME)

    def status(self):
        return self.md().get("status", {})

    def condition(self, kind):
        return next(c for c in self.status()["conditions"] if c["type"] == kind)

    def change_spec(self, **fields):
        md = self.md()
        md["spec"] = spec(**{"replicas": 2, **fields})
        self.api.put(md)

    def deployment(self, track="stable"):
        return self.api.get_obj("Deployment", NS, NAME if track == "stable" else f"{NAME}-canary")

    def replicas(self):
        return self.deployment()["spec"]["replicas"]

    def settle(self, track="stable", ready=None):
        self.api.deployment_controller_catches_up(NAME if track == "stable" else f"{NAME}-canary", NS, ready)

    def ready_pods(self, count, track="stable", revision=None):
        names = []
        for i in range(count):
            labels = {
                "app.kubernetes.io/name": "moe-runtime",
                "moedeploy.dev/model-deployment": NAME,
                "moedeploy.dev/track": track,
                **({"moedeploy.dev/revision": revision} if revision else {}),
            }
            name = f"{NAME}-{track}-{i}" if track != "stable" else f"{NAME}-{i}"
            self.api.put(
                {"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": name, "namespace": NS, "labels": labels, "creationTimestamp": "2020-01-01T00:00:00Z"},
                 "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
            )  # fmt: skip
            names.append(name)
        return names
