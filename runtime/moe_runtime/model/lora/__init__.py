"""LoRA adapters served next to the base model: PEFT adapters loaded from a directory (adapter.py), laid out
like our fused weights (weights.py), applied per batch row inside the forward pass (batch.py)."""

from moe_runtime.model.lora.adapter import Adapter, load_adapter
from moe_runtime.model.lora.batch import LoraBatch
from moe_runtime.model.lora.errors import AdapterError, AdapterNotFound

__all__ = ["Adapter", "AdapterError", "AdapterNotFound", "LoraBatch", "load_adapter"]
