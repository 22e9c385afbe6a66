"""Faults a revision can be told to have, to rehearse a rollout: their grammar and what each one does."""

from __future__ import annotations

import asyncio
import time

import pytest

from moe_runtime.faults import FaultError, Faults, FaultSpec
from moe_runtime.serve.options import parse_args


def test_the_grammar():
    assert FaultSpec.parse(None) == FaultSpec() and not Faults().active
    spec = FaultSpec.parse("token_delay=0.05, long_prompt=256:0.5,hang_every=5:30,unhealthy_after=40")
    assert spec == FaultSpec(0.05, (256, 0.5), (5, 30.0), 40)


@pytest.mark.parametrize(
    "text", ["slow=1", "token_delay=-1", "hang_every=0:1", "long_prompt=5", "unhealthy_after=x"]
)
def test_bad_faults_are_refused_naming_the_item(text):
    with pytest.raises(FaultError, match="--inject-faults|unknown fault"):
        FaultSpec.parse(text)


def test_the_flag_and_its_variable():
    args = parse_args(["--model", "m"], {"MOE_RUNTIME_INJECT_FAULTS": "token_delay=0.01"})
    assert args.inject_faults == FaultSpec(token_delay_s=0.01)
    with pytest.raises(SystemExit):
        parse_args(["--model", "m", "--inject-faults", "nonsense=1"], {})


def test_every_nth_request_waits_and_the_others_do_not():
    faults = Faults(FaultSpec(hang_every=(3, 0.2)))

    async def timed():
        started = time.monotonic()
        await faults.before_request()
        return time.monotonic() - started

    waits = asyncio.run(_gather([timed for _ in range(6)]))
    assert [w >= 0.2 for w in waits] == [False, False, True, False, False, True]


async def _gather(makers):
    out = []
    for make in makers:  # one after another: each request's number is its place
        out.append(await make())
    return out


def test_steps_slow_down_by_the_token_delay_and_long_prompts_by_more():
    faults = Faults(FaultSpec(token_delay_s=0.05, long_prompt=(100, 0.1)))
    for prefill, least in ((0, 0.05), (100, 0.05), (101, 0.15)):
        started = time.monotonic()
        faults.after_step(prefill)
        assert time.monotonic() - started >= least


def test_unhealthy_after_n_requests():
    faults = Faults(FaultSpec(unhealthy_after=2))
    asyncio.run(faults.before_request())
    assert faults.unhealthy() is None
    asyncio.run(faults.before_request())
    assert "unhealthy after 2 requests" in faults.unhealthy()
