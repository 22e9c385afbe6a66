"""LoRA adapters for the serving tests, made by PEFT from random weights on the transformers model that reads
the test's own checkpoint (nothing downloaded), and broken copies of one, each with the reason word the runtime
reports for it (runtime/moe_runtime/adapters/reasons.py)."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import torch

from tests.adapter_files import edited

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
FUSED_EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


@functools.cache
def hf_model(checkpoint: str):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()


def peft_adapter(checkpoint: Path, out: Path, seed: int, experts: bool = True, **lora_config) -> Path:
    """Attention (and with `experts` the routed experts, through target_parameters), rank 4 unless told."""
    import peft

    from tests.unit.runtime.lora_adapters import randomize

    config = peft.LoraConfig(
        target_modules=ATTENTION,
        target_parameters=FUSED_EXPERTS if experts else None,
        **{"r": 4, "lora_alpha": 8, **lora_config},
    )
    model = peft.get_peft_model(copy.deepcopy(hf_model(str(checkpoint))), config)
    randomize(model, seed)
    model.save_pretrained(out)
    return out


Q_PROJ = "base_model.model.model.layers.0.self_attn.q_proj"


def _wrong_shape(tensors: dict) -> None:
    key = f"{Q_PROJ}.lora_B.weight"
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1])


def broken_adapters(checkpoint: Path, good: Path, root: Path) -> dict[str, tuple[Path, str]]:
    """name -> (adapter folder, the reason word the runtime reports): one per kind of refusal."""
    return {
        "dora": (peft_adapter(checkpoint, root / "dora", seed=5, experts=False, use_dora=True), "dora"),
        "wide": (peft_adapter(checkpoint, root / "wide", seed=6, experts=False, r=32), "rank_above_max"),
        "elsewhere": (
            edited(good, root / "elsewhere", config=lambda c: c.update(target_modules=["c_attn"])),
            "target_not_in_model",
        ),
        "misshapen": (edited(good, root / "misshapen", tensors=_wrong_shape), "shape_mismatch"),
        "extra": (
            edited(good, root / "extra", tensors=lambda t: t.update({f"{Q_PROJ}.weight": torch.zeros(2, 2)})),
            "unused_tensors",
        ),
    }


def write_list(path: Path, adapters: dict[str, Path]) -> None:
    """The --lora-list file, replaced atomically."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([{"name": name, "path": str(p)} for name, p in adapters.items()]))
    tmp.replace(path)
