from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moe_runtime.router.load import PodLoad
from moe_runtime.router.picker import Candidate, Picker, Strategy

MEAN = 100.0


def test_round_robin_goes_round_per_request_whatever_the_load():
    picker = Picker(Strategy.ROUND_ROBIN)
    pods = [Candidate("a", outstanding_tokens=10_000), Candidate("b"), Candidate("c")]
    picks = Counter(picker.pick(pods, MEAN).pod for _ in range(30))
    assert picks == {"a": 10, "b": 10, "c": 10}


def test_least_load_counts_outstanding_tokens_and_the_waiting_queue():
    picker = Picker(Strategy.LEAST_LOAD)
    busy = Candidate("busy", outstanding_tokens=2000, in_flight=1)  # one long prompt
    queued = Candidate("queued", load=PodLoad(waiting=5), outstanding_tokens=0)  # 5 x 100 tokens waiting
    light = Candidate("light", outstanding_tokens=300, in_flight=3)
    assert picker.pick([busy, queued, light], MEAN).pod == "light"
    assert picker.pick([busy, queued], MEAN).pod == "queued"


def test_prefix_aware_keeps_a_shared_prefix_on_its_pod_until_that_pod_is_overloaded():
    picker = Picker(Strategy.PREFIX_AWARE, overload_tokens=1000)
    warm = Candidate("warm", outstanding_tokens=800, prefix_blocks=4)
    cold = Candidate("cold", outstanding_tokens=0)
    assert picker.pick([warm, cold], MEAN).reason == "prefix"
    assert picker.pick([warm, cold], MEAN).pod == "warm"
    hot = Candidate("warm", outstanding_tokens=1500, prefix_blocks=4)
    assert picker.pick([hot, cold], MEAN).pod == "cold"


def test_an_adapter_goes_where_it_is_active_then_where_there_is_room():
    picker = Picker(Strategy.LEAST_LOAD)
    active = Candidate(
        "active", load=PodLoad(active_adapters=frozenset({"sql"}), max_loras=2), outstanding_tokens=500
    )
    roomy = Candidate(
        "roomy", load=PodLoad(active_adapters=frozenset({"x"}), max_loras=2), outstanding_tokens=200
    )
    full = Candidate("full", load=PodLoad(active_adapters=frozenset({"x", "y"}), max_loras=2))
    assert picker.pick([active, roomy, full], MEAN, adapter="sql").pod == "active"
    assert picker.pick([roomy, full], MEAN, adapter="sql").pod == "roomy"
    assert picker.pick([full], MEAN, adapter="sql").pod == "full"  # nowhere better: the least loaded


def test_no_candidate_is_an_error():
    with pytest.raises(ValueError):
        Picker().pick([], MEAN)


candidates = st.lists(
    st.builds(
        Candidate,
        pod=st.sampled_from("abcdefgh"),
        load=st.none()
        | st.builds(PodLoad, waiting=st.integers(0, 50).map(float), kv_cache_usage=st.floats(0, 1)),
        in_flight=st.integers(0, 20),
        outstanding_tokens=st.integers(0, 20_000),
        prefix_blocks=st.integers(0, 8),
    ),
    min_size=1,
    max_size=8,
    unique_by=lambda c: c.pod,
)


@given(pods=candidates, strategy=st.sampled_from(Strategy), overload=st.integers(0, 5000))
def test_the_pick_is_always_a_candidate_and_never_an_overloaded_one(pods, strategy, overload):
    picker = Picker(strategy, overload_tokens=overload)
    chosen = picker.pick(pods, MEAN)
    assert chosen.pod in {c.pod for c in pods}
    if strategy is not Strategy.ROUND_ROBIN:
        lightest = min(c.load_tokens(MEAN) for c in pods)
        picked = next(c for c in pods if c.pod == chosen.pod)
        assert picked.load_tokens(MEAN) <= lightest + overload
    if strategy is Strategy.LEAST_LOAD:
        assert picked.load_tokens(MEAN) == lightest


@given(pods=candidates, rounds=st.integers(1, 5))
def test_round_robin_is_exactly_even_over_whole_rounds(pods, rounds):
    picker = Picker(Strategy.ROUND_ROBIN)
    picks = Counter(picker.pick(pods, MEAN).pod for _ in range(rounds * len(pods)))
    assert set(picks.values()) == {rounds}
