"""Streamed answers are the whole answers in pieces: for every combination of the fields that shape a choice
(stop strings, include_stop_str_in_output, skip_special_tokens, min_tokens, stop tokens, ignore_eos, echo,
logprobs, n and batches) the chunks of each choice concatenate to that choice of the non-streamed answer,
text, log-probabilities, finish and stop reasons alike, and usage adds up."""

from __future__ import annotations

import asyncio
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from moe_runtime.api.choices import Choices, Job
from moe_runtime.api.responses import CHAT, COMPLETIONS, Answer
from moe_runtime.engine.logprobs import TokenLogprob
from moe_runtime.engine.sampling import SamplingParams
from moe_runtime.engine.scheduler import FinishReason
from moe_runtime.engine.streams import Finished, GenerationStream, OpenStreams, PromptLogprobs, Tokens
from moe_runtime.metrics import RuntimeMetrics

EOS = 256  # a special token
STOP_ID = 98  # "b", when a choice makes it a stop token id
EURO = [0xE2, 0x82, 0xAC]  # one character in three tokens


class ByteTokenizer:
    eos_token_ids = frozenset({EOS})

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        parts = [b"<eos>" if t == EOS else bytes([t]) for t in ids if t != EOS or not skip_special_tokens]
        return b"".join(parts).decode("utf-8", errors="replace")

    def token_text(self, token: int) -> str:
        return self.decode([token], skip_special_tokens=False)


class NeverDisconnects:
    async def receive(self) -> dict:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def entry(token: int, position: int) -> TokenLogprob:
    return TokenLogprob(token, -0.5 - position, ((token, -0.5 - position), (97, -9.0)))


@st.composite
def choices(draw):
    """One choice: its job and the events its sequence produces."""
    prompt = draw(st.lists(st.sampled_from([97, 98, 99, 10]), min_size=1, max_size=4))
    ignore_eos = draw(st.booleans())
    alphabet = [97, 98, 99, 10, *EURO] + ([EOS] if ignore_eos else [])
    generated = draw(st.lists(st.sampled_from(alphabet), min_size=1, max_size=10))  # the engine makes 1+
    stop_ids = (STOP_ID,) if draw(st.booleans()) else ()
    if stop_ids and STOP_ID in generated:  # a stop token ends the sequence where it first comes
        generated = generated[: generated.index(STOP_ID) + 1]
    ending = draw(st.sampled_from(["length", "stop token"])) if generated else "length"
    stop_token = ending == "stop token" and (generated[-1] in stop_ids or not ignore_eos)
    if ending == "stop token" and not stop_token:
        generated.append(EOS)
        stop_token = True
    stop_token = stop_token and bool(generated)
    min_tokens = draw(st.integers(0, max(0, len(generated) - (1 if stop_token else 0))))
    logprobs = draw(st.sampled_from([None, 0, 2]))
    echo = draw(st.booleans())
    show_output = not echo or draw(st.booleans())
    params = SamplingParams(
        max_tokens=max(1, len(generated)),
        min_tokens=min_tokens if show_output else 0,
        logprobs=logprobs,
        prompt_logprobs=logprobs if echo else None,
        stop_token_ids=stop_ids,
    )
    job = Job(
        prompt,
        params,
        stop=tuple(draw(st.lists(st.text(alphabet="abc\n€", min_size=1, max_size=3), max_size=2))),
        echo=echo,
        prefix=ByteTokenizer().decode(prompt),
        show_output=show_output,
        include_stop_str=draw(st.booleans()),
        skip_special_tokens=draw(st.booleans()),
        stop_reason_ids=frozenset(stop_ids),
    )
    events = []
    if echo and logprobs is not None and len(prompt) > 1:
        cut = draw(st.integers(1, len(prompt) - 1))  # prefill in two chunks
        entries = [entry(t, i) for i, t in enumerate(prompt)][1:]
        events += [PromptLogprobs(entries[:cut]), PromptLogprobs(entries[cut:])]
        events = [e for e in events if e.entries]
    for i, token in enumerate(generated):
        last = i == len(generated) - 1
        events.append(
            Tokens([token], None if logprobs is None else [entry(token, i)], stop=last and stop_token)
        )
    reason = FinishReason.STOP if stop_token else FinishReason.LENGTH
    events.append(Finished(reason, len(prompt), len(generated)))
    return job, events


def run(
    endpoint, picked: list, stream: bool, continuous: bool, n: int = 1
) -> tuple[list[str] | dict, list[int]]:
    statuses: list[int] = []

    async def answer():
        metrics = RuntimeMetrics()
        streams = []
        for job, events in picked:
            generation = GenerationStream("r", len(job.prompt_ids), lambda _: None, OpenStreams(metrics))
            for event in events:
                generation.put(event)
            streams.append(generation)
        jobs = [job for job, _ in picked]
        prompt_tokens = sum(len(job.prompt_ids) for job in jobs[::n])
        answer = Answer(
            endpoint,
            "m",
            ByteTokenizer(),
            NeverDisconnects(),
            streams,
            Choices(jobs, prompt_tokens, n),
            statuses.append,
        )
        if not stream:
            return await answer.whole()
        return [event async for event in answer.events(include_usage=True, continuous_usage=continuous)]

    return asyncio.run(asyncio.wait_for(answer(), timeout=10)), statuses


