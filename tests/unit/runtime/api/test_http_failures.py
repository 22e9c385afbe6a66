"""The HTTP side when the engine misbehaves: stuck (the backstop deadline answers), dead (503 everywhere), or
slow to tokenize (other requests and the probes go on meanwhile)."""

import asyncio
import itertools
import json
import threading
from types import SimpleNamespace

import httpx
import pytest

from moe_runtime.api.app import ServingState, create_app
from moe_runtime.api.choices import Limits
from moe_runtime.engine.scheduler import FinishReason
from moe_runtime.engine.streams import Finished, GenerationStream, OpenStreams
from moe_runtime.metrics import RuntimeMetrics

BODY = {"prompt": "hello", "max_tokens": 4}


class FakeTokenizer:
    eos_token_ids = frozenset()

    def __init__(self, encode_gate: threading.Event | None = None) -> None:
        self.encode_gate = encode_gate
        self.encoding = threading.Event()

    def encode(self, text: str) -> list[int]:
        self.encoding.set()
        if self.encode_gate is not None:
            self.encode_gate.wait(timeout=5)
        return [1] * len(text)

    def decode(self, ids: list[int]) -> str:
        return "x" * len(ids)


class SilentWorker:
    """Takes requests and never answers, as an engine stuck in a step would."""

    def __init__(self, metrics: RuntimeMetrics, tokenizer=None) -> None:
        self.engine = SimpleNamespace(tokenizer=tokenizer or FakeTokenizer())
        self.failure: Exception | None = None
        self.step_running_for: float | None = None
        self.cancelled: list[str] = []
        self.idle = False
        self._streams = OpenStreams(metrics)
        self._ids = itertools.count()

    def seconds_in_step(self) -> float | None:
        return self.step_running_for

    def submit_all(self, sequences, timeout_s) -> list[GenerationStream]:
        return [
            GenerationStream(f"req-{next(self._ids)}", len(seq.prompt), self.cancelled.append, self._streams)
            for seq in sequences
        ]


class EndingWorker(SilentWorker):
    """Ends every request it takes, at once, with `reason` and no output."""

    def __init__(self, metrics: RuntimeMetrics, reason: FinishReason) -> None:
        super().__init__(metrics)
        self.reason = reason

    def submit_all(self, sequences, timeout_s) -> list[GenerationStream]:
        streams = super().submit_all(sequences, timeout_s)
        for stream in streams:
            asyncio.get_running_loop().call_soon(stream.put, Finished(self.reason, stream.prompt_tokens, 0))
        return streams


def serving(worker_factory=SilentWorker, **kw) -> ServingState:
    state = ServingState(RuntimeMetrics(), **{"request_timeout_s": 0.05, "backstop_margin_s": 0.05, **kw})
    state.activate(
        worker_factory(state.metrics), "m", Limits(max_context=100, vocab_size=50, default_max_tokens=4)
    )
    return state


async def client_for(state: ServingState):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(state)), base_url="http://test")


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, timeout=20))


