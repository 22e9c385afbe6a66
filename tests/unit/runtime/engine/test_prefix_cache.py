"""Prefix caching through the engine thread with the real engine: a request that starts like an earlier one
prefills only what is new, answers exactly as without the cache, and the hit rate reaches the metrics."""

from __future__ import annotations

import asyncio

from moe_runtime.engine.engine import Engine
from moe_runtime.engine.sampling import SamplingParams
from moe_runtime.engine.scheduler import SchedulerConfig
from moe_runtime.engine.worker import EngineWorker
from moe_runtime.metrics import RuntimeMetrics
from tests.unit.runtime.engine.test_worker import collect
from tests.unit.runtime.helpers import prompt_ids


def serve_one_after_another(engine: Engine, prompts: list[list[int]], params: SamplingParams):
    metrics = RuntimeMetrics()

    async def main():
        config = SchedulerConfig(block_size=engine.block_size, kv_capacity_tokens=engine.max_kv_tokens)
        worker = EngineWorker(engine, config, metrics, asyncio.get_running_loop())
        worker.start()
        try:
            return [await collect(worker.submit(prompt, params, None)) for prompt in prompts]
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
