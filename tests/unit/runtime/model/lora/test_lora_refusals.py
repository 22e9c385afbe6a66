"""Adapters we cannot serve are refused with an error naming the adapter and the reason, and what is
loaded keeps working exactly as before."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import peft
import pytest
import torch

from moe_runtime.adapters.reasons import REASONS, adapter_error_reason
from moe_runtime.engine.engine import Engine
from moe_runtime.model.lora import AdapterError, AdapterNotFound
from tests.adapter_files import edited
from tests.unit.runtime.helpers import prompt_ids
from tests.unit.runtime.lora_adapters import ATTENTION, randomize, write_per_expert_adapter

PROMPT = prompt_ids(3, 11)


@pytest.fixture(scope="module")
def model(hf_saved):
    return hf_saved["qwen2_moe", "per_expert"]


@pytest.fixture(scope="module")
def good(model, tmp_path_factory) -> Path:
    return write_per_expert_adapter(model[1], "qwen2_moe", tmp_path_factory.mktemp("good") / "a", seed=1)


@pytest.fixture
def engine(model, good) -> Engine:
    engine = Engine.load(model[0], device="cpu", dtype="float32")
    engine.load_adapter("good", str(good))
    return engine


def logits(engine: Engine, adapter: str | None) -> torch.Tensor:
    return engine.forward([(engine.new_sequence(), PROMPT, adapter)])[0]


def peft_made(hf, out: Path, **options) -> Path:
    model = peft.get_peft_model(copy.deepcopy(hf), peft.LoraConfig(r=4, target_modules=ATTENTION, **options))
    randomize(model, seed=2)
    model.save_pretrained(out)
    return out


Q = "base_model.model.model.layers.0.self_attn.q_proj"
EXPERT = "base_model.model.model.layers.2.mlp.experts.3.up_proj"
FUSED = "base_model.model.model.layers.2.mlp.experts"


def renamed(old: str, new: str):
    """Add a copy of every tensor whose name holds `old`, renamed with `new`."""
    return lambda t: t.update({k.replace(old, new): v.clone() for k, v in list(t.items()) if old in k})


def without_config(good, out, hf):
    (edited(good, out) / "adapter_config.json").unlink()
    return out


def pickled_weights(good, out, hf):
    (edited(good, out) / "adapter_model.safetensors").rename(out / "adapter_model.bin")
    return out


def tensors_edited(change):
    return lambda good, out, hf: edited(good, out, tensors=change)


def config_edited(change, tensors=None):
    return lambda good, out, hf: edited(good, out, tensors=tensors, config=change)


FUSED_PAIR = {f"{FUSED}.lora_A.weight": torch.zeros(32, 64), f"{FUSED}.lora_B.weight": torch.zeros(128, 32)}
CASES = {
    "dora": (lambda good, out, hf: peft_made(hf, out, use_dora=True), "DoRA"),
    "modules_to_save": (
        lambda good, out, hf: peft_made(hf, out, modules_to_save=["lm_head"]),
        "modules_to_save",
    ),
    "rank_above_max": (
        lambda good, out, hf: write_per_expert_adapter(hf, "qwen2_moe", out, seed=3, r=32),
        "rank 32 of model.layers.[0-9.a-z_]+ is above max_lora_rank 16",
    ),
    "layer_not_in_model": (
        tensors_edited(renamed("layers.0.", "layers.9.")),
        r"target 'model.layers.9.[a-z_.0-9]+' does not exist in the model \(4 layers\)",
    ),
    "expert_not_in_model": (
        tensors_edited(renamed("experts.3.", "experts.8.")),
        r"does not exist in the model \(8 experts\)",
    ),
    "dense_target_on_a_moe_layer": (
        tensors_edited(renamed("layers.0.mlp.experts.0.", "layers.0.mlp.")),
        "layer 0 is a MoE layer",
    ),
    "target_modules_match_nothing": (
        config_edited(lambda c: c.update(target_modules=["c_attn", "c_fc"])),
        "match no module of the model",
    ),
    "router_target": (
        tensors_edited(renamed("layers.0.mlp.experts.0.up_proj", "layers.0.mlp.gate")),
        "target 'model.layers.0.mlp.gate' is not supported",
    ),
    "shape_mismatch": (
        tensors_edited(lambda t: t.update({f"{EXPERT}.lora_B.weight": torch.zeros(32, 4)})),
        r"shape of model.layers.2.mlp.experts.3.up_proj lora_B is \(32, 4\), but the model and rank 4 .* need \(64, 4\)",
    ),
    "rank_disagrees_with_config": (
        config_edited(lambda c: c.update(r=2)),
        r"shape of .* lora_A is \(4, [0-9]+\), but the model and rank 2",
    ),
    "unused_tensor": (
        tensors_edited(lambda t: t.update({f"{Q}.weight": torch.zeros(128, 64)})),
        f"tensor '{Q}.weight' is not a LoRA weight .*: unused",
    ),
    "lora_b_missing": (
        tensors_edited(lambda t: t.pop(f"{Q}.lora_B.weight")),
        "model.layers.0.self_attn.q_proj: lora_B is missing",
    ),
    "fused_tensors_without_target_parameters": (
        tensors_edited(lambda t: t.update(FUSED_PAIR)),
        "match no parameter in target_parameters None: unused",
    ),
    "mixed_layouts": (
        config_edited(
            lambda c: c.update(target_parameters=["mlp.experts.gate_up_proj"]), lambda t: t.update(FUSED_PAIR)
        ),
        "mixes per-expert and fused expert tensors",
    ),
    "trained_biases": (config_edited(lambda c: c.update(bias="all")), "bias 'all'"),
    "not_lora": (config_edited(lambda c: c.update(peft_type="IA3")), "peft_type 'IA3' is not supported"),
    "no_config": (without_config, "adapter_config.json: missing"),
    "pickled_weights": (pickled_weights, "adapter_model.safetensors: missing .*save with safetensors"),
    "not_a_directory": (lambda good, out, hf: out / "nowhere", "not a directory"),
    "name_in_use": (lambda good, out, hf: good, "already loaded"),
}


# The reason word each refusal is counted under in the server's metrics (adapters/reasons.py).
REASON_WORDS = {
    "dora": "dora",
    "modules_to_save": "modules_to_save",
    "rank_above_max": "rank_above_max",
    "layer_not_in_model": "target_not_in_model",
    "expert_not_in_model": "target_not_in_model",
    "dense_target_on_a_moe_layer": "target_not_in_model",
    "target_modules_match_nothing": "target_not_in_model",
    "router_target": "unsupported_target",
    "shape_mismatch": "shape_mismatch",
    "rank_disagrees_with_config": "shape_mismatch",
    "unused_tensor": "unused_tensors",
    "lora_b_missing": "invalid_files",
    "fused_tensors_without_target_parameters": "unused_tensors",
    "mixed_layouts": "invalid_files",
    "trained_biases": "unsupported_config",
    "not_lora": "unsupported_config",
    "no_config": "missing_files",
    "pickled_weights": "missing_files",
    "not_a_directory": "missing_files",
    "name_in_use": "other",  # the server never loads a name twice
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_by_name_and_reason_and_the_loaded_adapters_keep_working(engine, model, good, tmp_path, case):
    make, reason = CASES[case]
    before = {name: logits(engine, name) for name in (None, "good")}
    path = make(good, tmp_path / "bad", model[1])
    name = "good" if case == "name_in_use" else "bad"
    with pytest.raises(AdapterError, match=f"adapter '{name}': .*{reason}") as refused:
        engine.load_adapter(name, str(path))
    assert adapter_error_reason(refused.value.reason) == REASON_WORDS[case]
    assert list(engine.adapters) == ["good"]
    for adapter, expected in before.items():
        assert torch.equal(logits(engine, adapter), expected)


def test_the_good_adapter_loads_and_unloads(engine):
    assert not torch.equal(logits(engine, "good"), logits(engine, None))
    engine.unload_adapter("good")
    assert engine.adapters == {}
    with pytest.raises(AdapterNotFound, match="adapter 'good': not loaded"):
        engine.unload_adapter("good")
    with pytest.raises(AdapterNotFound):
        logits(engine, "good")


def test_max_lora_rank_admits_what_it_names(engine, model, tmp_path):
    engine.max_lora_rank = 32
    engine.load_adapter(
        "wide", str(write_per_expert_adapter(model[1], "qwen2_moe", tmp_path / "wide", seed=3, r=32))
    )
    assert engine.adapters["wide"].rank == 32


def test_every_refusal_has_its_reason_word():
    assert set(REASON_WORDS) == set(CASES) and set(REASON_WORDS.values()) <= set(REASONS)


def sparse_adapter(good: Path, out: Path, huge: dict[str, tuple[int, ...]], config=None) -> Path:
    """A copy of `good` whose safetensors file also declares `huge` float32 tensors (replacing namesakes),
    their bytes a hole in a sparse file: gigabytes declared, nothing on disk."""
    import json
    import math
    import struct

    from safetensors.torch import load_file

    edited(good, out, config=config)
    small = {k: v for k, v in load_file(good / "adapter_model.safetensors").items() if k not in huge}
    header, chunks, offset = {}, [], 0
    for key, tensor in small.items():
        data = tensor.float().contiguous().numpy().tobytes()
        header[key] = {
            "dtype": "F32",
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    for key, shape in huge.items():
        size = 4 * math.prod(shape)
        header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(out / "adapter_model.safetensors", "wb") as file:
        file.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))
        file.truncate(8 + len(text) + offset)
    return out


LOAD_AND_MEASURE = """
import json, resource, sys
import torch
from moe_runtime.model.config import load_config
from moe_runtime.model.lora import AdapterError, load_adapter
config = load_config(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_adapter("big", sys.argv[2], config, dtype=torch.float32, device=torch.device("cpu"), max_rank=16)
    outcome = "loaded"
except AdapterError as err:
    outcome = str(err)
print(json.dumps({"grew_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, "outcome": outcome}))
"""


def huge_config(good: Path, out: Path) -> Path:
    edited(good, out)
    with open(out / "adapter_config.json", "wb") as file:
        file.truncate(512 * 2**20)
    return out


def test_an_oversized_config_is_refused_by_its_size_without_reading_it(model, good, tmp_path):
    """adapter_config.json was read whole: half a gigabyte of it took 760 MiB before the JSON error."""
    measured = load_and_measure(model, huge_config(good, tmp_path / "big"))
    assert re.search(r"adapter_config.json: 536870912 bytes, more than", measured["outcome"]), measured[
        "outcome"
    ]
    assert measured["grew_mib"] < 32, f"{measured['grew_mib']:.0f} MiB allocated for an adapter refused"


def load_and_measure(model, path: Path) -> dict:
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", LOAD_AND_MEASURE, str(model[0]), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("huge", "config", "reason"),
    [
        # 1 GiB declared where the model takes (4, 64): refused by the shape its header declares
        (
            {f"{Q}.lora_A.weight": (4, 2**26)},
            None,
            r"shape of model.layers.0.self_attn.q_proj lora_A is \(4, 67108864\)",
        ),
        # a rank far above the limit, its tensors as large as that rank needs
        (
            {f"{Q}.lora_A.weight": (2**20, 64), f"{Q}.lora_B.weight": (64, 2**20)},
            lambda c: c.update(r=2**20, rank_pattern={}),
            r"rank 1048576 of model.layers.[0-9.a-z_]+ is above max_lora_rank 16",
        ),
    ],
    ids=["declared-shape", "declared-rank"],
)
def test_an_oversized_adapter_is_refused_from_its_header_without_reading_it(
    model, good, tmp_path, huge, config, reason
):
    """An adapter refused after it was read whole could take the pod's memory (and OOM-kill it, every restart
    again): its header says what it holds before a byte of it is read."""
    measured = load_and_measure(model, sparse_adapter(good, tmp_path / "big", huge, config))
    assert re.search(reason, measured["outcome"]), measured["outcome"]
    assert measured["grew_mib"] < 100, f"{measured['grew_mib']:.0f} MiB allocated for an adapter refused"
