"""The reconcile pass (I/O shell) against an in-memory API server: what it writes, what it refuses to touch,
how it reports, and how a canary comes and goes."""

import contextlib
import threading

import pytest
from kubernetes.client.exceptions import ApiException

from moe_operator.decisions.policy import Policy
from moe_operator.io.children import WriteRefused
from moe_operator.machinery.errors import StaleRead
from tests.unit.operator.world import BAD, FAST_SLO, GOOD, NAME, NS, World

NO_BAKE = {**FAST_SLO, "bakeSeconds": 0}


def env_source(deployment):
    return deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"]


def test_first_pass_creates_the_children_and_reports_progress():
    world = World()
    world.reconcile()
    kinds = sorted({kind for (kind, _, _) in world.api.objects})
    assert kinds == ["ConfigMap", "Deployment", "ModelDeployment", "Service"]
    by_name = {cm["metadata"]["name"]: cm for cm in world.api.of_kind("ConfigMap")}
    adapters_config = by_name.pop(f"{NAME}-adapters")
    assert adapters_config["data"] == {"adapters.json": "[]"} and "immutable" not in adapters_config
    (config_map,) = by_name.values()
    assert config_map["immutable"] is True
    assert env_source(world.deployment()) == config_map["metadata"]["name"]
    status = world.status()
    # the status is recorded before the children are written: it says what was decided, and that the
    # Deployment is being created; the pass the Deployment's watch event brings sees it progressing
    assert status["phase"] == "Pending" and status["stableRevision"] == status["currentRevision"]
    assert world.condition("Progressing")["reason"] == "Creating"
    world.reconcile()
    status = world.status()
    assert status["phase"] == "Progressing"
    assert status["url"] == f"http://{NAME}.{NS}.svc.cluster.local" and status["model"] == NAME
    assert world.events.reasons == ["Created"]


def test_ready_once_the_pods_are_and_an_unchanged_status_is_not_written_again():
    world = World()
    world.reconcile()
    world.settle()
    world.reconcile()
    assert world.status()["phase"] == "Ready" and world.events.reasons == ["Created", "Ready"]
    writes = len(world.api.writes)
    world.reconcile()
    assert len(world.api.writes) == writes, "nothing changed: nothing written"


def test_a_removed_setting_does_not_stay_in_the_pods():
    """Hardening 7: a ConfigMap updated in place kept keys the spec no longer sets."""
    world = World(runtime__attention={"window": 512}, rollout={"strategy": "RollingUpdate"})
    world.reconcile()
    world.settle()
    world.reconcile()
    world.change_spec(rollout={"strategy": "RollingUpdate"})  # the window removed
    world.reconcile()
    config = world.api.get_obj("ConfigMap", NS, env_source(world.deployment()))
    assert "MOE_RUNTIME_WINDOW" not in config["data"]


def test_an_object_someone_else_owns_is_never_taken_over():
    """Hardening 8: a Service of the same name from a Helm release must not be force-applied and adopted."""
    world = World()
    foreign = {"apiVersion": "v1", "kind": "Service", "spec": {"selector": {"app": "theirs"}},
               "metadata": {"name": NAME, "namespace": NS, "labels": {"app.kubernetes.io/managed-by": "Helm"}}}  # fmt: skip
    world.api.put(foreign)
    world.api.cache.delete(
        world.api.get_obj("Service", NS, NAME)
    )  # not ours: the operator's watch never sees it
    world.reconcile()
    service = world.api.get_obj("Service", NS, NAME)
    assert service["spec"] == {"selector": {"app": "theirs"}} and "ownerReferences" not in service["metadata"]
    assert world.condition("Degraded")["reason"] == "NameConflict"
    assert "Service" in world.condition("Degraded")["message"]
    assert "NameConflict" in world.events.reasons
    assert not [w for w in world.api.writes if w[1] in ("Service", "Deployment")]


