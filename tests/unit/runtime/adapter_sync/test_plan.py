"""The sidecar's decisions: what to unload and load, when to retry, when the pod is ready, the reason words."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moe_runtime.adapter_sync.plan import (
    RETRY_CAP_S,
    RETRY_INITIAL_S,
    Actions,
    Load,
    engine_reason,
    failed,
    plan,
    snapshot,
)
from moe_runtime.adapters.reasons import REASONS
from moe_runtime.adapters.sources import AdapterSource as A


def test_loads_what_is_listed_and_unloads_what_is_not():
    actions = plan([A("a", "/p/a"), A("b", "/p/b")], {"b": "/p/b", "x": "/p/x"}, {}, now=0)
    assert actions == Actions(unloads=("x",), loads=(Load("a", "/p/a", replace=False),))


def test_an_adapter_listed_from_another_path_is_loaded_again_in_place():
    assert plan([A("a", "/new")], {"a": "/old"}, {}, now=0).loads == (Load("a", "/new", replace=True),)


def test_a_failed_load_waits_for_its_retry_unless_its_path_changed():
    failure = failed(None, "/p/a", "missing_files", "No adapter found", now=100)
    assert failure.retry_at == 100 + RETRY_INITIAL_S
    assert plan([A("a", "/p/a")], {}, {"a": failure}, now=101).loads == ()
    assert plan([A("a", "/p/a")], {}, {"a": failure}, now=failure.retry_at).loads == (
        Load("a", "/p/a", False),
    )
    assert plan([A("a", "/fixed")], {}, {"a": failure}, now=101).loads == (Load("a", "/fixed", False),)


def test_retries_back_off_doubling_up_to_the_cap_and_start_over_for_a_new_path():
    failure = None
    delays = []
    for attempt in range(12):
        failure = failed(failure, "/p", "other", "boom", now=attempt * 1000.0)
        delays.append(failure.retry_at - attempt * 1000.0)
    assert delays[:3] == [RETRY_INITIAL_S, 2 * RETRY_INITIAL_S, 4 * RETRY_INITIAL_S]
    assert max(delays) == RETRY_CAP_S == delays[-1]
    assert failed(failure, "/other", "other", "boom", now=0).attempts == 1


def test_ready_only_once_the_engine_answered_and_every_listed_adapter_is_loaded_or_failed():
    listed = [A("a", "/p/a"), A("b", "/p/b")]
    assert not snapshot(None, {}, {}).settled, "the list was not read yet"
    assert not snapshot(listed, None, {}).settled, "the engine did not answer"
    assert not snapshot(listed, {"a": "/p/a"}, {}).settled, "b is still to load"
    failure = failed(None, "/p/b", "rank_above_max", "LoRA rank 16 is greater than max_lora_rank 8", now=0)
    done = snapshot(listed, {"a": "/p/a"}, {"b": failure})
    assert done.settled
    assert (done.states["a"].loaded, done.states["a"].error) == (True, None)
    assert (done.states["b"].loaded, done.states["b"].error) == (False, "rank_above_max")
    # a failure from an older path says nothing about the current one
    assert not snapshot([A("b", "/p/b2")], {}, {"b": failure}).settled
    assert snapshot([], {}, {}).settled, "no adapters: ready as soon as the engine answers"


names = st.sampled_from(["a", "b", "c", "d"])
paths = st.sampled_from(["/p/1", "/p/2", "/p/3"])


@given(
    listed=st.dictionaries(names, paths),
    loaded=st.dictionaries(names, paths),
    failed_names=st.sets(names),
    now=st.floats(min_value=0, max_value=1000),
)
def test_never_unloads_a_listed_adapter_nor_loads_one_twice(listed, loaded, failed_names, now):
    sources = [A(n, p) for n, p in listed.items()]
    failures = {n: failed(None, listed.get(n, "/p/1"), "other", "x", now=500) for n in failed_names}
    actions = plan(sources, loaded, failures, now)
    assert not set(actions.unloads) & set(listed)
    assert len({load.name for load in actions.loads}) == len(actions.loads)
    for load in actions.loads:
        assert listed[load.name] == load.path and loaded.get(load.name) != load.path
        assert load.replace == (load.name in loaded)
    # once the engine holds exactly the list, there is nothing left to do
    assert plan(sources, dict(listed), failures, now) == Actions()


@pytest.mark.parametrize(
    ("status", "message", "reason"),
    [
        # the answers of a vLLM 0.32.0 server, measured
        (404, "Loading lora missing failed: No adapter found for /nonexistent/adapter", "missing_files"),
        (500, "Call to add_lora method failed: Worker failed with error 'LoRA rank 16 is greater than "
              "max_lora_rank 8.', please check the stack trace above", "rank_above_max"),
        (500, "Worker failed with error 'LoRA adapter 4 contains fused 3D MoE weights for "
              "'model.layers.0.mlp.experts', but the model uses a 2D MoE LoRA wrapper.'", "unsupported_config"),
        (500, "While loading /a, expected target modules in {'q_proj', 'v_proj'} but received "
              "['model.layers.0.mlp.experts']", "unsupported_target"),
        (404, "something else entirely", "missing_files"),
        (500, "CUDA out of memory", "out_of_memory"),
        (500, "boom", "other"),
    ],
)  # fmt: skip
def test_engine_refusals_become_the_runtimes_reason_words(status, message, reason):
    assert engine_reason(status, message) == reason
    assert reason in REASONS
