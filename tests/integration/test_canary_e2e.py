"""Canary analysis and automatic rollback end to end, every part real: the local stack's control plane, runtime
pods as processes on the local kubelet's node, Prometheus scraping them through targets.json, the operator as
a process, steady load from the load generator spreading requests over the Ready pods as a Service does, and a
CPU burner beside it all (a decision made from measurements must hold on a busy machine).

Each bad revision is bad in its own way (runtime/moe_runtime/faults.py, or an adapter it cannot load) and is
rolled back with the stable Deployment never touched and no client request failing; a good one (the same model
with another seed) is promoted and bakes, across an operator restart; one that passes its canary and breaks while
baking is rolled back to the previous stable revision. The canary is judged against the stable track in the same
windows (maxRelativeIncrease), never against a latency measured beforehand.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_api_client import PrometheusConnect

from tests.burner import cpu_burner
from tests.integration.autoscale_support import PrivatePrometheus
from tests.integration.canary_stack import (
    ANALYSIS,
    LOAD_CONCURRENCY,
    LOAD_MIX,
    SLOWER_PER_TOKEN,
    DeploymentHistory,
    SteadyLoad,
    canary_gone,
    canary_md,
    condition,
    events,
    faulty,
    metric,
    new_revision,
    operator_metrics,
    rejected,
    requests_of,
    scraped_revisions,
    template_revision,
)
from tests.integration.local_stack import START_TIMEOUT_S, targets, write_tiny_checkpoint
from tests.integration.lora_support import peft_adapter
from tests.integration.operator_support import Models, OperatorProcess
from tests.integration.runtime_server.harness import free_port
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WINDOW_S = ANALYSIS["analysisIntervalSeconds"]
# a canary's pod starting, then its analysis; a promotion adds the stable Deployment's rolling update
DECIDED_S = START_TIMEOUT_S + 30 * WINDOW_S
PROMOTED_S = DECIDED_S + START_TIMEOUT_S
LAYERS = 4


@pytest.fixture(scope="module", autouse=True)
def busy_machine() -> Iterator[None]:
    with cpu_burner():
        yield


@dataclass
class Operator:
    process: OperatorProcess
    metrics_port: int

    def metrics(self) -> dict:
        return operator_metrics(self.metrics_port)


@dataclass
class Seen:
    """What polling saw while a canary ran."""

    canary_urls: set[str] = field(default_factory=set)
    scraped: set[str] = field(default_factory=set)
    windows: dict[float, dict] = field(default_factory=dict)  # analysis outcomes by window end
    phases: list[str] = field(default_factory=list)
    progress: list[tuple[str, int]] = field(default_factory=list)  # (phase, windows counted) at each poll
    autoscaling: set[str] = field(default_factory=set)  # the autoscaler's reasons while a canary ran

    def observe(self, cluster, models, prom, name: str, md: dict | None) -> None:
        status = (md or {}).get("status") or {}
        canary = status.get("canary")
        if canary:
            if not self.phases or self.phases[-1] != canary["phase"]:
                self.phases.append(canary["phase"])
            if "reason" in (status.get("autoscaling") or {}):
                self.autoscaling.add(status["autoscaling"]["reason"])
            analysis = canary.get("analysis") or {}
            self.progress.append((canary["phase"], analysis.get("measuredUntil", 0)))
            for outcome in analysis.get("recent") or ():
                self.windows[outcome["at"]] = outcome
        for pod, entry in targets(cluster.targets_file, models.namespace, name).items():
            if pod.startswith(f"{name}-canary-"):
                self.canary_urls.add(f"http://{entry['targets'][0]}")
        self.scraped |= scraped_revisions(prom, models.namespace, name)

    def kinds(self) -> list[str]:
        return [w["kind"] for _, w in sorted(self.windows.items())]


@dataclass
class Rollout:
    before: str
    after: str
    md: dict
    load: dict
    seen: Seen
    history: list
    took_s: float  # from the spec change to the decision


def delete_and_wait(models, name: str) -> None:
    """Deletes `name` and waits for its pods to be gone; first prints its status and events (pytest shows
    them when a test failed)."""
    print(models.kubectl("get", "md", name, "-o", "yaml", check=False).stdout)
    print(models.kubectl("get", "events", "--sort-by=.lastTimestamp", check=False).stdout[-6000:])
    models.kubectl("delete", "md", name, "--ignore-not-found", "--wait=true", "--timeout=60s")
    wait_for(lambda: not models.pods(name), timeout=90, what=f"the pods of {name} to be gone")


def wait_warm(prom, models, name: str, requests: int = 10) -> None:
    wait_for(
        lambda: requests_of(prom, models.namespace, name, WINDOW_S) >= requests,
        timeout=90, what=f"the load on {name} to show in Prometheus",
    )  # fmt: skip


def start_operator(cluster, namespace: str, prometheus_url: str, workdir: Path) -> Operator:
    port = free_port()
    process = OperatorProcess(
        cluster,
        ["--namespace", namespace, "--prometheus-url", prometheus_url, "--metrics-port", str(port)],
        workdir / f"operator-{uuid.uuid4().hex[:6]}.log",
    )
    process.start()
    wait_for(lambda: operator_metrics(port), timeout=60, what="the operator's /metrics")
    return Operator(process, port)


# ---- fixtures --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("canary") / "tiny-qwen3-moe", LAYERS, seed=1)


@pytest.fixture(scope="module")
def other_seed_dir(tmp_path_factory) -> Path:
    """The same model with other random weights: as fast, a new revision."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("canary") / "tiny-qwen3-moe-b", LAYERS, seed=2)


