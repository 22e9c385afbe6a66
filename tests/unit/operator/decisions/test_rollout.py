"""The rollout state machine over sequences of passes, as the reconciler drives it."""

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from moe_operator.decisions.rollout import (
    ANALYZING,
    HOLDING,
    PROMOTING,
    STARTING,
    WAITING_FOR_CAPACITY,
    Canary,
    Rejected,
    RolloutInputs,
    RolloutState,
    Verdict,
    plan_rollout,
)
from moe_operator.decisions.status import Problem

OLD, NEW, NEWER = "0ld0000000", "new0000000", "newer00000"
T0 = 1_800_000_000.0


def inputs(target=NEW, **fields):
    base = dict(
        target=target,
        strategy="Canary",
        now=T0,
        stable_replicas=3,
        canary_replicas=1,
        canary_ready=0,
        stable_done=True,
        startup_timeout_s=600,
        analysed=True,
    )
    return RolloutInputs(**{**base, **fields})


def step(state, **fields):
    plan = plan_rollout(state, inputs(**fields))
    return plan.state, [e.reason for e in plan.events], plan


def roundtrip(state):
    """What a restarted operator reads back from the status."""
    return RolloutState.from_status(state.to_status())


def test_the_first_revision_is_stable_at_once():
    state, events, plan = step(RolloutState(), target=OLD)
    assert (plan.stable_revision, plan.canary_revision, events) == (OLD, None, [])


def test_a_good_canary_is_analysed_promoted_and_then_goes_away():
    state, events, plan = step(RolloutState(stable=OLD))
    assert (plan.stable_revision, plan.canary_revision, state.canary.phase, events) == (
        OLD,
        NEW,
        STARTING,
        ["CanaryStarted"],
    )
    assert state.canary.baseline_replicas == 3
    state, events, plan = step(roundtrip(state), canary_ready=1, now=T0 + 30)
    assert (
        state.canary.phase == ANALYZING and state.canary.ready_at == T0 + 30 and plan.stable_revision == OLD
    )
    state, events, plan = step(
        roundtrip(state), canary_ready=1, verdict=Verdict("Continue", "Analyzing", "2/5 passed")
    )
    assert state.canary.phase == ANALYZING and state.canary.message == "2/5 passed" and events == []
    state, events, plan = step(
        roundtrip(state), canary_ready=1, verdict=Verdict("Promote", "AnalysisPassed", "5/5 passed")
    )
    assert (plan.stable_revision, plan.canary_revision, state.canary.phase, events) == (
        NEW,
        NEW,
        PROMOTING,
        ["Promoted"],
    )
    state, events, plan = step(roundtrip(state), stable_done=False)
    assert plan.canary_revision == NEW, "the canary serves until the stable pods all run the new revision"
    state, events, plan = step(roundtrip(state), stable_done=True)
    assert (plan.stable_revision, plan.canary_revision, events) == (NEW, None, ["PromotionComplete"])


def test_a_bad_canary_is_rolled_back_and_stays_rejected():
    analysing = RolloutState(stable=OLD, canary=Canary(NEW, ANALYZING, T0, 3, ready_at=T0))
    breach = Verdict("Rollback", "SLOBreached", "p99 4.1s over 1s", ({"p99": 4.1, "threshold": 1.0},))
    state, events, plan = step(analysing, canary_ready=1, verdict=breach)
    assert (plan.stable_revision, plan.canary_revision, events) == (OLD, None, ["RolledBack"])
    (rejected,) = state.rejected
    assert (rejected.revision, rejected.reason, rejected.measurements) == (
        NEW,
        "SLOBreached",
        ({"p99": 4.1, "threshold": 1.0},),
    )
    for _ in range(3):  # later passes, and a restarted operator, do not deploy it again
        state, events, plan = step(roundtrip(state), now=T0 + 3600)
        assert (plan.stable_revision, plan.canary_revision, events) == (OLD, None, [])


def test_a_retry_analyses_a_rejected_revision_afresh_once_per_request():
    rejected = RolloutState(stable=OLD, rejected=(Rejected(NEW, "SLOBreached", "slow", T0),))
    state, events, plan = step(rejected, retry_token="1")
    assert (plan.canary_revision, events, state.last_handled_retry) == (
        NEW,
        ["RetryRequested", "CanaryStarted"],
        "1",
    )
    state = replace(state, canary=None, rejected=(Rejected(NEW, "SLOBreached", "slow again", T0),))
    state, events, plan = step(roundtrip(state), retry_token="1")
    assert (plan.canary_revision, events) == (None, []), (
        "the same annotation value is one request, not a loop"
    )


