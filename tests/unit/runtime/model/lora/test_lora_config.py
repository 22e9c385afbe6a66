"""adapter_config.json read as PEFT reads it: rank / alpha patterns, rsLoRA scaling, target matching."""

from __future__ import annotations

import math

import peft
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from peft.tuners.tuners_utils import check_target_module_exists
from peft.utils.other import get_pattern_key

from moe_runtime.model.lora import AdapterError
from moe_runtime.model.lora.peft_config import parse_adapter_config

MODULES = [
    "model.layers.0.self_attn.q_proj",
    "model.layers.1.self_attn.v_proj",
    "model.layers.1.mlp.down_proj",
    "model.layers.2.mlp.shared_expert.up_proj",
    "model.layers.2.mlp.experts.3.gate_proj",
    "model.layers.12.block_sparse_moe.experts.0.w2",
    "model.layers.2.mlp.experts.gate_up_proj",
]
PATTERNS = ["q_proj", "v_proj", "down_proj", "up_proj", "experts.3.gate_proj", r".*\.gate_up_proj",
            r"layers\.1\..*", "w2", r"model.layers.2.mlp.shared_expert.up_proj", "proj"]  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    module=st.sampled_from(MODULES),
    ranks=st.dictionaries(st.sampled_from(PATTERNS), st.integers(1, 64), max_size=4),
    alphas=st.dictionaries(st.sampled_from(PATTERNS), st.integers(1, 64), max_size=4),
    r=st.integers(1, 64),
    alpha=st.integers(1, 64),
    rslora=st.booleans(),
)
def test_rank_and_scaling_are_peft_s(module, ranks, alphas, r, alpha, rslora):
    ours = parse_adapter_config(
        "x",
        {"r": r, "lora_alpha": alpha, "use_rslora": rslora, "rank_pattern": ranks, "alpha_pattern": alphas},
    )
    rank = ranks.get(get_pattern_key(ranks.keys(), module), r)
    peft_alpha = alphas.get(get_pattern_key(alphas.keys(), module), alpha)
    assert ours.rank(module) == rank
    assert ours.scaling(module) == pytest.approx(peft_alpha / (math.sqrt(rank) if rslora else rank))


@settings(max_examples=200, deadline=None)
@given(
    module=st.sampled_from(MODULES),
    targets=st.one_of(
        st.lists(
            st.sampled_from(PATTERNS[:5] + ["w2", "self_attn.q_proj", "layers.1.mlp.down_proj"]), min_size=1
        ),
        st.sampled_from([r".*\.(q|v)_proj", r"model\.layers\.\d+\.mlp\..*", r".*experts.*", "q_proj"]),
    ),
)
def test_target_modules_match_as_peft_matches(module, targets):
    ours = parse_adapter_config("x", {"target_modules": targets})
    theirs = peft.LoraConfig(target_modules=targets)
    assert ours.targets_module(module) == bool(check_target_module_exists(theirs, module))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"lora_bias": True}, "lora_bias"),
        ({"bias": "lora_only"}, "bias 'lora_only'"),
        ({"peft_type": "LOHA"}, "peft_type 'LOHA'"),
        ({"r": 0}, "rank 0 is not a positive integer"),
        ({"rank_pattern": {"q_proj": "big"}}, "malformed field"),
        ({"target_parameters": "mlp.experts.down_proj"}, "target_parameters must be a list"),
    ],
)
def test_settings_we_do_not_run_are_refused_by_name(raw, reason):
    with pytest.raises(AdapterError, match=f"adapter 'x': .*{reason}"):
        parse_adapter_config("x", raw)
