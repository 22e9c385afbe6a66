from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from moe_runtime.router.endpoints import Endpoint
from moe_runtime.router.load import PodLoad
from moe_runtime.router.metrics import RouterMetrics
from moe_runtime.router.picker import Picker
from moe_runtime.router.requests import RequestView
from moe_runtime.router.state import RouterState
from moe_runtime.router.tracks import CANARY, STABLE


def state_with(stable: int, canary: int, waiting: list[float]):
    state = RouterState(Picker(), RouterMetrics(), served_model="m")
    endpoints = [Endpoint(f"10.0.0.{i}:8000", f"s{i}", STABLE, True) for i in range(stable)]
    endpoints += [Endpoint(f"10.0.1.{i}:8000", f"c{i}", CANARY, True) for i in range(canary)]
    status = {"canary": {"revision": "new", "phase": "Analyzing"}} if canary else {}
    state.update({e.address: e for e in endpoints}, status)
    for endpoint, queue in zip(endpoints, waiting, strict=False):
        state.loads[endpoint.address] = PodLoad(waiting=queue)
    return state


def picks(state, requests: int) -> Counter:
    got = Counter()
    for _ in range(requests):
        choice = state.choose(RequestView(model="m", prompt="", cost_tokens=64))
        got[choice.endpoint.address] += 1
    return got


@settings(max_examples=50, deadline=None)
@given(
    stable=st.integers(1, 6),
    canary=st.integers(1, 3),
    rounds=st.integers(1, 30),
    waiting=st.lists(st.floats(0, 50), max_size=9),
)
def test_while_a_canary_is_judged_every_pod_gets_the_same_requests_whatever_the_load(
    stable, canary, rounds, waiting
):
    pods = stable + canary
    got = picks(state_with(stable, canary, waiting), rounds * pods)
    assert len(got) == pods
    assert max(got.values()) - min(got.values()) <= 2, got


def test_without_a_canary_the_least_loaded_pod_gets_the_requests():
    got = picks(state_with(3, 0, [40.0, 0.0, 40.0]), 30)
    assert got == {"10.0.0.1:8000": 30}


def test_a_rejected_canary_gets_nothing_and_the_stable_pods_go_back_to_least_load():
    state = state_with(2, 1, [40.0, 0.0])
    endpoints = dict(state.endpoints)
    state.update(endpoints, {"canary": {"revision": "new"}, "rejectedRevisions": [{"revision": "new"}]})
    assert picks(state, 20) == {"10.0.0.1:8000": 20}