def test_a_canary_that_never_turns_ready_is_rolled_back_at_its_deadline():
    starting = RolloutState(stable=OLD, canary=Canary(NEW, STARTING, T0, 3))
    state, events, _ = step(starting, now=T0 + 600)
    assert state.canary.phase == STARTING and events == []
    state, events, plan = step(starting, now=T0 + 601)
    assert plan.canary_revision is None and events == ["RolledBack"]
    assert state.rejected[0].reason == "ProgressDeadlineExceeded"


def test_a_spec_change_during_analysis_replaces_the_canary_without_rejecting_it():
    analysing = RolloutState(stable=OLD, canary=Canary(NEW, ANALYZING, T0, 3, ready_at=T0))
    state, events, plan = step(analysing, target=NEWER)
    assert (plan.canary_revision, events, state.rejected) == (NEWER, ["CanaryAborted", "CanaryStarted"], ())
    state, events, plan = step(analysing, target=OLD)
    assert (plan.stable_revision, plan.canary_revision, events) == (OLD, None, ["CanaryAborted"])


def test_a_change_during_promotion_waits_for_the_promotion_to_finish():
    promoting = RolloutState(stable=NEW, canary=Canary(NEW, PROMOTING, T0, 3, ready_at=T0))
    state, events, plan = step(promoting, target=NEWER, stable_done=False)
    assert (plan.stable_revision, plan.canary_revision, events) == (NEW, NEW, [])
    state, events, plan = step(state, target=NEWER, stable_done=True)
    assert (plan.stable_revision, plan.canary_revision, events) == (
        NEW,
        NEWER,
        ["PromotionComplete", "CanaryStarted"],
    )


def test_rolling_update_moves_the_stable_track_at_once():
    state, events, plan = step(RolloutState(stable=OLD), strategy="RollingUpdate")
    assert (plan.stable_revision, plan.canary_revision, events) == (NEW, None, ["RolloutStarted"])


def test_without_an_slo_a_canary_passes_once_its_pods_are_ready():
    state, _, plan = step(RolloutState(stable=OLD), analysed=False)
    assert plan.canary_revision == NEW
    state, events, plan = step(state, analysed=False, canary_ready=1)
    assert (plan.stable_revision, state.canary.phase, events) == (NEW, PROMOTING, ["Promoted"])


def test_a_held_canary_says_why_once_and_can_still_conclude():
    analysing = RolloutState(stable=OLD, canary=Canary(NEW, ANALYZING, T0, 3, ready_at=T0))
    hold = Verdict("Hold", "AnalysisErrored", "Prometheus unreachable for 5 windows")
    state, events, plan = step(analysing, canary_ready=1, verdict=hold)
    assert (state.canary.phase, events, plan.canary_revision) == (HOLDING, ["AnalysisErrored"], NEW)
    state, events, _ = step(roundtrip(state), canary_ready=1, verdict=hold)
    assert events == []
    state, events, plan = step(
        roundtrip(state), canary_ready=1, verdict=Verdict("Promote", "AnalysisPassed", "ok")
    )
    assert plan.stable_revision == NEW and events == ["Promoted"]


def test_rejections_are_bounded():
    state = RolloutState(
        stable=OLD, rejected=tuple(Rejected(f"r{i:09d}", "SLOBreached", "", T0) for i in range(5))
    )
    state = replace(state, canary=Canary(NEW, ANALYZING, T0, 3, ready_at=T0))
    state, _, _ = step(state, canary_ready=1, verdict=Verdict("Rollback", "SLOBreached", "slow"))
    assert len(state.rejected) == 5 and state.rejected[-1].revision == NEW