def test_a_child_labelled_like_ours_but_owned_by_another_object_is_a_conflict_too():
    world = World()
    world.reconcile()
    deployment = world.deployment()
    deployment["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
    world.api.put(deployment)
    writes = len(world.api.writes)
    world.change_spec(replicas=3, maxReplicas=10)
    world.reconcile()
    assert world.condition("Degraded")["reason"] == "NameConflict"
    assert [w for w in world.api.writes[writes:] if w[1] == "Deployment"] == []


def test_a_refusal_lands_in_the_status_once_and_is_retried_with_back_off():
    """Hardening 9: a 403 from a quota or webhook looped every 5 s with an Event each time."""
    world = World()
    forbidden = ApiException(status=403, reason="Forbidden")
    forbidden.body = '{"message": "deployments is forbidden: exceeded quota"}'
    world.api.refuse["Deployment"] = forbidden
    for _ in range(3):
        with pytest.raises(WriteRefused):  # the workers back off on it
            world.reconcile()
    degraded = world.condition("Degraded")
    assert degraded["reason"] == "ApplyFailed" and "exceeded quota" in degraded["message"]
    assert world.events.reasons.count("ApplyFailed") == 1


def test_a_policy_violation_touches_nothing():
    world = World(policy=Policy(), runtime__image="evil.io/x:1")
    world.reconcile()
    assert [w for w in world.api.writes if w[0] != "status"] == []
    assert world.condition("Degraded")["reason"] == "PolicyViolation"
    assert "spec.runtime.image" in world.condition("Degraded")["message"]


def test_a_good_canary_runs_beside_the_stable_track_and_is_promoted():
    world = World(slo=NO_BAKE)
    world.reconcile()
    world.settle()
    world.reconcile()
    stable_template = world.deployment()["spec"]["template"]
    world.change_spec(slo=NO_BAKE, runtime__image="registry.local/moe-runtime:2")
    world.reconcile()
    canary = world.deployment("canary")
    assert canary["spec"]["replicas"] == 1
    assert canary["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/moe-runtime:2"
    assert world.deployment()["spec"]["template"] == stable_template, "the stable track is not touched"
    world.settle("canary")
    world.reconcile()
    assert world.status()["canary"]["phase"] == "Analyzing"
    world.analyse_until(GOOD)
    assert (
        world.deployment()["spec"]["template"]["spec"]["containers"][0]["image"]
        == "registry.local/moe-runtime:2"
    )
    assert world.deployment("canary") is not None, "the canary serves until the stable pods have moved"
    world.settle()
    world.reconcile()
    assert world.deployment("canary") is None
    status = world.status()
    assert status["stableRevision"] == status["currentRevision"] and "canary" not in status
    reasons = world.events.reasons
    assert reasons.index("CanaryStarted") < reasons.index("Promoted") < reasons.index("PromotionComplete")


def test_a_bad_canary_is_rolled_back_without_the_stable_track_ever_changing():
    world = World(slo=FAST_SLO)
    world.reconcile()
    world.settle()
    world.reconcile()
    stable = world.deployment()
    world.change_spec(slo=FAST_SLO, runtime__batching={"maxBatchSequences": 1})
    world.reconcile()
    world.settle("canary")
    world.reconcile()
    world.analyse_until(BAD)
    assert world.deployment("canary") is None
    assert world.deployment()["spec"] == stable["spec"]
    status = world.status()
    rejected = status["rejectedRevisions"][0]
    assert rejected["revision"] == status["currentRevision"] and "p99 latency" in rejected["message"]
    assert rejected["measurements"][0]["canary"]["p99LatencySeconds"] == 5.0
    assert world.condition("Degraded")["reason"] == "SLOBreached"
    failed = [e for e in world.events.posted if e.reason == "AnalysisWindowFailed"]
    assert len(failed) == 2 and all("p99 latency 5s over the 1s limit" in e.message for e in failed)
    assert world.condition("Ready")["status"] == "True", "the stable pods still serve"
    for _ in range(2):
        world.clock.now += 120
        world.reconcile()
        assert world.deployment("canary") is None, "a rejected revision is not deployed again"


def test_old_revisions_are_pruned_past_the_history_limit():
    world = World(rollout={"strategy": "RollingUpdate", "revisionHistoryLimit": 1})
    world.reconcile()
    for queue in (10, 20, 30):
        world.change_spec(
            rollout={"strategy": "RollingUpdate", "revisionHistoryLimit": 1},
            runtime__batching={"maxQueue": queue},
        )
        world.reconcile()
    names = {cm["metadata"]["name"] for cm in world.api.of_kind("ConfigMap")} - {f"{NAME}-adapters"}
    assert env_source(world.deployment()) in names and len(names) == 2


def test_two_writers_never_make_the_status_flap():
    """Hardening 12: passes run from several threads at once never write a status computed from a stale read,
    so the status moves forward only."""
    world = World()
    world.reconcile()
    world.settle()
    phases = []
    original = world.api.replace_status

    def recording(md, status):
        result = original(md, status)
        phases.append(status["phase"])
        return result

    world.api.replace_status = recording

    def passes():
        for _ in range(20):
            with contextlib.suppress(StaleRead):
                world.reconciler.reconcile(NS, NAME)

    threads = [threading.Thread(target=passes) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert phases == ["Ready"], phases


BAKE = {**FAST_SLO, "bakeSeconds": 20}


def promoted_to_baking(world: World) -> tuple[str, str]:
    world.reconcile()
    world.settle()
    world.reconcile()
    before = world.status()["stableRevision"]
    world.change_spec(
        slo=BAKE, rollout={"revisionHistoryLimit": 0}, runtime__image="registry.local/moe-runtime:2"
    )
    world.reconcile()
    world.settle("canary")
    world.reconcile()
    world.analyse_until(GOOD)
    assert world.status()["canary"]["phase"] == "Promoting"
    world.settle()
    world.reconcile()
    assert world.status()["canary"]["phase"] == "Baking"
    assert world.deployment("canary") is None, (
        "a bake has no canary Deployment: the revision is the stable one"
    )
    return before, world.status()["currentRevision"]


def test_a_promoted_revision_bakes_and_then_the_rollout_is_over():
    world = World(slo=BAKE, rollout={"revisionHistoryLimit": 0})
    before, after = promoted_to_baking(world)
    world.analyse_until(GOOD, phase_gone=("Baking",))
    status = world.status()
    assert "canary" not in status and status["stableRevision"] == after
    assert "BakeComplete" in world.events.reasons


def test_a_revision_that_breaks_while_baking_goes_back_to_the_previous_stable():
    world = World(slo=BAKE, rollout={"revisionHistoryLimit": 0})
    before, after = promoted_to_baking(world)
    previous_template = env_source(world.deployment())
    world.analyse_until(BAD, phase_gone=("Baking",))
    status = world.status()
    assert status["stableRevision"] == before and "canary" not in status
    assert status["rejectedRevisions"][-1]["revision"] == after
    assert env_source(world.deployment()) != previous_template, (
        "the stable Deployment runs the previous revision"
    )
    assert before in env_source(world.deployment()), (
        "from its ConfigMap, kept for the bake despite the history limit"
    )
    assert any(e.reason == "RolledBack" and "while baking" in e.message for e in world.events.posted)
