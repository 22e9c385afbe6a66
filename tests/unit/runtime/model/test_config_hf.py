"""config.json read the way transformers reads it: its config classes' defaults, attribute maps and RoPE
standardisation, compared field by field with what the installed transformers' modeling code would build."""

from __future__ import annotations

import dataclasses

import pytest
import transformers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moe_runtime.model.config import FAMILY_FIELDS, ConfigError, parse_config

HF_CONFIGS = {
    "qwen2_moe": transformers.Qwen2MoeConfig,
    "qwen3_moe": transformers.Qwen3MoeConfig,
    "mixtral": transformers.MixtralConfig,
}


def as_transformers_builds_it(family: str, raw: dict) -> dict:
    """The model-shaping values, read from transformers' own config object as its modeling code reads them."""
    hf = HF_CONFIGS[family](**{k: v for k, v in raw.items() if k != "model_type"})
    heads, layers = hf.num_attention_heads, hf.num_hidden_layers
    if family == "mixtral":
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // heads
        num_experts = hf.num_local_experts
        sparse = (True,) * layers
        windows = (hf.sliding_window,) * layers
        qkv_bias = o_bias = False
    else:
        head_dim = getattr(hf, "head_dim", hf.hidden_size // heads)
        num_experts = hf.num_experts
        sparse = tuple(
            i not in hf.mlp_only_layers and num_experts > 0 and (i + 1) % hf.decoder_sparse_step == 0
            for i in range(layers)
        )
        if family == "qwen2_moe":
            windows = tuple(hf.sliding_window if t == "sliding_attention" else None for t in hf.layer_types)
            qkv_bias, o_bias = hf.qkv_bias, False
        else:
            windows = (hf.sliding_window,) * layers
            qkv_bias = o_bias = hf.attention_bias
    assert hf.rope_parameters["rope_type"] == "default"
    eos = hf.eos_token_id
    return {
        "vocab_size": hf.vocab_size,
        "hidden_size": hf.hidden_size,
        "num_layers": layers,
        "num_heads": heads,
        "num_kv_heads": hf.num_key_value_heads,
        "head_dim": head_dim,
        "intermediate_size": hf.intermediate_size,
        "moe_intermediate_size": hf.intermediate_size if family == "mixtral" else hf.moe_intermediate_size,
        "shared_expert_intermediate_size": hf.shared_expert_intermediate_size if family == "qwen2_moe" else 0,
        "num_experts": num_experts,
        "top_k": hf.num_experts_per_tok,
        "norm_topk_prob": True if family == "mixtral" else hf.norm_topk_prob,
        "sparse_layers": sparse,
        "qkv_bias": qkv_bias,
        "o_bias": o_bias,
        "qk_norm": family == "qwen3_moe",
        "rms_norm_eps": hf.rms_norm_eps,
        "rope_theta": hf.rope_parameters["rope_theta"],
        "max_position_embeddings": hf.max_position_embeddings,
        "tie_word_embeddings": hf.tie_word_embeddings,
        "layer_windows": tuple(w or None for w in windows),
        "eos_token_ids": () if eos is None else tuple(eos) if isinstance(eos, list) else (eos,),
    }


def ours(raw: dict) -> dict:
    config = dataclasses.asdict(parse_config(dict(raw)))
    del config["family"], config["name"]
    return config


def optional(key: str, values) -> st.SearchStrategy[dict]:
    return st.one_of(st.just({}), values.map(lambda v: {key: v}))


@st.composite
def raw_configs(draw, family: str) -> dict:
    """config.json contents as checkpoints write them: any subset of the fields, either name of an aliased
    field (or both), RoPE in any of its spellings, windows on or off."""
    raw: dict = {"model_type": family}
    heads = draw(st.sampled_from([4, 8]))
    raw.update(num_attention_heads=heads, hidden_size=draw(st.sampled_from([32, 64])))
    raw["num_experts_per_tok"] = draw(st.integers(1, 4))  # the defaults (up to 8) exceed small expert counts
    for part in (
        optional("num_hidden_layers", st.integers(1, 6)),
        optional("num_key_value_heads", st.sampled_from([1, 2, 4])),
        optional("head_dim", st.sampled_from([8, 16, None] if family == "mixtral" else [8, 16])),
        optional("rms_norm_eps", st.sampled_from([1e-5, 1e-6, 3e-6])),
        optional("tie_word_embeddings", st.booleans()),
        optional("max_position_embeddings", st.sampled_from([512, 4096])),
        optional("vocab_size", st.sampled_from([100, 512])),
        optional("intermediate_size", st.sampled_from([48, 96])),
        optional("eos_token_id", st.one_of(st.none(), st.integers(0, 9), st.lists(st.integers(0, 9)))),
        optional("sliding_window", st.one_of(st.none(), st.sampled_from([16, 64]))),
    ):
        raw.update(draw(part))
    # Either name of the expert count, or both: transformers' attribute map decides which one wins.
    names = ["num_experts", "num_local_experts"]
    for name in draw(st.sampled_from([[], names[:1], names[1:], names, names[::-1]])):
        raw[name] = draw(st.sampled_from([4, 6, 8]))
    raw.update(draw(rope_fields()))
    if family != "mixtral":
        layers = raw.get("num_hidden_layers", 24)
        raw.update(draw(optional("moe_intermediate_size", st.sampled_from([16, 32]))))
        raw.update(draw(optional("norm_topk_prob", st.booleans())))
        raw.update(draw(optional("decoder_sparse_step", st.integers(1, 3))))
        raw.update(draw(optional("mlp_only_layers", st.lists(st.integers(0, layers - 1), unique=True))))
        raw.update(draw(optional("use_sliding_window", st.booleans())))
        raw.update(draw(optional("attention_bias", st.booleans())))
    if family == "qwen2_moe":
        raw.update(draw(optional("qkv_bias", st.booleans())))
        raw.update(draw(optional("shared_expert_intermediate_size", st.sampled_from([0, 32]))))
        raw.update(draw(optional("max_window_layers", st.integers(0, 4))))
        if raw.get("use_sliding_window") and raw.get("sliding_window", 4096) is None:
            raw["sliding_window"] = 16  # transformers itself fails without a window (tested below)
        if raw.get("use_sliding_window") and raw.get("sliding_window", 4096):
            kinds = st.sampled_from(["full_attention", "sliding_attention", "attention"])
            raw.update(draw(optional("layer_types", st.lists(kinds, min_size=layers, max_size=layers))))
    if family == "qwen3_moe":  # Qwen3-MoE windows every layer: layer_types is not one of its fields
        raw.update(
            draw(optional("layer_types", st.just(["sliding_attention"] * raw.get("num_hidden_layers", 24))))
        )
    kv = raw.get("num_key_value_heads", hf_default(family, "num_key_value_heads"))
    if heads % kv:
        raw["num_key_value_heads"] = heads
    return raw


def hf_default(family: str, name: str):
    return next(f.default for f in dataclasses.fields(HF_CONFIGS[family]) if f.name == name)


def rope_fields() -> st.SearchStrategy[dict]:
    theta = st.sampled_from([5_000.0, 1e6])
    return st.one_of(
        st.just({}),
        theta.map(lambda t: {"rope_theta": t}),
        theta.map(lambda t: {"rope_parameters": {"rope_type": "default", "rope_theta": t}}),
        theta.map(lambda t: {"rope_parameters": {"rope_type": "default"}, "rope_theta": t}),
        st.tuples(theta, theta).map(
            lambda ts: {"rope_parameters": {"rope_type": "default", "rope_theta": ts[0]}, "rope_theta": ts[1]}
        ),
        theta.map(lambda t: {"rope_scaling": {"type": "default"}, "rope_theta": t}),
        st.tuples(theta, theta).map(
            lambda ts: {
                "rope_scaling": {"rope_type": "default", "rope_theta": ts[0]},
                "rope_parameters": {"rope_type": "default", "rope_theta": ts[1]},
            }
        ),
    )


@pytest.mark.parametrize("family", sorted(HF_CONFIGS))
def test_every_field_reads_as_transformers_builds_the_model(family):
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(raw_configs(family))
    def check(raw):
        assert ours(raw) == as_transformers_builds_it(family, raw)

    check()


@pytest.mark.parametrize("family", sorted(HF_CONFIGS))
def test_defaults_and_attribute_maps_are_those_of_the_installed_transformers(family):
    cls = HF_CONFIGS[family]
    defaults, attribute_map = FAMILY_FIELDS[family]
    hf_fields = {f.name: f.default for f in dataclasses.fields(cls)}
    for name, default in defaults.items():
        assert hf_fields[name] == default, name
    assert attribute_map == cls.attribute_map


def test_transformers_5_qwen3_moe_config_with_num_local_experts():
    raw = transformers.Qwen3MoeConfig(num_experts=6, num_experts_per_tok=2).to_dict()
    assert "num_local_experts" in raw and "num_experts" not in raw
    assert parse_config(raw).num_experts == 6


@pytest.mark.parametrize(
    ("family", "changes", "message"),
    [
        ("qwen3_moe", {"num_local_experts": None}, "field 'num_local_experts' is null"),
        ("mixtral", {"hidden_act": "gelu"}, "field 'hidden_act' 'gelu' is not supported"),
        ("qwen2_moe", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "rope_parameters"),
        (
            "qwen2_moe",
            {
                "layer_types": ["sliding_attention", "full_attention"],
                "rope_parameters": {"full_attention": {}},
            },
            "per layer type",
        ),
        (
            "qwen2_moe",
            {"use_sliding_window": False, "layer_types": ["sliding_attention", "full_attention"]},
            "sliding_window",
        ),
        ("qwen2_moe", {"use_sliding_window": True, "sliding_window": None}, "sliding_window"),
    ],
)
def test_configs_we_cannot_run_are_refused_by_name(family, changes, message):
    raw = {"model_type": family, "num_hidden_layers": 2, "num_experts_per_tok": 2, **changes}
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)
