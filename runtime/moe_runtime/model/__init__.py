"""The model: configuration, checkpoint loading, the decoder (attention, MoE, quantisation), tokenizer, LoRA weights. Imports nothing else of moe_runtime."""