def reassemble(endpoint, events: list[str], n: int, continuous: bool) -> tuple[list[dict], dict]:
    """Each choice's text, logprobs, finish and stop reasons from its chunks; and the final usage."""
    assert events[-1] == "data: [DONE]\n\n"
    bodies = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    merged = [{"text": "", "logprobs": None, "finish_reason": None, "stop_reason": None} for _ in range(n)]
    for body in bodies[:-1]:
        assert body["usage"] is not None if continuous else "usage" not in body
        (choice,) = body["choices"]
        into = merged[choice["index"]]
        into["text"] += choice["text"] if endpoint is COMPLETIONS else choice["delta"].get("content", "")
        if choice["logprobs"] is not None:
            if into["logprobs"] is None:
                into["logprobs"] = {key: [] for key in choice["logprobs"]}
            for key, values in choice["logprobs"].items():
                into["logprobs"][key] += values
        if choice["finish_reason"] is not None:
            into["finish_reason"], into["stop_reason"] = choice["finish_reason"], choice["stop_reason"]
    assert bodies[-1]["choices"] == []
    return merged, bodies[-1]["usage"]


@settings(max_examples=150, deadline=None)
@given(picked=st.lists(choices(), min_size=1, max_size=3), chat=st.booleans(), continuous=st.booleans())
def test_streamed_chunks_of_each_choice_concatenate_to_the_whole_answer(picked, chat, continuous):
    endpoint = CHAT if chat else COMPLETIONS
    if chat:  # chat has no echo
        picked = [(job, [e for e in events if not isinstance(e, PromptLogprobs)]) for job, events in picked]
        picked = [
            (Job(**{**job.__dict__, "echo": False, "show_output": True}), events) for job, events in picked
        ]
    whole, whole_statuses = run(endpoint, picked, stream=False, continuous=continuous)
    events, stream_statuses = run(endpoint, picked, stream=True, continuous=continuous)
    assert whole_statuses == stream_statuses == [200]
    streamed, usage = reassemble(endpoint, events, len(picked), continuous)
    assert usage == whole["usage"]
    for index, (job, _) in enumerate(picked):
        choice = whole["choices"][index]
        text = choice["text"] if endpoint is COMPLETIONS else choice["message"]["content"]
        assert streamed[index]["text"] == text
        assert (streamed[index]["finish_reason"], streamed[index]["stop_reason"]) == (
            choice["finish_reason"],
            choice["stop_reason"],
        )
        assert streamed[index]["logprobs"] == choice["logprobs"]
        if job.echo:
            assert text.startswith(job.prefix)


def test_no_stop_string_completes_within_the_first_min_tokens_tokens():
    """vLLM: a stop string may begin in the first min_tokens tokens' text but only end after them."""

    def text_of(min_tokens: int) -> str:
        job = Job([97], SamplingParams(max_tokens=4, min_tokens=min_tokens), stop=("ab",))
        events = [Tokens([t]) for t in (97, 98, 97, 98)] + [Finished(FinishReason.LENGTH, 1, 4)]
        whole, _ = run(COMPLETIONS, [(job, events)], stream=False, continuous=False)
        return whole["choices"][0]["text"]

    assert text_of(0) == "" and text_of(1) == "" and text_of(2) == "ab" and text_of(4) == "abab"


def test_usage_reports_the_cached_prompt_tokens_of_each_prompt_once_whatever_n():
    """A prompt counts once in usage, whatever n: its cached tokens are those the prefix cache held for all of
    its choices. A choice that a stop string ends (before the engine's Finished) reports them too. The streamed
    total says the same; vLLM's per-chunk usage does not know them yet and leaves them out."""

    def choice(cached: int, stop: tuple[str, ...] = ()) -> tuple[Job, list]:
        tokens = [Tokens([t], cached_tokens=cached) for t in (97, 98)]
        job = Job([99] * 40, SamplingParams(max_tokens=2), stop=stop)
        return job, [*tokens, Finished(FinishReason.LENGTH, 40, 2)]

    picked = [choice(32), choice(16, stop=("ab",)), choice(32), choice(32)]  # 2 prompts, n = 2
    whole, _ = run(COMPLETIONS, picked, stream=False, continuous=False, n=2)
    assert whole["choices"][1]["stop_reason"] == "ab"
    assert whole["usage"] == {
        "prompt_tokens": 80,
        "completion_tokens": 8,
        "total_tokens": 88,
        "prompt_tokens_details": {"cached_tokens": 16 + 32},
    }
    events, _ = run(COMPLETIONS, picked, stream=True, continuous=True, n=2)
    bodies = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert bodies[-1]["usage"] == whole["usage"]
    assert all("prompt_tokens_details" not in body["usage"] for body in bodies[:-1])
