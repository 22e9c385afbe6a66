"""Prefix caching through the engine thread with the real engine: a request that starts like an earlier one
prefills only what is new, answers exactly as without the cache, and the hit rate reaches the metrics."""

from __future__ import annotations

import asyncio

from moe_runtime.engine.engine import Engine
from moe_runtime.engine.sampling import SamplingParams
from moe_runtime.engine.scheduler import SchedulerConfig
from moe_runtime.engine.streams import Tokens
from moe_runtime.engine.worker import EngineWorker
from moe_runtime.faults import Faults, FaultSpec
from moe_runtime.metrics import RuntimeMetrics
from tests.unit.runtime.engine.fake_engine import collect
from tests.unit.runtime.helpers import prompt_ids


def serve_one_after_another(
    engine: Engine,
    prompts: list[list[int]],
    params: SamplingParams,
    faults: Faults | None = None,
    prefill_chunk: int = 256,
    collector=collect,
):
    metrics = RuntimeMetrics()

    async def main():
        config = SchedulerConfig(
            block_size=engine.block_size, kv_capacity_tokens=engine.max_kv_tokens, prefill_chunk=prefill_chunk
        )
        worker = EngineWorker(engine, config, metrics, asyncio.get_running_loop(), faults=faults)
        worker.start()
        try:
            return [await collector(worker.submit(prompt, params, None)) for prompt in prompts]
        finally:
            worker.stop()

    return asyncio.run(main()), metrics


def counter(metrics: RuntimeMetrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


def test_a_shared_prefix_is_prefilled_once_and_answers_do_not_change(checkpoints):
    system = prompt_ids(5, 50)  # 3 full blocks of 16
    prompts = [system + prompt_ids(6, 5), system + prompt_ids(7, 3), system + prompt_ids(6, 5)]
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    outputs = {}
    for caching in (True, False):
        engine = Engine.load(checkpoints["qwen3_moe"], block_size=16, prefix_caching=caching)
        results, metrics = serve_one_after_another(engine, prompts, params)
        outputs[caching] = [ids for ids, _ in results]
        prefilled = counter(metrics, "moe_runtime_prompt_tokens_total")
        hits = counter(metrics, "moe_runtime_prefix_cache_hits_total")
        if caching:
            # the second and third find the system prompt's 3 blocks; the third finds nothing more (its last
            # block holds its last prompt token, which is always computed)
            assert hits == 2 * 48 == counter(metrics, "vllm:prefix_cache_hits_total")
            assert counter(metrics, "vllm:prefix_cache_queries_total") == sum(len(p) for p in prompts)
            assert prefilled == sum(len(p) for p in prompts) - hits
        else:
            assert hits == 0 and prefilled == sum(len(p) for p in prompts)
        assert engine.kv_cache_usage() == 0  # every block was given back (cached ones are free to take)
    assert outputs[True] == outputs[False]
    assert outputs[True][0] == outputs[True][2]


def test_prompt_logprobs_bypass_the_cache(checkpoints):
    engine = Engine.load(checkpoints["qwen2_moe"], block_size=8)
    prompt = prompt_ids(8, 30)
    params = SamplingParams(max_tokens=2, prompt_logprobs=0)
    results, metrics = serve_one_after_another(engine, [prompt, prompt], params)
    assert counter(metrics, "moe_runtime_prefix_cache_hits_total") == 0
    assert counter(metrics, "moe_runtime_prompt_tokens_total") == 60
    assert results[0][0] == results[1][0]


async def cached_tokens(stream) -> list[int]:
    """What each token event of the stream says the prefix cache held of the prompt (usage reports it)."""
    return [event.cached_tokens async for event in stream if isinstance(event, Tokens)]


def test_token_events_say_how_many_prompt_tokens_came_from_the_cache(checkpoints):
    prompt = prompt_ids(9, 30)  # 3 full blocks of 8 before the block of its last token
    params = SamplingParams(max_tokens=3, ignore_eos=True)
    for caching in (True, False):
        engine = Engine.load(checkpoints["qwen2_moe"], block_size=8, prefix_caching=caching)
        reported, _ = serve_one_after_another(engine, [prompt, prompt], params, collector=cached_tokens)
        assert reported == [[0] * 3, [24 if caching else 0] * 3]


class RecordedFaults(Faults):
    """Faults that record the prompt lengths the engine thread hands them each step."""

    def __init__(self) -> None:
        super().__init__(FaultSpec())
        self.started: list[int] = []

    def after_step(self, started_prompts: list[int]) -> None:
        self.started += started_prompts
        super().after_step(started_prompts)


def test_fault_injection_sees_each_prompt_start_once_also_when_the_cache_skips_its_start(checkpoints):
    # --inject-faults counts started prompts (hang_every, long_prompt): a prompt whose first blocks come from
    # the cache starts later than position 0, and a prompt prefilled in chunks starts only once
    engine = Engine.load(checkpoints["qwen3_moe"], block_size=16)
    system = prompt_ids(5, 50)
    prompts = [system + prompt_ids(6, 5), system + prompt_ids(7, 3), prompt_ids(8, 4)]
    faults = RecordedFaults()
    _, metrics = serve_one_after_another(
        engine, prompts, SamplingParams(max_tokens=3, ignore_eos=True), faults, prefill_chunk=8
    )
    assert counter(metrics, "moe_runtime_prefix_cache_hits_total") == 48
    assert faults.started == [len(p) for p in prompts]