def test_a_request_the_engine_never_answers_ends_at_the_backstop_deadline():
    state = serving()

    async def go():
        async with await client_for(state) as client:
            whole = await client.post("/v1/completions", json=BODY)
            streamed = await client.post("/v1/completions", json={**BODY, "stream": True})
            return whole, streamed

    whole, streamed = run(go())
    assert whole.status_code == 504 and whole.json()["error"]["type"] == "timeout_error"
    events = [line for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert '"timeout_error"' in events[-2] and events[-1] == "data: [DONE]"
    assert set(state.worker.cancelled) == {"req-0", "req-1"}  # the engine is told to drop them
    metrics = state.metrics.registry
    assert metrics.get_sample_value("moe_runtime_request_latency_seconds_count") == 2
    assert metrics.get_sample_value("moe_runtime_requests_total", {"status": "504"}) == 2
    assert metrics.get_sample_value("moe_runtime_oldest_request_age_seconds") == 0


@pytest.mark.parametrize(
    ("reason", "status", "error_type", "code"),
    [
        (FinishReason.ERROR, 500, "server_error", None),
        (FinishReason.TIMEOUT, 504, "timeout_error", "timeout"),
        (FinishReason.ADAPTER_FAILED, 404, "invalid_request_error", "model_not_found"),
    ],
)
def test_a_request_ended_without_an_answer_gets_the_status_of_its_reason(reason, status, error_type, code):
    state = serving(lambda metrics: EndingWorker(metrics, reason), request_timeout_s=None)

    async def go():
        async with await client_for(state) as client:
            whole = await client.post("/v1/completions", json=BODY)
            streamed = await client.post("/v1/completions", json={**BODY, "stream": True})
            return whole, streamed

    whole, streamed = run(go())
    error = whole.json()["error"]
    assert (whole.status_code, error["type"], error["code"]) == (status, error_type, code)
    # the headers went out before the ending: the error travels as the stream's last event
    assert streamed.status_code == 200
    events = [line.removeprefix("data: ") for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    streamed_error = json.loads(events[-2])["error"]
    assert (streamed_error["type"], streamed_error["code"]) == (error_type, code)


def probe_all(state: ServingState) -> tuple[httpx.Response, httpx.Response, httpx.Response]:
    """/health, /ready and a generation request, in that order."""

    async def go():
        async with await client_for(state) as client:
            return (
                await client.get("/health"),
                await client.get("/ready"),
                await client.post("/v1/completions", json=BODY),
            )

    return run(go())


def test_a_failed_engine_turns_health_and_readiness_to_503_and_refuses_requests():
    state = serving()
    state.worker.failure = RuntimeError("CUDA error: an illegal memory access was encountered")
    health, ready, generation = probe_all(state)
    assert health.status_code == 503 and "illegal memory access" in health.json()["error"]
    assert (ready.status_code, ready.json()) == (503, {"status": "failed"})
    assert generation.status_code == 503 and generation.json()["error"]["code"] == "failed"


@pytest.mark.parametrize(
    ("stall_timeout", "step_running_for", "stalled"),
    [(None, 10_000.0, False), (60.0, None, False), (60.0, 59.0, False), (60.0, 61.0, True)],
)
def test_an_engine_step_past_the_stall_timeout_turns_health_and_readiness_to_503(
    stall_timeout, step_running_for, stalled
):
    state = serving(engine_stall_timeout_s=stall_timeout)
    state.worker.step_running_for = step_running_for
    health, ready, generation = probe_all(state)
    if not stalled:
        assert (health.status_code, ready.status_code) == (200, 200)
        return
    assert health.status_code == 503
    assert health.json() == {
        "status": "stalled",
        "error": "one engine step has run for 61 s, past the stall timeout of 60 s: a kernel may hang",
    }
    assert (ready.status_code, ready.json()) == (503, {"status": "stalled"})
    assert generation.status_code == 503 and generation.json()["error"]["code"] == "stalled"


def test_a_slow_step_that_ends_after_the_stall_timeout_makes_the_server_healthy_again():
    state = serving(engine_stall_timeout_s=60.0)

    async def probe(step_running_for: float | None) -> int:
        state.worker.step_running_for = step_running_for
        async with await client_for(state) as client:
            return (await client.get("/health")).status_code

    assert [run(probe(s)) for s in (61.0, None, 0.5)] == [503, 200, 200]


def test_health_answers_while_a_prompt_is_being_tokenized():
    gate = threading.Event()
    tokenizer = FakeTokenizer(encode_gate=gate)
    state = serving(lambda metrics: SilentWorker(metrics, tokenizer), request_timeout_s=None)

    async def go():
        async with await client_for(state) as client:
            generation = asyncio.create_task(client.post("/v1/completions", json={**BODY, "max_tokens": 1}))
            while not tokenizer.encoding.is_set():
                await asyncio.sleep(0.01)
            health = await client.get("/health")
            answered_while_tokenizing = not gate.is_set()
            gate.set()
            generation.cancel()
            return health, answered_while_tokenizing

    health, answered_while_tokenizing = run(go())
    assert health.status_code == 200 and answered_while_tokenizing