@pytest.fixture(scope="module")
def adapter_dir(model_dir, tmp_path_factory) -> Path:
    return peft_adapter(model_dir, tmp_path_factory.mktemp("adapter") / "sql", seed=3, experts=False, r=8)


@pytest.fixture(scope="module")
def load_logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("load")


@pytest.fixture(scope="module")
def prom(cluster) -> PrometheusConnect:
    return PrometheusConnect(url=cluster.prometheus_url, disable_ssl=True)


@pytest.fixture(scope="module")
def operator(cluster, md_namespace, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("operator")
    holder = {"running": start_operator(cluster, md_namespace, cluster.prometheus_url, workdir)}

    def restart() -> None:
        holder["running"].process.stop()
        holder["running"] = start_operator(cluster, md_namespace, cluster.prometheus_url, workdir)

    holder["restart"] = restart
    yield holder
    holder["running"].process.stop()
    print(holder["running"].process.log()[-5000:])


def steady_load(
    cluster, models, name: str, logs: Path, concurrency=LOAD_CONCURRENCY, mix=LOAD_MIX
) -> SteadyLoad:
    log = logs / f"{models.namespace}-{name}-{uuid.uuid4().hex[:6]}.log"
    return SteadyLoad(cluster.targets_file, models.namespace, name, log, concurrency, mix)


def roll(
    cluster, models, prom, logs, name: str, patch: dict, decided: Callable[[dict, str], bool],
    mix: str = LOAD_MIX, during: Callable[[dict], None] | None = None, timeout: float = DECIDED_S,
) -> Rollout:  # fmt: skip
    """Under steady load, changes the spec of `name` by `patch` and waits until `decided(md, revision)`;
    `during(md)` runs at every poll meanwhile."""
    before = models.get(name)["status"]["stableRevision"]
    seen = Seen()
    with (
        DeploymentHistory(models.apps, models.namespace, name) as history,
        steady_load(cluster, models, name, logs, mix=mix) as load,
    ):
        wait_warm(prom, models, name)
        changed = time.monotonic()
        models.patch_spec(name, patch)
        after = new_revision(models, name, before)

        def done() -> dict | None:
            md = models.get(name)
            seen.observe(cluster, models, prom, name, md)
            if during is not None:
                during(md)
            return md if decided(md, after) else None

        try:
            md = wait_for(done, timeout=timeout, interval=0.5, what=f"revision {after} of {name} decided")
        except AssertionError as undecided:
            last = (models.get(name) or {}).get("status") or {}
            raise AssertionError(
                f"{undecided}; phases {seen.phases}, windows {seen.kinds()}, canary {last.get('canary')}, "
                f"conditions {last.get('conditions')}"
            ) from None
        took = time.monotonic() - changed
    print(f"{name}: {before} -> {after} decided in {took:.0f}s; windows {seen.kinds()}; phases {seen.phases}")
    return Rollout(before, after, md, load.result, seen, history.versions, took)


def rolled_back_and_gone(cluster, models, name: str) -> Callable[[dict, str], bool]:
    return lambda md, after: bool(
        rejected(md, after) and "canary" not in md["status"] and canary_gone(cluster, models, name)
    )


def promoted_and_baked(cluster, models, name: str) -> Callable[[dict, str], bool]:
    def done(md: dict, after: str) -> bool:
        entry = rejected(md, after)
        assert entry is None, f"the good revision {after} was rejected: {entry}"
        stable = models.deployment(name)
        return (
            md["status"].get("stableRevision") == after
            and "canary" not in md["status"]
            and template_revision(stable) == after
            and stable["status"].get("updatedReplicas") == stable["status"].get("readyReplicas") == 1
            and canary_gone(cluster, models, name)
        )

    return done


def untouched(history: list, revision: str) -> bool:
    """The stable Deployment was never changed: one template, at `revision`, from before to after."""
    templates = {str(version[1]) for version in history if version is not None}
    return (
        len(templates) == 1
        and None not in history
        and history[0][1]["metadata"]["labels"]["moedeploy.dev/revision"] == revision
    )


# ---- bad revisions of every kind, against one stable track ---------------------------------------------------


@pytest.fixture(scope="module")
def stable_md(models, operator, model_dir, adapter_dir):
    """A ModelDeployment whose stable track serves the model and a LoRA adapter of rank 8."""
    body = canary_md("canary", model_dir)
    body["spec"]["adapters"] = [{"name": "sql", "source": {"hostPath": {"path": str(adapter_dir)}}}]
    models.apply(body)
    models.wait_ready("canary", replicas=1, timeout=START_TIMEOUT_S)
    yield "canary"
    delete_and_wait(models, "canary")


def runtime(*faults: str, max_lora_rank: int = 16) -> dict:
    """A whole runtime patch (a merge patch keeps what it does not name): these faults, this adapter rank."""
    return (
        {**faulty(*faults), "maxLoraRank": max_lora_rank}
        if faults
        else {"args": [], "maxLoraRank": max_lora_rank}
    )


BAD = [
    # (kind, spec patch, load mix, rejection reason, rules any of which may condemn it)
    ("slower per token", {"runtime": runtime(SLOWER_PER_TOKEN)}, LOAD_MIX, "SLOBreached", ("Relative",)),
    (
        "slow only on long prompts",
        {"runtime": runtime("long_prompt=40:1.5")},
        "8:16:3,64:16:1",
        "SLOBreached",
        # its time to first token over the analysis, or one of its long requests still running past 1.5x the
        # stable track's slowest, whichever two windows see first
        ("Relative", "Hung"),
    ),
    ("hangs on some requests", {"runtime": runtime("hang_every=12:25")}, LOAD_MIX, "SLOBreached", ("Hung",)),
    (
        "crash-loops after some requests",
        # the analysis's own 3 windows end long before the liveness probe restarts its pod: the operator
        # stretches the analysis over the pods' liveness window
        {"runtime": runtime("unhealthy_after=3")},
        LOAD_MIX,
        "CanaryUnhealthy",
        None,
    ),
    ("fails its adapter", {"runtime": runtime(max_lora_rank=4)}, LOAD_MIX, "AdapterLoadFailed", None),
]


@pytest.mark.parametrize("kind, patch, mix, reason, rules", BAD, ids=[b[0].replace(" ", "-") for b in BAD])
def test_a_bad_revision_is_rolled_back_with_the_stable_track_untouched_and_no_request_failed(
    cluster, models, operator, prom, stable_md, load_logs, kind, patch, mix, reason, rules
):
    name = stable_md
    patch = {"slo": {"measurements": ANALYSIS["measurements"]}, **patch}
    run = roll(
        cluster, models, prom, load_logs, name, patch, rolled_back_and_gone(cluster, models, name), mix=mix
    )
    if reason == "CanaryUnhealthy":
        # a container restarted for its liveness probe stays in the endpoints while it drains and exits (as in a
        # cluster): requests sent to it meanwhile fail. Only a client that retries elsewhere (the router) hides
        # them; the stable track must have failed none
        assert set(run.load["errors_by_target"]) <= run.seen.canary_urls, run.load
    else:
        assert run.load["errors"] == {}, run.load
    assert run.after in run.seen.scraped and run.seen.canary_urls, "the canary ran and was scraped"
    assert untouched(run.history, run.before), "the stable Deployment was never changed"
    status = run.md["status"]
    assert status["stableRevision"] == run.before and status["currentRevision"] == run.after
    entry = rejected(run.md, run.after)
    assert entry["reason"] == reason, entry
    if rules is not None:
        assert any(set(rules) & set(m["rules"]) for m in entry["measurements"]), entry
        assert all("canary" in m and "stable" in m for m in entry["measurements"]), "both tracks' figures"
    degraded = condition(run.md, "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == reason
    assert "moedeploy.dev/retry" in degraded["message"]
    warning = [e for e in events(models, name, "RolledBack") if run.after in e["message"]]
    assert warning and warning[0]["type"] == "Warning"
    assert metric(operator["running"].metrics(), "moe_operator_rollbacks_total", reason=reason) >= 1


def test_a_rejected_revision_stays_rejected_across_a_restart_until_a_retry(
    cluster, models, operator, prom, stable_md, load_logs
):
    name = stable_md
    first = next(r for r in models.get(name)["status"]["rejectedRevisions"] if r["reason"] == "SLOBreached")
    operator["restart"]()  # all the new operator knows is the status
    models.patch_spec(name, {"runtime": runtime(SLOWER_PER_TOKEN)})  # the first bad revision's spec again

    def described() -> dict | None:
        md = models.get(name)
        status = md["status"]
        seen = status.get("observedGeneration") == md["metadata"]["generation"]
        return md if seen and status["currentRevision"] == first["revision"] else None

    wait_for(described, timeout=30, what="the operator to see the rejected revision again")
    deadline = time.monotonic() + 3 * WINDOW_S  # long enough for a canary to have started, were it allowed
    while time.monotonic() < deadline:
        md = models.get(name)
        assert models.deployment(f"{name}-canary") is None and "canary" not in md["status"], md["status"]
        assert condition(md, "Degraded")["reason"] == "SLOBreached"
        time.sleep(0.5)
    token = uuid.uuid4().hex[:8]
    with steady_load(cluster, models, name, load_logs) as load:
        models.kubectl("annotate", "md", name, f"moedeploy.dev/retry={token}")

        def rejected_again() -> dict | None:
            md = models.get(name)
            again = rejected(md, first["revision"])
            return (
                md if again and again["time"] > first["time"] and canary_gone(cluster, models, name) else None
            )

        md = wait_for(
            rejected_again, timeout=DECIDED_S, interval=0.5, what="the retried revision judged again"
        )
    assert md["status"]["lastHandledRetry"] == token
    assert events(models, name, "RetryRequested")
    assert load.result["errors"] == {}, load.result


# ---- good revisions, bakes, and a revision that breaks while baking ------------------------------------------


BAKE_S = 20


def test_a_good_revision_is_promoted_and_bakes_across_an_operator_restart(
    cluster, models, operator, prom, stable_md, other_seed_dir, load_logs
):
    name = stable_md
    restarted_at: list[int] = []

    def restart_once_while_baking(md: dict) -> None:
        canary = md["status"].get("canary") or {}
        measured = (canary.get("analysis") or {}).get("measuredUntil", 0)
        if canary.get("phase") == "Baking" and measured >= 1 and not restarted_at:
            restarted_at.append(measured)
            operator["restart"]()

    patch = {
        "model": {"source": {"hostPath": {"path": str(other_seed_dir)}}},
        "runtime": runtime(),
        "slo": {"bakeSeconds": BAKE_S},
    }
    run = roll(
        cluster, models, prom, load_logs, name, patch, promoted_and_baked(cluster, models, name),
        during=restart_once_while_baking, timeout=PROMOTED_S + BAKE_S,
    )  # fmt: skip
    assert run.load["errors"] == {}, run.load
    assert run.seen.phases[:2] == ["Starting", "Analyzing"], run.seen.phases
    assert {"Promoting", "Baking"} <= set(run.seen.phases), run.seen.phases
    assert "Failed" not in run.seen.kinds() and run.seen.kinds().count("Passed") >= ANALYSIS["measurements"]
    assert restarted_at, "the operator was restarted while the revision baked"
    baked = [measured for phase, measured in run.seen.progress if phase == "Baking"]
    assert baked == sorted(baked) and baked[-1] > restarted_at[0], (
        "the restarted operator went on with the bake's windows, counting none twice",
        baked,
    )
    status = run.md["status"]
    assert status["stableRevision"] == run.after and not rejected(run.md, run.after)
    assert condition(run.md, "Degraded")["status"] == "False"
    reasons = [e["reason"] for e in models.events(name)]
    assert {"Promoted", "PromotionComplete", "BakeComplete"} <= set(reasons)


def test_a_revision_that_breaks_while_baking_is_rolled_back_to_the_previous_stable(
    cluster, models, operator, prom, stable_md, load_logs, tmp_path
):
    name = stable_md
    switch = tmp_path / "break-now"  # the revision's fault acts only once this file exists

    def break_it_while_baking(md: dict) -> None:
        canary = md["status"].get("canary") or {}
        if canary.get("phase") == "Baking" and not switch.exists():
            switch.touch()

    def rolled_back_to_the_previous(md: dict, after: str) -> bool:
        return (
            bool(rejected(md, after))
            and template_revision(models.deployment(name)) == md["status"]["stableRevision"] != after
        )

    patch = {"runtime": runtime(f"{SLOWER_PER_TOKEN},when={switch}"), "slo": {"bakeSeconds": 60}}
    run = roll(
        cluster, models, prom, load_logs, name, patch, rolled_back_to_the_previous,
        during=break_it_while_baking, timeout=PROMOTED_S + 60,
    )  # fmt: skip
    assert run.load["errors"] == {}, run.load
    assert "Baking" in run.seen.phases and switch.exists()
    status = run.md["status"]
    assert status["stableRevision"] == run.before, "the stable track runs the previous revision again"
    entry = rejected(run.md, run.after)
    assert entry["reason"] == "SLOBreached" and any("Relative" in m["rules"] for m in entry["measurements"])
    warning = [e for e in events(models, name, "RolledBack") if run.after in e["message"]]
    assert warning and "while baking" in warning[0]["message"]
    templates = [template_revision({"spec": {"template": v[1]}}) for v in run.history if v is not None]
    assert templates[0] == run.before and run.after in templates and templates[-1] == run.before


# ---- with autoscaling on --------------------------------------------------------------------------------------


def test_autoscaler_never_scales_the_stable_deployment_in_below_its_size_when_the_canary_began(
    cluster, models, operator, prom, other_seed_dir, load_logs
):
    name = "floor"
    body = canary_md(name, other_seed_dir, replicas=2)
    body["spec"].update(minReplicas=1, maxReplicas=2)
    models.apply(body)
    models.wait_ready(name, replicas=2, timeout=START_TIMEOUT_S)
    try:
        # one change: a new revision, and an autoscaler that finds the queue empty and would scale in
        autoscaling = {
            "enabled": True, "targetQueueDepth": 4, "intervalSeconds": 2, "metricWindowSeconds": 4,
            "scaleDown": {"stabilizationWindowSeconds": 0, "periodSeconds": 1, "maxPods": 1},
        }  # fmt: skip
        patch = {"runtime": {"batching": {"maxQueue": 200}}, "autoscaling": autoscaling}
        run = roll(
            cluster, models, prom, load_logs, name, patch,
            lambda md, after: md["status"].get("stableRevision") == after,
        )  # fmt: skip
    finally:
        delete_and_wait(models, name)
    assert "Analyzing" in run.seen.phases and run.seen.kinds().count("Passed") >= ANALYSIS["measurements"]
    assert run.load["errors"] == {}, run.load
    at_old_revision = [replicas for replicas, template in filter(None, run.history)
                       if template["metadata"]["labels"]["moedeploy.dev/revision"] == run.before]  # fmt: skip
    assert at_old_revision and min(at_old_revision) == 2, run.history
    # the autoscaler did want fewer pods meanwhile: the floor held them
    assert any("raised to the floor of 2 while a canary is analysed" in r for r in run.seen.autoscaling), (
        run.seen.autoscaling
    )


# ---- Prometheus down during the analysis --------------------------------------------------------------------------


@pytest.fixture
def private_prometheus(cluster, tmp_path):
    prometheus = PrivatePrometheus(tmp_path, cluster.targets_file)
    prometheus.start()
    yield prometheus
    prometheus.stop()


@pytest.fixture
def blind_namespace(cluster, crd):
    """A namespace of its own, for an operator that reads the test's own Prometheus."""
    name = f"md-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_prometheus_down_holds_the_canary_and_never_decides(
    cluster, blind_namespace, private_prometheus, model_dir, tmp_path, prom
):
    models = Models(cluster, blind_namespace)
    running = start_operator(cluster, blind_namespace, private_prometheus.url, tmp_path)
    name = "blind"
    error_limit = 1
    try:
        models.apply(canary_md(name, model_dir, errorLimit=error_limit, measurements=3))
        before = models.wait_ready(name, replicas=1, timeout=START_TIMEOUT_S)["status"]["stableRevision"]
        with (
            DeploymentHistory(models.apps, models.namespace, name) as history,
            steady_load(cluster, models, name, tmp_path) as load,
        ):
            wait_warm(prom, models, name)
            models.patch_spec(name, {"runtime": {"batching": {"maxQueue": 200}}})
            after = new_revision(models, name, before)

            def analysing() -> bool:
                canary = models.get(name)["status"].get("canary") or {}
                return (
                    canary.get("phase") == "Analyzing"
                    and (canary.get("analysis") or {}).get("passed", 0) >= 1
                )

            wait_for(analysing, timeout=DECIDED_S, what="one window of the canary measured")
            private_prometheus.stop()

            def held(windows: int) -> dict | None:
                canary = models.get(name)["status"].get("canary") or {}
                analysis = canary.get("analysis") or {}
                return (
                    canary.get("phase") == "Holding"
                    and analysis.get("consecutiveErrors", 0) >= windows
                    and canary
                )

            canary = wait_for(lambda: held(error_limit + 1), timeout=10 * WINDOW_S, what="the canary held")
            # errors counted as passes would have promoted it by now, as failures rolled it back
            held_long = wait_for(
                lambda: held(error_limit + 2), timeout=10 * WINDOW_S, what="still held, windows later"
            )
            md = models.get(name)
            assert (
                canary["revision"] == after
                and held_long["analysis"]["passed"] == canary["analysis"]["passed"]
            )
            assert md["status"]["stableRevision"] == before and not md["status"]["rejectedRevisions"]
            assert template_revision(models.deployment(f"{name}-canary")) == after
            assert (
                "PrometheusUnavailable" in held_long["message"]
                and private_prometheus.url in held_long["message"]
            )
            assert condition(md, "Progressing")["reason"] == "CanaryHolding"
            warnings = events(models, name, "AnalysisErrored")
            assert warnings and all(w["type"] == "Warning" and "Prometheus" in w["message"] for w in warnings)

            # Prometheus back: the analysis carries on from where it was, and the canary passes
            private_prometheus.start()
            promoted = wait_for(
                lambda: models.get(name)["status"].get("stableRevision") == after,
                timeout=DECIDED_S, what="the analysis resumed and promoted the canary",
            )  # fmt: skip
        assert promoted and load.result["errors"] == {}, load.result
        templates = [
            template_revision({"spec": {"template": v[1]}}) for v in history.versions if v is not None
        ]
        assert templates[0] == before and templates[-1] == after
        assert templates.index(after) > 0 and set(templates[: templates.index(after)]) == {before}
        assert not events(models, name, "RolledBack")
    finally:
        delete_and_wait(models, name)
        running.process.stop()
        print(running.process.log()[-5000:])
