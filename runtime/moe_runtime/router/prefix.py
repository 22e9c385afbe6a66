"""Which pod saw a prompt's prefix last: the router's own approximate view of the pods' prefix caches. Pure.

A prompt is cut into blocks of `block_chars` characters; block i's hash chains the hashes of blocks 0..i (and
the model or adapter name), so equal hashes mean equal prefixes. The table remembers, per block hash, the pod
the router last sent a prompt with that prefix to, the least recently used entries going first past
`capacity`. A router replica learns from its own picks only; replicas that disagree cost cache hits, never
correctness. The same idea as the Inference Extension's prefix-cache scorer, on characters rather than tokens:
the router has no tokenizer.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

DEFAULT_BLOCK_CHARS = 256
DEFAULT_CAPACITY = 200_000


def block_hashes(model: str, prompt: str, block_chars: int = DEFAULT_BLOCK_CHARS) -> list[bytes]:
    """One chained hash per whole block of the prompt (a trailing partial block has none)."""
    hashes = []
    digest = hashlib.blake2b(model.encode(), digest_size=16).digest()
    for start in range(0, len(prompt) - block_chars + 1, block_chars):
        block = prompt[start : start + block_chars].encode()
        digest = hashlib.blake2b(digest + block, digest_size=16).digest()
        hashes.append(digest)
    return hashes


class PrefixTable:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("a prefix table holds at least one block")
        self.capacity = capacity
        self._owner: OrderedDict[bytes, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._owner)

    def matches(self, hashes: list[bytes], pods: set[str]) -> dict[str, int]:
        """For each of `pods`, how many leading blocks of `hashes` it was last sent (0 for most)."""
        matched = dict.fromkeys(pods, 0)
        for depth, digest in enumerate(hashes, start=1):
            owner = self._owner.get(digest)
            if owner is None:
                break
            if owner in matched:
                matched[owner] = depth
        return matched

    def record(self, hashes: list[bytes], pod: str) -> None:
        for digest in hashes:
            self._owner[digest] = pod
            self._owner.move_to_end(digest)
        while len(self._owner) > self.capacity:
            self._owner.popitem(last=False)

    def forget(self, pod: str) -> None:
        """A pod that left: its entries point nowhere."""
        for digest in [d for d, owner in self._owner.items() if owner == pod]:
            del self._owner[digest]
