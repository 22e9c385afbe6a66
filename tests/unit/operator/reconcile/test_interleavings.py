"""Issue 24 items 4 and 5 as properties over random interleavings of what happens to a reconcile pass: writes that
fail after the status was recorded, status writes that lose a race with another client, refusals, operator
restarts, time and load. Whatever the order, no decision is repeated or undone: the autoscaler never moves faster
than its policy allows, the stable template never flips back, and the autoscaler's memory survives every refusal."""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes.client.exceptions import ApiException

from moe_operator.decisions.promdata import PodSamples
from moe_operator.io.children import WriteRefused
from moe_operator.machinery.errors import StaleRead
from tests.unit.operator.world import AUTOSCALING, NAME, NS, World

SCALE_UP = {"stabilizationWindowSeconds": 0, "maxPods": 2, "periodSeconds": 10}
SCALE_DOWN = {"stabilizationWindowSeconds": 0, "maxPods": 1, "periodSeconds": 10}
EAGER = {**AUTOSCALING, "scaleUp": SCALE_UP, "scaleDown": SCALE_DOWN}  # every period may move


def _error(status: int) -> ApiException:
    err = ApiException(status=status, reason="injected")
    err.body = '{"message": "injected"}'
    return err


STEPS = st.one_of(
    st.tuples(st.just("pass")),
    st.tuples(st.just("tick"), st.integers(1, 15)),
    st.tuples(st.just("load"), st.sampled_from([0.0, 2.0, 4.0, 12.0, 40.0])),
    st.tuples(st.just("settle")),
    st.tuples(
        st.just("fail_next"),
        st.sampled_from(["Deployment", "ConfigMap", "Service"]),
        st.sampled_from([500, 403]),
    ),
    st.tuples(st.just("race_status")),
    st.tuples(st.just("restart")),
    st.tuples(st.just("new_image")),
)


class Run:
    def __init__(self) -> None:
        self.world = World(autoscaling=EAGER, minReplicas=1, maxReplicas=10)
        self.world.queue_answer = PodSamples({})
        self.image = 1
        self.per_pod = 4.0
        self.changes: list[tuple[float, int]] = []  # (time, replicas after - before) of the stable Deployment
        self.initial: int | None = None  # the stable Deployment's first replicas
        self.images: list[str] = []
        self.memory_seen = False

    def do(self, step) -> None:
        world, kind = self.world, step[0]
        if kind == "pass":
            self.attempt()
        elif kind == "tick":
            world.clock.now += step[1]
            self.read_queue()
            self.attempt()
        elif kind == "load":
            self.per_pod = step[1]
        elif kind == "settle":
            for track in ("stable", "canary"):
                deployment = world.deployment(track)
                names = set(world.ready_pods(deployment["spec"]["replicas"], track)) if deployment else set()
                for pod in world.api.of_kind("Pod"):
                    if (
                        pod["metadata"]["labels"]["moedeploy.dev/track"] == track
                        and pod["metadata"]["name"] not in names
                    ):
                        world.api.delete("Pod", NS, pod["metadata"]["name"])
                if deployment is not None:
                    world.settle(track)
        elif kind == "fail_next":
            world.api.fail_next[step[1]] = _error(step[2])
        elif kind == "race_status":
            world.api.interfere_next_status = True
        elif kind == "restart":
            world.restart()
        elif kind == "new_image":
            self.image += 1
            world.change_spec(
                autoscaling=EAGER, minReplicas=1, maxReplicas=10,
                runtime__image=f"registry.local/moe-runtime:{self.image}",
            )  # fmt: skip

    def read_queue(self) -> None:
        stable = self.world.deployment()
        if stable is not None:
            pods = [f"{NAME}-{i}" for i in range(stable["spec"]["replicas"])]
            self.world.read_queue(PodSamples(dict.fromkeys(pods, self.per_pod)))

    def attempt(self) -> None:
        """One pass as a worker runs it: a failure leaves the rest to the next pass."""
        before = self.world.deployment()
        with contextlib.suppress(StaleRead, WriteRefused, ApiException):
            self.world.reconciler.reconcile(NS, NAME)
        self.record(before)

    def record(self, before) -> None:
        after = self.world.deployment()
        if after is not None and self.initial is None:
            self.initial = after["spec"]["replicas"]
        if after is not None:
            replicas_before = before["spec"]["replicas"] if before is not None else after["spec"]["replicas"]
            if after["spec"]["replicas"] != replicas_before:
                self.changes.append((self.world.clock.now, after["spec"]["replicas"] - replicas_before))
            image = after["spec"]["template"]["spec"]["containers"][0]["image"]
            if not self.images or self.images[-1] != image:
                self.images.append(image)
        autoscaling = self.world.status().get("autoscaling") or {}
        if autoscaling.get("memory"):
            self.memory_seen = True
        elif self.memory_seen:
            raise AssertionError(f"the autoscaler's memory was lost: {self.world.status()}")

    def _replicas_at(self, time: float) -> int:
        replicas = self.initial
        for at, delta in self.changes:
            if at > time:
                break
            replicas += delta
        return replicas

    def check(self) -> None:
        """HPA's step rule: a change leaves the replicas within max_pods of where they stood one period before
        (or where they were, if that is already further)."""
        replicas = self.initial
        for at, delta in self.changes:
            before, after = replicas, replicas + delta
            start = self._replicas_at(at - SCALE_DOWN["periodSeconds"])
            if delta < 0:
                assert after >= min(start - SCALE_DOWN["maxPods"], before), (
                    f"scaled in too fast: {self.changes}"
                )
            else:
                assert after <= max(start + SCALE_UP["maxPods"], before), (
                    f"scaled out too fast: {self.changes}"
                )
            replicas = after
        assert len(self.images) == len(set(self.images)), f"the stable template flipped back: {self.images}"
        promoted = self.world.events.reasons.count("Promoted")
        assert promoted <= self.image - 1, f"{promoted} promotions of {self.image - 1} new revisions"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(STEPS, min_size=5, max_size=60))
def test_no_decision_is_repeated_or_undone_whatever_fails_in_between(steps):
    run = Run()
    run.attempt()
    for step in steps:
        run.do(step)
        run.check()
