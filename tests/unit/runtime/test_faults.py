"""Faults a revision can be told to have, to rehearse a rollout: their grammar and what each one does."""

from __future__ import annotations

import time

import pytest

from moe_runtime.faults import FaultError, Faults, FaultSpec
from moe_runtime.serve.options import parse_args


def test_the_grammar():
    assert FaultSpec.parse(None) == FaultSpec() and not Faults().active
    spec = FaultSpec.parse(
        "token_delay=0.05, long_prompt=256:0.5,hang_every=5:30,unhealthy_after=40,when=/tmp/x"
    )
    assert spec == FaultSpec(0.05, (256, 0.5), (5, 30.0), 40, "/tmp/x")


@pytest.mark.parametrize(
    "text", ["slow=1", "token_delay=-1", "hang_every=0:1", "long_prompt=5", "unhealthy_after=x", "when="]
)
def test_bad_faults_are_refused_naming_the_item(text):
    with pytest.raises(FaultError, match="--inject-faults"):
        FaultSpec.parse(text)


def test_the_flag_and_its_variable():
    args = parse_args(["--model", "m"], {"MOE_RUNTIME_INJECT_FAULTS": "token_delay=0.01"})
    assert args.inject_faults == FaultSpec(token_delay_s=0.01)
    with pytest.raises(SystemExit):
        parse_args(["--model", "m", "--inject-faults", "nonsense=1"], {})


def timed_step(faults: Faults, started: list[int]) -> float:
    began = time.monotonic()
    faults.after_step(started)
    return time.monotonic() - began


def test_steps_slow_down_by_the_token_delay_and_steps_starting_long_prompts_by_more():
    faults = Faults(FaultSpec(token_delay_s=0.05, long_prompt=(100, 0.1)))
    assert 0.05 <= timed_step(faults, []) < 0.15
    assert 0.05 <= timed_step(faults, [100]) < 0.15
    assert timed_step(faults, [3, 101]) >= 0.15


def test_the_step_that_starts_every_nth_request_hangs():
    faults = Faults(FaultSpec(hang_every=(3, 0.2)))
    durations = [timed_step(faults, started) for started in ([5], [5, 5], [], [5], [5], [5])]
    # requests 1 | 2, 3 | - | 4 | 5 | 6: the 3rd and the 6th start in the second and the last step
    assert [d >= 0.2 for d in durations] == [False, True, False, False, False, True]


def test_unhealthy_after_n_requests():
    faults = Faults(FaultSpec(unhealthy_after=2))
    faults.before_request()
    assert faults.unhealthy() is None
    faults.before_request()
    assert "unhealthy after 2 requests" in faults.unhealthy()


def test_faults_act_only_while_their_file_exists(tmp_path):
    switch = tmp_path / "on"
    faults = Faults(FaultSpec.parse(f"token_delay=0.2,unhealthy_after=1,when={switch}"))
    faults.before_request()
    assert timed_step(faults, []) < 0.2 and faults.unhealthy() is None
    switch.touch()
    assert timed_step(faults, []) >= 0.2 and faults.unhealthy() is not None
    switch.unlink()
    assert faults.unhealthy() is None
