"""One sequence: the object the engine runs, from its first prefill chunk to its release.

Its KV state (block table, length, prefix keys) is the block manager's (`blocks.KvState`); `window` is what it
can hold at most when every layer is windowed (window + sinks positions), None otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from moe_runtime.engine.blocks import KvState


@dataclass(eq=False)
class Sequence(KvState):
    window: int | None = None

    @property
    def tokens_held(self) -> int:
        """Positions whose keys and values later tokens still see."""
        return self.length if self.window is None else min(self.length, self.window)
