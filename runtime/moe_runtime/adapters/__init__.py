"""Serving LoRA adapters: which sources, which are resident, loading and unloading them beside the engine."""
