"""LoRA adapters through the engine thread (engine/worker.py + adapters/manager.py) against a fake engine that honours the
adapter contract: each request runs with its adapter, loads happen on the loader thread, at most --max-loras
adapters are in the engine, and requests wait for room instead of failing."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from dataclasses import dataclass

import pytest
import torch

from moe_runtime.adapters.manager import LoraManager
from moe_runtime.adapters.sources import AdapterSource
from moe_runtime.engine.sampling import SamplingParams
from moe_runtime.engine.scheduler import FinishReason, SchedulerConfig
from moe_runtime.engine.worker import EngineWorker
from moe_runtime.metrics import RuntimeMetrics
from moe_runtime.model.lora import AdapterError, AdapterNotFound
from tests.unit.runtime.engine.fake_engine import VOCAB, FakeEngine, collect, next_token
from tests.waiting import wait_for


@dataclass(frozen=True)
class FakeAdapter:
    name: str
    path: str
    shift: int
    rank: int = 4
    nbytes: int = 0


class Loads:
    """The loader: `ok:<shift>` loads, `bad:<reason>` is refused; a path in `held` waits for its release."""

    def __init__(self) -> None:
        self.held: dict[str, threading.Event] = {}
        self.count: dict[str, int] = {}

    def hold(self, path: str) -> threading.Event:
        self.held[path] = threading.Event()
        return self.held[path]

    def __call__(self, name, path, config, *, dtype, device, max_rank):
        if path in self.held:
            assert self.held[path].wait(30)
        self.count[name] = self.count.get(name, 0) + 1
        kind, _, detail = path.partition(":")
        if kind == "bad":
            raise AdapterError(name, detail)
        return FakeAdapter(name, path, int(detail))


class AdapterEngine(FakeEngine):
    """A request's adapter shifts its greedy token by the adapter's `shift`."""

    config, dtype, max_lora_rank = None, torch.float32, 16

    def __init__(self) -> None:
        super().__init__()
        self.adapters: dict[str, FakeAdapter] = {}
        self.most_adapters = 0
        self.forward_adapters: list[str] = []

    def add_adapter(self, adapter: FakeAdapter) -> None:
        assert adapter.name not in self.adapters
        self.adapters[adapter.name] = adapter
        self.most_adapters = max(self.most_adapters, len(self.adapters))

    def unload_adapter(self, name: str) -> None:
        if self.adapters.pop(name, None) is None:
            raise AdapterNotFound(name)

    def forward(self, batch):
        shifts = []
        for _, _, adapter in batch:
            if adapter is not None and adapter not in self.adapters:
                raise AdapterNotFound(adapter)
            shifts.append(0 if adapter is None else self.adapters[adapter].shift)
            self.forward_adapters.append(adapter)
        time.sleep(0.002)  # a step takes time: requests overlap
        logits = super().forward([item[:2] for item in batch])
        return torch.stack([row.roll(shift) for row, shift in zip(logits, shifts, strict=True)])


def expected(prompt: list[int], max_tokens: int, shift: int) -> list[int]:
    tokens, out = list(prompt), []
    for _ in range(max_tokens):
        out.append((next_token(tokens) + shift) % VOCAB)
        tokens.append(out[-1])
    return out


def run(manager_options: dict, body, loads: Loads | None = None):
    engine = AdapterEngine()
    metrics = RuntimeMetrics()
    loads = loads or Loads()

    async def main():
        manager = LoraManager(engine, metrics.lora, base_model="base", load=loads, **manager_options)
        worker = EngineWorker(engine, SchedulerConfig(), metrics, asyncio.get_running_loop(), manager)
        worker.start()
        try:
            return await asyncio.wait_for(body(worker, manager), timeout=60)
        finally:
            worker.stop()

    return asyncio.run(main()), engine, metrics


def accepts(worker: EngineWorker, name: str) -> bool:
    try:
        worker.check_adapter(name)
    except AdapterError:
        return False
    return True


def fixed(**adapters: str) -> list[AdapterSource]:
    return [AdapterSource(name, path) for name, path in adapters.items()]


def test_each_request_runs_with_its_adapter_and_beyond_max_loras_requests_wait_instead_of_failing():
    shifts = {"a": 1, "b": 2, "c": 3, "d": 4}
    names = [None, "a", "b", "c", "d", "a", "c", None, "b", "d", "a", "b"]

    async def body(worker, manager):
        await asyncio.to_thread(manager.ready.wait, 10)
        streams = [
            worker.submit([i + 1, 2], SamplingParams(max_tokens=5 + i % 3), None, name)
            for i, name in enumerate(names)
        ]
        return await asyncio.gather(*(collect(s) for s in streams))

    options = {"max_loras": 2, "fixed": fixed(**{n: f"ok:{s}" for n, s in shifts.items()})}
    results, engine, metrics = run(options, body)
    for i, (name, (ids, finished)) in enumerate(zip(names, results, strict=True)):
        assert finished.reason is FinishReason.LENGTH
        assert ids == expected([i + 1, 2], 5 + i % 3, shifts.get(name, 0))
    assert engine.most_adapters == 2
    text = metrics.render().decode()
    assert "moe_runtime_lora_evictions_total" in text and "moe_runtime_lora_evictions_total 0.0" not in text
    assert 'moe_runtime_lora_requests_total{adapter="a"} 3.0' in text
    b_tokens = sum(5 + i % 3 for i, name in enumerate(names) if name == "b")
    assert f'moe_runtime_lora_generation_tokens_total{{adapter="b"}} {b_tokens:.1f}' in text
    assert 'moe_runtime_lora_adapter_loaded{adapter="d"} 1.0' in text


def test_ready_waits_for_the_first_try_of_each_adapter_and_a_refused_one_serves_nothing():
    loads = Loads()
    gate = loads.hold("ok:1")

    async def body(worker, manager):
        await asyncio.sleep(0.3)
        assert not manager.ready.is_set(), "a is still loading"
        gate.set()
        await asyncio.to_thread(manager.ready.wait, 10)
        with pytest.raises(AdapterError, match="failed to load .*above max_lora_rank"):
            worker.check_adapter("wide")
        with pytest.raises(AdapterNotFound):
            worker.submit([1], SamplingParams(), None, "nobody")
        assert worker.adapter_models() == [("a", "ok:1")]
        return await collect(worker.submit([5], SamplingParams(max_tokens=3), None, "a"))

    options = {
        "max_loras": 2,
        "fixed": fixed(a="ok:1", wide="bad:rank 32 of q_proj is above max_lora_rank 16"),
    }
    (ids, finished), _, metrics = run(options, body, loads)
    assert ids == expected([5], 3, 1) and finished.reason is FinishReason.LENGTH
    text = metrics.render().decode()
    assert 'moe_runtime_lora_adapter_load_error{adapter="wide",reason="rank_above_max"} 1.0' in text
    assert 'moe_runtime_lora_load_failures_total{adapter="wide",reason="rank_above_max"} 1.0' in text
    assert 'moe_runtime_lora_adapter_loaded{adapter="wide"} 0.0' in text


def test_a_removed_adapter_finishes_its_accepted_requests_then_unloads():
    async def body(worker, manager):
        manager.set_listed(fixed(a="ok:1", b="ok:2"))
        await asyncio.to_thread(manager.ready.wait, 10)
        await asyncio.to_thread(wait_for, lambda: {"a", "b"} <= set(worker.engine.adapters), 10)
        running = worker.submit([7], SamplingParams(max_tokens=60), None, "a")
        events = aiter(running)
        first = await anext(events)
        manager.set_listed(fixed(b="ok:2"))
        await asyncio.to_thread(wait_for, lambda: [n for n, _ in worker.adapter_models()] == ["b"], 10)
        with pytest.raises(AdapterNotFound):
            worker.submit([7], SamplingParams(), None, "a")
        rest = await collect(events)
        await asyncio.to_thread(wait_for, lambda: set(worker.engine.adapters) == {"b"}, 10)
        return first.ids + rest[0], rest[1]

    (ids, finished), _, metrics = run({"max_loras": 2, "watched": True}, body)
    assert finished.reason is FinishReason.LENGTH and ids == expected([7], 60, 1)
    assert 'adapter="a"' not in metrics.render().decode(), "the removed adapter's series went with it"


def test_requests_waiting_for_a_first_load_that_fails_end_as_adapter_failed_and_others_go_on():
    loads = Loads()
    gate = loads.hold("bad:DoRA (use_dora) is not supported")

    async def body(worker, manager):
        manager.set_listed(fixed(a="ok:1"))
        await asyncio.to_thread(manager.ready.wait, 10)
        manager.set_listed(fixed(a="ok:1", dora="bad:DoRA (use_dora) is not supported"))
        await asyncio.to_thread(wait_for, lambda: accepts(worker, "dora"), 10)
        doomed = worker.submit([3], SamplingParams(max_tokens=2), None, "dora")
        fine = worker.submit([3], SamplingParams(max_tokens=2), None, "a")
        gate.set()
        return await asyncio.gather(collect(doomed), collect(fine))

    ((_, doomed), (ids, fine)), _, metrics = run({"max_loras": 1, "watched": True}, body, loads)
    assert doomed.reason is FinishReason.ADAPTER_FAILED
    assert fine.reason is FinishReason.LENGTH and ids == expected([3], 2, 1)
    assert (
        'moe_runtime_lora_load_failures_total{adapter="dora",reason="dora"} 1.0' in metrics.render().decode()
    )


def test_a_load_that_hangs_holds_back_no_other_adapter():
    """A load stuck on a dead volume held the one loader thread: no adapter after it ever loaded."""
    loads = Loads()
    stuck = loads.hold("ok:9")

    async def body(worker, manager):
        loaded = lambda: "b" in worker.engine.adapters  # noqa: E731
        await asyncio.to_thread(wait_for, loaded, 10, what="b loaded while a hangs")
        result = await collect(worker.submit([5], SamplingParams(max_tokens=3), None, "b"))
        stuck.set()
        return result

    (ids, finished), _, _ = run({"max_loras": 2, "fixed": fixed(a="ok:9", b="ok:2")}, body, loads)
    assert ids == expected([5], 3, 2) and finished.reason is FinishReason.LENGTH


def test_a_load_past_its_timeout_fails_alone_readiness_comes_and_its_late_answer_is_dropped():
    """Restarted pods waited on a hung adapter before Ready: a try ends at --lora-load-timeout."""
    loads = Loads()
    stuck = loads.hold("ok:9")

    async def body(worker, manager):
        await asyncio.to_thread(manager.ready.wait, 10)
        with pytest.raises(AdapterError, match="failed to load .*longer than 0.5 s"):
            worker.check_adapter("a")
        assert [name for name, _ in worker.adapter_models()] == ["b"]
        stuck.set()  # the hung read returns at last: too late to count
        await asyncio.to_thread(
            wait_for, lambda: "a" in worker.engine.adapters, 10, what="a loaded on its retry"
        )
        return await collect(worker.submit([5], SamplingParams(max_tokens=3), None, "a"))

    options = {"max_loras": 2, "fixed": fixed(a="ok:9", b="ok:2"), "load_timeout_s": 0.5}
    (ids, finished), engine, metrics = run(options, body, loads)
    assert ids == expected([5], 3, 9) and finished.reason is FinishReason.LENGTH
    assert (
        'moe_runtime_lora_load_failures_total{adapter="a",reason="timeout"} 1.0' in metrics.render().decode()
    )


class PickyEngine(AdapterEngine):
    """An engine that refuses to take one adapter (on the engine thread, after it loaded)."""

    def add_adapter(self, adapter) -> None:
        if adapter.name == "odd":
            raise AdapterError(adapter.name, "the engine refuses it")
        super().add_adapter(adapter)


def test_an_adapter_the_engine_refuses_fails_alone_and_the_engine_thread_goes_on(monkeypatch):
    """An error about one adapter on the engine thread ended the engine loop: every request failed."""
    monkeypatch.setattr(sys.modules[__name__], "AdapterEngine", PickyEngine)

    async def body(worker, manager):
        await asyncio.to_thread(manager.ready.wait, 10)
        with pytest.raises(AdapterError, match="failed to load .*the engine refuses it"):
            worker.check_adapter("odd")
        return await collect(worker.submit([5], SamplingParams(max_tokens=3), None, "b"))

    (ids, finished), engine, _ = run({"max_loras": 2, "fixed": fixed(odd="ok:1", b="ok:2")}, body)
    assert ids == expected([5], 3, 2) and finished.reason is FinishReason.LENGTH


def test_the_inference_extension_gauge_names_the_adapters_running_and_waiting():
    loads = Loads()
    gate = loads.hold("ok:2")

    async def body(worker, manager):
        await asyncio.to_thread(manager.ready.wait, 10)
        running = worker.submit([1], SamplingParams(max_tokens=10**6), None, "a")
        await anext(aiter(running))
        manager.set_listed(fixed(b="ok:2"))
        await asyncio.to_thread(wait_for, lambda: accepts(worker, "b"), 10)
        waiting = worker.submit([1], SamplingParams(max_tokens=1), None, "b")

        def exported():
            line = next(x for x in worker.metrics.render().decode().splitlines() if x.startswith("vllm:lora"))
            return 'running_lora_adapters="a"' in line and 'waiting_lora_adapters="b"' in line and line

        line = await asyncio.to_thread(wait_for, exported, 10)
        running.cancel()
        gate.set()
        await collect(waiting)
        return line

    line, _, _ = run({"max_loras": 1, "fixed": fixed(a="ok:1"), "watched": True}, body, loads)
    labels, value = line.rsplit(" ", 1)
    assert (
        labels == 'vllm:lora_requests_info{max_lora="1",running_lora_adapters="a",waiting_lora_adapters="b"}'
    )
    assert abs(float(value) - time.time()) < 60, "the value is the time of the last step"


def test_without_adapters_nothing_lora_is_exported_and_adapter_names_are_unknown():
    async def body(worker, manager):
        assert manager.ready.is_set()
        with pytest.raises(AdapterNotFound):
            worker.submit([1], SamplingParams(), None, "a")
        return await collect(worker.submit([1], SamplingParams(max_tokens=2), None))

    (ids, _), engine, metrics = run({"max_loras": 1}, body)
    assert ids == expected([1], 2, 0) and set(engine.forward_adapters) == {None}
    assert "lora" not in metrics.render().decode()
