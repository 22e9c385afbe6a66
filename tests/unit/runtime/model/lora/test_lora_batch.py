"""Adapters inside mixed batches: base rows and rows of different adapters share one forward pass and each
row gets exactly its own update; an expert's adapter reaches only the tokens routed to that expert."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import moe_runtime.model.moe as moe_module
from moe_runtime.engine.engine import Engine
from moe_runtime.engine.sampling import SamplingParams
from moe_runtime.model import decoder as model
from moe_runtime.model.lora import AdapterNotFound, LoraBatch
from tests.unit.runtime.helpers import greedy, prompt_ids
from tests.unit.runtime.lora_adapters import peft_fused_adapter, sparse_layers, write_per_expert_adapter


@pytest.fixture(scope="module")
def served(hf_saved, tmp_path_factory):
    """family -> (engine with adapters "a" (fused, made by PEFT) and "b" (per-expert), the HF model)."""
    root = tmp_path_factory.mktemp("lora_batch")
    result = {}
    for family in ("qwen2_moe", "qwen3_moe", "mixtral"):
        path, hf = hf_saved[family, "per_expert"]
        engine = Engine.load(path, device="cpu", dtype="float32")
        peft_fused_adapter(hf, root / f"{family}-a", seed=31, mlp=family == "qwen2_moe")
        engine.load_adapter("a", str(root / f"{family}-a"))
        engine.load_adapter("b", str(write_per_expert_adapter(hf, family, root / f"{family}-b", seed=32)))
        result[family] = (engine, hf)
    return result


def run_schedule(
    engine: Engine, requests: list[tuple[str | None, list[int], int]], steps: int, batched: bool
):
    """Continuous batching: request i joins at its step (prefill of its whole prompt), then decodes its own
    greedy tokens. With batched=False each request runs alone, fed the same tokens. -> logits per request."""
    seqs = [engine.new_sequence() for _ in requests]
    logits: list[list[torch.Tensor]] = [[] for _ in requests]
    fed: list[list[int]] = [[] for _ in requests]
    for step in range(steps):
        items, owners = [], []
        for i, (adapter, prompt, join) in enumerate(requests):
            if step == join:
                items.append((seqs[i], prompt, adapter))
            elif step > join:
                fed[i].append(int(logits[i][-1].argmax()))
                items.append((seqs[i], [fed[i][-1]], adapter))
            else:
                continue
            owners.append(i)
        if not items:
            continue
        groups = [list(range(len(items)))] if batched else [[k] for k in range(len(items))]
        for group in groups:
            out = engine.forward([items[k] for k in group])
            for row, k in zip(out, group, strict=True):
                logits[owners[k]].append(row)
    for seq in seqs:
        engine.release(seq)
    return logits


request = st.tuples(st.sampled_from([None, "a", "b"]), st.integers(1, 9), st.integers(0, 2))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests=st.lists(request, min_size=1, max_size=6), seed=st.integers(0, 1000))
def test_every_row_of_a_mixed_batch_equals_its_request_alone(served, requests, seed):
    engine, _ = served["qwen2_moe"]  # attention, a dense layer, a shared expert and routed experts
    requests = [(a, prompt_ids(seed + i, n), join) for i, (a, n, join) in enumerate(requests)]
    together = run_schedule(engine, requests, steps=4, batched=True)
    alone = run_schedule(engine, requests, steps=4, batched=False)
    for mine, reference in zip(together, alone, strict=True):
        for row, expected in zip(mine, reference, strict=True):
            torch.testing.assert_close(row, expected, atol=1e-5, rtol=0)


def test_base_a_and_b_in_one_batch_of_each_family(served, family):
    engine, _ = served[family]
    requests = [
        (None, prompt_ids(1, 7), 0),
        ("a", prompt_ids(2, 5), 0),
        ("b", prompt_ids(3, 9), 1),
        ("a", prompt_ids(4, 1), 1),
        (None, prompt_ids(5, 3), 2),
        ("b", prompt_ids(6, 4), 0),
    ]
    together = run_schedule(engine, requests, steps=4, batched=True)
    alone = run_schedule(engine, requests, steps=4, batched=False)
    for mine, reference in zip(together, alone, strict=True):
        for row, expected in zip(mine, reference, strict=True):
            torch.testing.assert_close(row, expected, atol=1e-5, rtol=0)
    # The three are different models: the same prompt gives three different next-token distributions.
    prompt = prompt_ids(7, 6)
    rows = [engine.forward([(engine.new_sequence(), prompt, name)])[0] for name in (None, "a", "b")]
    assert min((rows[i] - rows[j]).abs().max() for i, j in ((0, 1), (0, 2), (1, 2))) > 0.05


def test_generate_takes_one_adapter_per_prompt(served):
    engine, _ = served["mixtral"]
    prompts = [prompt_ids(40, 5), prompt_ids(41, 8), prompt_ids(42, 3)]
    adapters = ["b", None, "a"]
    out = engine.generate(prompts, SamplingParams(max_tokens=6), adapters)
    for tokens, prompt, adapter in zip(out, prompts, adapters, strict=True):
        assert tokens == greedy(engine, prompt, 6, adapter)[: len(tokens)]


def test_an_unknown_adapter_fails_the_call_before_anything_runs(served):
    engine, _ = served["qwen3_moe"]
    seq = engine.new_sequence()
    with pytest.raises(AdapterNotFound, match="adapter 'nope': not loaded"):
        engine.forward([(seq, prompt_ids(8, 4), None), (engine.new_sequence(), [5], "nope")])
    assert seq.length == 0  # nothing appended to any cache


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_an_expert_adapter_changes_only_the_tokens_routed_to_that_expert(
    served, hf_saved, family, tmp_path, monkeypatch
):
    _, hf = served[family]
    engine = Engine.load(hf_saved[family, "per_expert"][0], device="cpu", dtype="float32")
    first_sparse, k = sparse_layers(hf)[0], 1
    adapter = write_per_expert_adapter(
        hf, family, tmp_path / "expert", seed=5, layers=[first_sparse], experts=[k], attention=False
    )
    engine.load_adapter("k", str(adapter))
    routed: list[torch.Tensor] = []
    route = moe_module.route

    def recording_route(*args, **kwargs):
        weights, experts = route(*args, **kwargs)
        routed.append(experts)
        return weights, experts

    monkeypatch.setattr(moe_module, "route", recording_route)
    ids = prompt_ids(9, 40)

    def layer_outputs(adapter):
        outputs: list[torch.Tensor] = []
        routed.clear()
        lora = (
            LoraBatch([(engine.adapters[adapter], 0, len(ids))], len(ids), engine.device) if adapter else None
        )
        seq = engine.new_sequence()
        with torch.inference_mode():
            tokens, positions, plan, _ = engine.prepare([(seq, ids)])
            model.forward(
                engine.weights,
                engine.config,
                tokens,
                positions,
                engine.pool,
                plan,
                layer_outputs=outputs,
                lora=lora,
            )
        engine.release(seq)
        return outputs, routed[0]

    base, experts = layer_outputs(None)
    adapted, experts_adapted = layer_outputs("k")
    assert torch.equal(experts, experts_adapted)
    for layer in range(first_sparse):
        assert torch.equal(base[layer], adapted[layer])
    hit = (experts == k).any(dim=1)
    assert 0 < int(hit.sum()) < len(ids)  # both kinds of token are there
    change = (adapted[first_sparse] - base[first_sparse]).abs().amax(dim=1)
    assert (change[hit] > 1e-4).all()
    assert (change[~hit] == 0).all()


def test_int8_base_weights_take_adapters_in_the_activation_dtype(served, hf_saved, tmp_path):
    fp32, hf = served["qwen2_moe"]
    int8 = Engine.load(hf_saved["qwen2_moe", "per_expert"][0], device="cpu", quantize="int8")
    int8.load_adapter("a", fp32.adapters["a"].path)
    pair = int8.adapters["a"].layers[0].qkv
    assert pair.shrink.dtype == pair.expand.dtype == torch.float32
    ids = prompt_ids(10, 12)

    def logits(engine, adapter):
        return engine.forward([(engine.new_sequence(), ids, adapter)])[0]

    shift_fp32 = logits(fp32, "a") - logits(fp32, None)
    shift_int8 = logits(int8, "a") - logits(int8, None)
    # The adapter moves int8 logits as it moves fp32 ones, up to the quantisation error of the base weights.
    assert shift_fp32.abs().max() > 0.5
    assert (shift_int8 - shift_fp32).abs().max() < 0.1 * shift_fp32.abs().max()


class RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_base_rows_cost_nothing_extra_while_adapters_are_loaded(served, hf_saved):
    """A batch without adapter rows dispatches exactly the ops of an engine that never loaded one."""
    with_adapters, _ = served["qwen2_moe"]
    plain = Engine.load(hf_saved["qwen2_moe", "per_expert"][0], device="cpu", dtype="float32")
    recorded = []
    for engine in (with_adapters, plain):
        seqs = [engine.new_sequence() for _ in range(3)]
        engine.forward([(seq, prompt_ids(60 + i, 4)) for i, seq in enumerate(seqs)])
        recorder = RecordOps()
        with recorder:
            engine.forward([(seqs[0], [7], None), (seqs[1], [8]), (seqs[2], [9, 10])])
        recorded.append(recorder.ops)
    assert with_adapters.adapters and recorded[0] == recorded[1]


def test_every_position_rows_keep_the_callers_order_when_adapters_regroup_the_batch(served):
    engine, _ = served["qwen2_moe"]
    items = [("a", prompt_ids(80, 4), True), (None, prompt_ids(81, 3), False), ("b", prompt_ids(82, 2), True),
             (None, prompt_ids(83, 5), True), ("a", prompt_ids(84, 3), False)]  # fmt: skip
    seqs = [engine.new_sequence() for _ in items]
    batch = [(seq, prompt, adapter) for seq, (adapter, prompt, _) in zip(seqs, items, strict=True)]
    rows = engine.forward(batch, every_position=[flag for *_, flag in items])
    expected = []
    for adapter, prompt, flag in items:
        single = engine.new_sequence()
        one_by_one = torch.cat([engine.forward([(single, [token], adapter)]) for token in prompt])
        engine.release(single)
        expected.append(one_by_one if flag else one_by_one[-1:])
    torch.testing.assert_close(rows, torch.cat(expected), atol=1e-4, rtol=0)
    for seq in seqs:
        engine.release(seq)
