"""The errors an adapter operation raises: each names the adapter and the reason."""

from __future__ import annotations


class AdapterError(ValueError):
    """An adapter that cannot be loaded, or a request for one that cannot be served. Nothing loaded changed."""

    def __init__(self, adapter: str, reason: str):
        super().__init__(f"adapter {adapter!r}: {reason}")
        self.adapter = adapter
        self.reason = reason


class AdapterNotFound(AdapterError):
    """No adapter of that name is loaded (the OpenAI API answers 404)."""

    def __init__(self, adapter: str):
        super().__init__(adapter, "not loaded")
