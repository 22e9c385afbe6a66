"""`python -m moe_runtime serve`: its options and the command that wires model, engine, adapters and API together."""
