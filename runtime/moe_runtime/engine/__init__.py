"""The engine: batched prefill/decode over the model, the scheduler, sampling, the KV budget, and the engine thread that hands tokens to asyncio."""
