"""Which KV cache blocks each sequence holds, and the prefix cache over full blocks. Pure bookkeeping over block
ids: the tensors are the model's (`model.attention.KvPool`).

- A sequence's block table lists its blocks in position order; `grow` adds blocks as it lengthens, so memory is
  what it holds, rounded up to a block.
- Placement: a growing sequence takes the block right after its last one when that is free, so its keys stay one
  run of slots that decode attention reads in place; a new run starts in the middle of the largest free run, so
  neighbours have room to grow too. When no block is free, the least recently used cached block is reused.
- Windowed attention (every layer windowed): a block none of the sequence's later queries can see (past the
  sinks and behind the window) goes back to the free runs, so a long sequence holds sinks + window, in blocks.
- Prefix caching (vLLM's automatic prefix caching): every full block gets a key chaining its tokens (and the
  adapter whose keys it holds) to the key of the block before; a new sequence whose prompt starts with
  cached blocks takes them (shared, read-only: nobody writes to a full block) and prefills only the rest.
  Blocks nobody holds keep their contents and stay findable until the space is needed (least recently freed
  first). The block with the prompt's last token is always computed: its logits are needed. Off for windowed
  sequences (their early blocks are gone).
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from dataclasses import dataclass, field

NO_BLOCK = -1  # a block table entry given back (behind the window)


class CacheFull(RuntimeError):
    """No block left (the scheduler's reservations prevent it; a direct caller may overfill). The message says
    "out of memory" so the engine thread backs off as from any other out-of-memory step."""


@dataclass(eq=False)  # identity: two sequences with the same blocks are still two
class KvState:
    """What the cache knows of one sequence: its blocks and how many positions they hold."""

    block_table: list[int] = field(default_factory=list)
    length: int = 0  # positions written = the position of the next token
    keys: list[int] = field(default_factory=list)  # prefix keys of its full blocks, while they are cacheable
    unkeyed: list[int] = field(default_factory=list)  # tokens after the last keyed block
    adapter: str | None = None


@dataclass(frozen=True)
class Window:
    """Every layer windowed: `size` positions back (the largest layer window) plus `sinks` first positions."""

    size: int
    sinks: int


class FreeRuns:
    """Free blocks as maximal runs of consecutive ids."""

    def __init__(self, num_blocks: int) -> None:
        self._end_of = {0: num_blocks} if num_blocks else {}  # start -> end
        self._start_of = {num_blocks: 0} if num_blocks else {}  # end -> start
        self._largest = [(-num_blocks, 0)] if num_blocks else []  # (-length, start), stale entries skipped
        self.count = num_blocks

    def take(self, block: int) -> bool:
        """Takes `block` if it starts a free run (as the block after a sequence's last one does)."""
        end = self._end_of.pop(block, None)
        if end is None:
            return False
        del self._start_of[end]
        if block + 1 < end:
            self._add(block + 1, end)
        self.count -= 1
        return True

    def take_spread(self) -> int | None:
        """The middle block of the largest run (its first when the run starts at block 0), or None."""
        while self._largest:
            length, start = heapq.heappop(self._largest)
            end = self._end_of.get(start)
            if end is None or end - start != -length:
                continue  # stale
            block = start if start == 0 else start + (end - start) // 2
            del self._end_of[start]
            del self._start_of[end]
            if start < block:
                self._add(start, block)
            if block + 1 < end:
                self._add(block + 1, end)
            self.count -= 1
            return block
        return None

    def give(self, block: int) -> None:
        start, end = block, block + 1
        if (before := self._start_of.pop(start, None)) is not None:
            del self._end_of[before]
            start = before
        if (after := self._end_of.pop(end, None)) is not None:
            del self._start_of[after]
            end = after
        self._add(start, end)
        self.count += 1

    def _add(self, start: int, end: int) -> None:
        self._end_of[start] = end
        self._start_of[end] = start
        heapq.heappush(self._largest, (start - end, start))
        if len(self._largest) > 4 * len(self._end_of) + 64:  # mostly stale entries: rebuild
            self._largest = [(s - e, s) for s, e in self._end_of.items()]
            heapq.heapify(self._largest)


class BlockManager:
    def __init__(
        self, num_blocks: int, block_size: int, *, prefix_caching: bool = True, window: Window | None = None
    ) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("the KV cache needs at least one block of at least one token")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.window = window
        self.prefix_caching = prefix_caching and window is None
        self._free = FreeRuns(num_blocks)
        self._refs = [0] * num_blocks
        self._key_of: dict[int, tuple] = {}  # block -> its prefix key, while cached
        self._block_of: dict[tuple, int] = {}  # prefix key -> block
        self._idle: OrderedDict[int, None] = OrderedDict()  # cached blocks nobody holds, least recent first
        self.used = 0  # blocks some sequence holds
        self.prefix_queries = 0  # prompt tokens looked up in the prefix cache (vLLM's counter), and found
        self.prefix_hits = 0

    # ---- capacity --------------------------------------------------------------------------------------------

    def usage(self) -> float:
        return self.used / self.num_blocks

    def blocks_for(self, tokens: int, chunk: int) -> int:
        """The most blocks a sequence of `tokens` positions ever holds at once, fed at most `chunk` per step."""
        full = math.ceil(tokens / self.block_size)
        if self.window is None:
            return full
        bs = self.block_size
        # the sink blocks, plus the window behind a chunk and the chunk itself, spanning one block more
        return min(
            full, math.ceil(self.window.sinks / bs) + math.ceil((self.window.size - 1 + chunk) / bs) + 1
        )

    # ---- sequences -------------------------------------------------------------------------------------------

    def grow(self, seq: KvState, end: int) -> None:
        """Blocks for positions up to `end` (exclusive); first gives back those the window has passed."""
        if self.window is not None:
            self._recycle(seq)
        needed = math.ceil(end / self.block_size) - len(seq.block_table)
        if needed > self._free.count + len(self._idle):
            raise CacheFull(
                f"out of memory: the KV cache has {self._free.count + len(self._idle)} free blocks, "
                f"{needed} needed"
            )
        for _ in range(needed):
            seq.block_table.append(self._allocate(_last_block(seq.block_table)))

    def free(self, seq: KvState) -> None:
        """Gives back every block of `seq` (cached ones stay findable until their space is needed); it is
        empty again."""
        for block in seq.block_table:
            if block != NO_BLOCK:
                self._release(block)
        seq.block_table = []
        seq.length = 0
        seq.keys, seq.unkeyed = [], []

    def commit(self, seq: KvState, tokens: list[int]) -> None:
        """`tokens` were written at the end of `seq` (its length already counts them): each block they fill
        becomes findable by its prefix key."""
        if not self.prefix_caching:
            return
        seq.unkeyed += tokens
        bs = self.block_size
        while len(seq.unkeyed) >= bs:
            key = (seq.keys[-1] if seq.keys else None, tuple(seq.unkeyed[:bs]), seq.adapter)
            seq.keys.append(hash(key))
            del seq.unkeyed[:bs]
            block = seq.block_table[len(seq.keys) - 1]
            if key not in self._block_of and block not in self._key_of:
                self._block_of[key] = block
                self._key_of[block] = key

    def match_prefix(self, seq: KvState, tokens: list[int]) -> int:
        """For an empty `seq` about to prefill `tokens`: takes the cached blocks its tokens start with (never
        the block of the last token) and returns how many positions they hold."""
        assert not seq.block_table and seq.length == 0
        if not self.prefix_caching:
            return 0
        bs, parent = self.block_size, None
        for index in range((len(tokens) - 1) // bs):
            chunk = tuple(tokens[index * bs : (index + 1) * bs])
            key = (parent, chunk, seq.adapter)
            block = self._block_of.get(key)
            if block is None:
                break
            if self._refs[block] == 0:
                del self._idle[block]
                self.used += 1
            self._refs[block] += 1
            seq.block_table.append(block)
            parent = hash(key)
            seq.keys.append(parent)
        seq.length = len(seq.block_table) * bs
        self.prefix_queries += len(tokens)
        self.prefix_hits += seq.length
        return seq.length

    # ---- internals -------------------------------------------------------------------------------------------

    def _allocate(self, after: int | None) -> int:
        if after is not None and self._free.take(after + 1):
            block = after + 1
        elif (block := self._free.take_spread()) is None:
            block, _ = self._idle.popitem(last=False)
            del self._block_of[self._key_of.pop(block)]
        self._refs[block] = 1
        self.used += 1
        return block

    def _release(self, block: int) -> None:
        self._refs[block] -= 1
        if self._refs[block]:
            return
        self.used -= 1
        if block in self._key_of:
            self._idle[block] = None
        else:
            self._free.give(block)

    def _recycle(self, seq: KvState) -> None:
        """Gives back the blocks behind the window of the next query (position `seq.length`), past the sinks."""
        assert self.window is not None
        bs = self.block_size
        first_kept = max(0, seq.length - self.window.size + 1)  # the oldest position a later query sees
        for index in range(math.ceil(self.window.sinks / bs), first_kept // bs):
            if seq.block_table[index] != NO_BLOCK:
                self._release(seq.block_table[index])
                seq.block_table[index] = NO_BLOCK


def _last_block(table: list[int]) -> int | None:
    for block in reversed(table):
        if block != NO_BLOCK:
            return block
    return None
