"""Our engine against Hugging Face transformers on the same random checkpoints (fp32)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import transformers

from moe_runtime.engine.engine import Engine
from moe_runtime.model import decoder as model
from tests.unit.runtime.helpers import greedy, hf_greedy, prompt_ids

HF_CLASSES = {
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "mixtral": "MixtralForCausalLM",
}


@pytest.fixture(scope="module")
def hf_models(checkpoints):
    return {
        family: transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        for family, path in checkpoints.items()
    }


def our_hidden_states(engine, ids: list[int], config=None):
    """Each layer's output, and the logits, from one prefill through the model function."""
    layers: list[torch.Tensor] = []
    seq = engine.new_sequence()
    with torch.inference_mode():
        tokens, positions, plan, _ = engine.prepare([(seq, ids)])
        hidden = model.forward(
            engine.weights,
            config or engine.config,
            tokens,
            positions,
            engine.pool,
            plan,
            layer_outputs=layers,
        )
        engine.release(seq)
        return layers, hidden, model.logits(engine.weights, hidden)


def test_hf_loads_the_family_class(hf_models, family):
    assert type(hf_models[family]).__name__ == HF_CLASSES[family]


def test_config_has_the_math_changing_fields(engines):
    qwen2, qwen3, mixtral = (
        engines["qwen2_moe"].config,
        engines["qwen3_moe"].config,
        engines["mixtral"].config,
    )
    assert qwen2.sparse_layers == (True, False, True, True) and qwen2.shared_expert_intermediate_size == 128
    assert qwen2.qkv_bias and not qwen2.qk_norm
    assert qwen3.sparse_layers == (False, True, False, True) and qwen3.qk_norm and qwen3.norm_topk_prob
    assert qwen3.head_dim == 32 != qwen3.hidden_size // qwen3.num_heads
    assert mixtral.tie_word_embeddings and mixtral.num_kv_heads == 1 and mixtral.rope_theta == 1e6


def test_layer_outputs_and_logits_match_transformers(engines, hf_models, family):
    ids = prompt_ids(seed=0, length=37)
    with torch.no_grad():
        reference = hf_models[family](torch.tensor([ids]), output_hidden_states=True)
    layers, final_hidden, logits = our_hidden_states(engines[family], ids)
    # transformers reports the embeddings, every layer's output but the last, then the final-normed state.
    hf_states = reference.hidden_states
    assert len(hf_states) == len(layers) + 1
    for ours, theirs in zip(layers[:-1], hf_states[1:-1], strict=True):
        torch.testing.assert_close(ours, theirs[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(final_hidden, hf_states[-1][0], atol=1e-4, rtol=0)
    torch.testing.assert_close(logits, reference.logits[0], atol=1e-4, rtol=0)
    assert logits.std() > 0.3  # the logits are far from flat: a wrong detail would show


@pytest.mark.parametrize("field", ["norm_topk_prob", "rope_theta", "qkv_bias"])
def test_the_parity_check_notices_a_wrong_config_field(engines, hf_models, field):
    """A checker that cannot fail proves nothing: change one math field and the logits must drift."""
    engine = engines["qwen2_moe"]
    changed = {
        "norm_topk_prob": not engine.config.norm_topk_prob,
        "rope_theta": engine.config.rope_theta * 10,
        "qkv_bias": False,
    }[field]
    wrong = dataclasses.replace(engine.config, **{field: changed})
    weights = engine.weights
    if field == "norm_topk_prob":
        weights = dataclasses.replace(
            weights,
            layers=[
                dataclasses.replace(layer, mlp=dataclasses.replace(layer.mlp, norm_topk_prob=changed))
                if hasattr(layer.mlp, "norm_topk_prob")
                else layer
                for layer in weights.layers
            ],
        )
    if field == "qkv_bias":
        weights = dataclasses.replace(
            weights,
            layers=[
                dataclasses.replace(layer, attention=dataclasses.replace(layer.attention, qkv_bias=None))
                for layer in weights.layers
            ],
        )
    ids = prompt_ids(seed=0, length=37)
    with torch.no_grad():
        reference = hf_models["qwen2_moe"](torch.tensor([ids])).logits[0]
    seq = engine.new_sequence()
    with torch.inference_mode():
        tokens, positions, plan, _ = engine.prepare([(seq, ids)])
        hidden = model.forward(weights, wrong, tokens, positions, engine.pool, plan)
        logits = model.logits(weights, hidden)
    engine.release(seq)
    assert (logits - reference).abs().max() > 1e-2


def test_greedy_tokens_match_transformers_for_32_steps(engines, hf_models, family):
    hf = hf_models[family]
    for seed, length in ((1, 5), (2, 23)):
        ids = prompt_ids(seed, length)
        assert greedy(engines[family], ids, 32) == hf_greedy(hf, ids, 32)


def test_logits_match_transformers_when_the_prompt_starts_from_cached_blocks(checkpoints, hf_models, family):
    """Prefix caching on: a prompt sharing 40 tokens with an earlier one takes its 2 full blocks of 16 from the
    cache and prefills the rest; its logits and greedy tokens are transformers', as with caching off."""
    shared = prompt_ids(seed=90, length=40)
    first, second = shared + prompt_ids(91, 7), shared + prompt_ids(92, 9)
    results = {}
    for caching in (True, False):
        engine = Engine.load(checkpoints[family], block_size=16, prefix_caching=caching)
        warm = engine.new_sequence()
        engine.forward([(warm, first)])
        engine.release(warm)
        seq = engine.new_sequence()
        hit = engine.blocks.match_prefix(seq, second)
        assert hit == (32 if caching else 0)
        logits = engine.forward([(seq, second[hit:])])[0]
        tokens = [int(logits.argmax())]
        for _ in range(7):
            tokens.append(int(engine.forward([(seq, tokens[-1:])])[0].argmax()))
        results[caching] = logits, tokens
    with torch.no_grad():
        reference = hf_models[family](torch.tensor([second])).logits[0, -1]
    for logits, tokens in results.values():
        torch.testing.assert_close(logits, reference, atol=1e-4, rtol=0)
        assert tokens == hf_greedy(hf_models[family], second, 8)