revisions = st.sampled_from([OLD, NEW, NEWER])
canaries = st.builds(
    Canary,
    revision=revisions,
    phase=st.sampled_from([STARTING, ANALYZING, HOLDING, PROMOTING]),
    started_at=st.integers(0, 2**31).map(float),
    baseline_replicas=st.integers(0, 50),
    ready_at=st.none() | st.integers(0, 2**31).map(float),
    placed_at=st.none() | st.integers(0, 2**31).map(float),
    handed_over=st.booleans(),
    message=st.text(max_size=20),
    analysis=st.none() | st.fixed_dictionaries({"passed": st.integers(0, 9)}),
)
states = st.builds(
    RolloutState,
    stable=st.none() | revisions,
    canary=st.none() | canaries,
    rejected=st.lists(
        st.builds(
            Rejected,
            revision=revisions,
            reason=st.just("SLOBreached"),
            message=st.text(max_size=9),
            at=st.integers(0, 2**31).map(float),
        ),
        max_size=3,
    ).map(tuple),  # fmt: skip
    last_handled_retry=st.none() | st.text(min_size=1, max_size=5),
)


@given(states)
def test_the_status_keeps_the_whole_state(state):
    assert roundtrip(state) == state


@given(
    states,
    revisions,
    st.booleans(),
    st.integers(0, 2),
    st.sampled_from(["Continue", "Promote", "Rollback", "Hold"]),
)
def test_never_a_canary_of_the_stable_revision_or_of_a_rejected_one(state, target, done, ready, action):
    plan = plan_rollout(
        state, inputs(target=target, stable_done=done, canary_ready=ready, verdict=Verdict(action, "R", "m"))
    )
    new = plan.state
    assert new.stable is not None
    if new.canary is not None and new.canary.phase != PROMOTING:
        assert new.canary.revision != new.stable
        assert new.is_rejected(new.canary.revision) is None


def test_a_hold_is_reported_when_it_starts_or_its_reason_changes_not_at_every_new_count():
    analysing = RolloutState(stable=OLD, canary=Canary(NEW, ANALYZING, T0, 3, ready_at=T0))
    reasons = []
    state = analysing
    for verdict in [
        Verdict("Hold", "AnalysisInconclusive", f"{n} inconclusive measurements, more than the 3 allowed")
        for n in range(4, 9)
    ] + [Verdict("Hold", "AnalysisErrored", "Prometheus unreachable")]:
        state, events, _ = step(roundtrip(state), canary_ready=1, verdict=verdict)
        reasons += events
    assert reasons == ["AnalysisInconclusive", "AnalysisErrored"]
    assert state.canary.reason == "AnalysisErrored"


NO_ROOM = Problem("Unschedulable", "pod qwen-canary-x cannot be scheduled: 0/2 nodes are available")


@settings(deadline=None)  # up to 30 passes an example: on a busy machine past hypothesis's 200 ms per example
@given(
    st.lists(
        st.tuples(
            st.integers(1, 3600).map(float),
            st.sampled_from(["Continue", "Promote", "Rollback", "Hold"]),
            st.sampled_from([None, "another spec"]),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_a_canary_the_cluster_has_no_room_for_is_never_rejected(passes):
    """Whatever time passes and whatever the analysis would say: a canary whose pods were never placed waits;
    only a spec that moves on replaces it (with another canary, never a rejection)."""
    state, now = RolloutState(stable=OLD), T0
    for elapsed, action, change in passes:
        now += elapsed
        target = NEWER if change else NEW
        state, _, plan = step(
            roundtrip(state),
            target=target,
            now=now,
            startup_timeout_s=30,
            canary_unschedulable=NO_ROOM,
            verdict=Verdict(action, "R", "m"),
        )
        assert not state.rejected and plan.stable_revision == OLD
        assert state.canary.phase == STARTING and state.canary.reason == WAITING_FOR_CAPACITY


def test_a_handed_over_canary_has_no_deployment_and_its_promotion_completes_as_before():
    promoting = RolloutState(stable=NEW, canary=Canary(NEW, PROMOTING, T0, 3, previous=OLD, ready_at=T0))
    state, events, plan = step(promoting, stable_done=False)
    assert (plan.canary_revision, events) == (NEW, []), "the canary serves while the stable pods find room"
    state, events, plan = step(promoting, stable_done=False, stable_unschedulable=NO_ROOM)
    assert (plan.canary_revision, events, state.canary.handed_over) == (None, ["CapacityHandedOver"], True)
    state, events, plan = step(roundtrip(state), stable_done=False, stable_unschedulable=NO_ROOM)
    assert (plan.canary_revision, events) == (None, []), "handed over once"
    state, events, plan = step(roundtrip(state), stable_done=True, bake=True)
    assert (state.canary.phase, events, plan.canary_revision) == ("Baking", ["PromotionComplete"], None)
