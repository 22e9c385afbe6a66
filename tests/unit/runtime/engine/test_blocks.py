"""The block manager alone: placement, giving back, windows and the prefix cache, over random histories."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_runtime.engine.blocks import NO_BLOCK, BlockManager, CacheFull, FreeRuns, KvState, Window


def held(seq: KvState) -> list[int]:
    return [block for block in seq.block_table if block != NO_BLOCK]


def feed(manager: BlockManager, seq: KvState, tokens: list[int], written: dict | None = None) -> None:
    """What the engine does for a chunk: blocks for it, the tokens written to their slots (recorded in
    `written`: (block, offset) -> token), then the length moved on and the full blocks keyed."""
    manager.grow(seq, seq.length + len(tokens))
    for position, token in enumerate(tokens, start=seq.length):
        block = seq.block_table[position // manager.block_size]
        if written is not None:
            written[block, position % manager.block_size] = token
    seq.length += len(tokens)
    manager.commit(seq, tokens)


def check_accounting(manager: BlockManager, live: list[KvState]) -> None:
    refs: dict[int, int] = {}
    for seq in live:
        for block in held(seq):
            refs[block] = refs.get(block, 0) + 1
    assert manager.used == len(refs)
    assert manager._free.count + len(manager._idle) + manager.used == manager.num_blocks
    for block, count in refs.items():
        assert manager._refs[block] == count
        if count > 1:  # only cached (full, keyed) blocks are shared
            assert block in manager._key_of


operation = st.one_of(
    st.tuples(st.just("new"), st.integers(0, 3), st.integers(1, 40)),  # prompt from one of 4 families
    st.tuples(st.just("feed"), st.integers(0, 20), st.integers(1, 9)),
    st.tuples(st.just("free"), st.integers(0, 20), st.just(0)),
)


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(operation, max_size=60), block_size=st.sampled_from([1, 2, 4]), caching=st.booleans())
def test_no_block_is_lost_or_held_twice_and_cached_prefixes_are_exact(ops, block_size, caching):
    manager = BlockManager(64, block_size, prefix_caching=caching)
    live: list[KvState] = []
    written: dict[tuple[int, int], int] = {}
    for kind, index, n in ops:
        try:
            if kind == "new":
                prompt = [index] * 5 + list(range(n))  # families share their first 5 tokens
                seq = KvState()
                hit = manager.match_prefix(seq, prompt)
                assert hit % block_size == 0 and hit <= len(prompt) - 1 and (caching or hit == 0)
                for position in range(hit):  # a cached block holds exactly the tokens it stands for
                    block = seq.block_table[position // block_size]
                    assert written[block, position % block_size] == prompt[position]
                live.append(seq)
                feed(manager, seq, prompt[hit:], written)
            elif kind == "feed" and live:
                feed(manager, live[index % len(live)], list(range(100, 100 + n)), written)
            elif kind == "free" and live:
                seq = live.pop(index % len(live))
                manager.free(seq)
                assert seq.block_table == [] and seq.length == 0
        except CacheFull:
            pass  # a full cache refuses and changes nothing
        check_accounting(manager, live)
    for seq in live:
        assert len(seq.block_table) * block_size >= seq.length
        manager.free(seq)
    check_accounting(manager, [])
    assert manager.used == 0


def test_a_sequence_growing_alone_keeps_one_run_and_new_ones_start_apart():
    manager = BlockManager(100, 4)
    a, b = KvState(), KvState()
    feed(manager, a, [1] * 10)
    feed(manager, b, [2] * 10)
    for _ in range(20):
        feed(manager, a, [3])
        feed(manager, b, [4])
    for seq in (a, b):
        assert seq.block_table == list(range(seq.block_table[0], seq.block_table[0] + len(seq.block_table)))
    assert abs(a.block_table[0] - b.block_table[0]) >= 40  # the middle of the free space


def test_the_same_prompt_finds_its_full_blocks_but_never_the_last_token_block():
    manager = BlockManager(32, 4)
    first = KvState()
    feed(manager, first, list(range(10)))  # blocks of 0-3, 4-7 full; 8-9 partial
    manager.free(first)
    again = KvState()
    assert manager.match_prefix(again, list(range(10))) == 8
    assert manager.prefix_queries == 10 and manager.prefix_hits == 8
    exact = KvState()
    assert manager.match_prefix(exact, list(range(8))) == 4  # the block of token 7 is computed again
    other_adapter = KvState(adapter="sql")
    assert manager.match_prefix(other_adapter, list(range(10))) == 0  # its keys and values differ
    changed = KvState()
    assert manager.match_prefix(changed, [0, 1, 2, 3, 9, 5, 6, 7, 8]) == 4


def test_idle_cached_blocks_make_room_least_recent_first():
    manager = BlockManager(4, 2)
    old, new = KvState(), KvState()
    feed(manager, old, [1, 2, 3])  # 2 blocks, the first full and cached
    manager.free(old)
    feed(manager, new, [5, 6, 7])
    manager.free(new)
    assert len(manager._idle) == 2 and manager._free.count == 2
    filler = KvState()
    feed(manager, filler, [9] * 6)  # 3 blocks: the 2 free ones and the least recent cached one
    assert manager.match_prefix(KvState(), [1, 2, 3]) == 0
    assert manager.match_prefix(KvState(), [5, 6, 7]) == 2
    with pytest.raises(CacheFull, match="out of memory"):
        feed(manager, filler, [9] * 10)


def test_a_windowed_sequence_gives_back_what_no_later_query_sees():
    manager = BlockManager(64, 4, window=Window(8, 3))
    assert not manager.prefix_caching
    seq = KvState()
    feed(manager, seq, list(range(30)))
    feed(manager, seq, [1])  # the next query is at 30: it sees 0-2 (sinks) and 23-30
    assert seq.block_table[0] != NO_BLOCK and seq.block_table[1:5] == [NO_BLOCK] * 4
    assert all(block != NO_BLOCK for block in seq.block_table[5:])
    assert len(held(seq)) <= manager.blocks_for(10_000, chunk=1)


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 29)), max_size=80))
def test_free_runs_hand_out_each_block_once_and_merge_back(ops):
    runs = FreeRuns(30)
    taken: set[int] = set()
    for take, block in ops:
        if take:
            got = runs.take_spread()
            if got is None:
                assert len(taken) == 30
                continue
            assert got not in taken
            taken.add(got)
        elif taken:
            back = sorted(taken)[block % len(taken)]
            taken.remove(back)
            runs.give(back)
        assert runs.count == 30 - len(taken)
    for block in sorted(taken):
        runs.give(block)
    assert runs._end_of == {0: 30}
