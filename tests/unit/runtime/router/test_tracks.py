from hypothesis import given
from hypothesis import strategies as st

from moe_runtime.router.tracks import CANARY, STABLE, TrackTurns, canary_routable, weights


def test_the_canary_is_routable_only_while_the_status_has_it_and_has_not_rejected_it():
    assert canary_routable(None)  # no status read yet: the Ready pods decide
    assert not canary_routable({})
    for phase in ("Starting", "Analyzing", "Holding", "Promoting"):
        assert canary_routable({"canary": {"revision": "abc", "phase": phase}}), phase
    baking = {
        "stableRevision": "abc",
        "canary": {"revision": "abc", "phase": "Baking", "previousRevision": "old"},
    }
    assert not canary_routable(baking), "a baking revision is the stable one: the canary track is leaving"
    rejected = {
        "canary": {"revision": "abc"},
        "rejectedRevisions": [{"revision": "abc", "reason": "SLOBreached"}],
    }
    assert not canary_routable(rejected)
    assert not canary_routable({"canary": "garbage", "rejectedRevisions": "garbage"})


def test_weights_are_ready_pods_per_track_and_none_for_a_stopped_canary():
    assert weights({STABLE: 3, CANARY: 1}, canary_allowed=True) == {STABLE: 3, CANARY: 1}
    assert weights({STABLE: 3, CANARY: 1}, canary_allowed=False) == {STABLE: 3}
    assert weights({STABLE: 0, CANARY: 0}, canary_allowed=True) == {}
    assert TrackTurns().next({}) is None


@given(stable=st.integers(1, 20), canary=st.integers(1, 5), requests=st.integers(1, 300))
def test_the_canary_gets_exactly_its_share_over_any_run_of_requests(stable, canary, requests):
    turns = TrackTurns()
    got = 0
    for i in range(1, requests + 1):
        got += turns.next({STABLE: stable, CANARY: canary}) == CANARY
        share = i * canary / (stable + canary)
        assert abs(got - share) < 1 + 1e-9


@given(
    changes=st.lists(
        st.tuples(st.integers(0, 6), st.integers(0, 3), st.integers(1, 20)), min_size=1, max_size=6
    )
)
def test_a_track_without_weight_never_gets_a_request(changes):
    turns = TrackTurns()
    for stable, canary, requests in changes:
        for _ in range(requests):
            track = turns.next(weights({STABLE: stable, CANARY: canary}, canary_allowed=True))
            assert track is None if stable == canary == 0 else {STABLE: stable, CANARY: canary}[track] > 0
