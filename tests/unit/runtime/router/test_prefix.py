from hypothesis import given
from hypothesis import strategies as st

from moe_runtime.router.prefix import PrefixTable, block_hashes


def test_blocks_chain_so_equal_hashes_mean_equal_prefixes():
    a = block_hashes("m", "x" * 256 + "y" * 256 + "tail", block_chars=256)
    b = block_hashes("m", "x" * 256 + "z" * 256, block_chars=256)
    assert len(a) == 2 and a[0] == b[0] and a[1] != b[1]
    assert block_hashes("other-model", "x" * 256)[0] != a[0]
    assert block_hashes("m", "short") == []


def test_the_longest_recorded_prefix_wins_and_unknown_pods_are_ignored():
    table = PrefixTable()
    shared = "s" * 512
    table.record(block_hashes("m", shared + "a" * 256), "pod-a")
    table.record(block_hashes("m", shared), "pod-b")  # the two shared blocks move to pod-b
    matches = table.matches(block_hashes("m", shared + "a" * 256), {"pod-a", "pod-b", "pod-c"})
    assert matches == {"pod-a": 3, "pod-b": 2, "pod-c": 0}
    table.forget("pod-b")
    assert table.matches(block_hashes("m", shared + "a" * 256), {"pod-a"}) == {"pod-a": 0}


@given(prompts=st.lists(st.text(min_size=0, max_size=40), max_size=30), capacity=st.integers(1, 20))
def test_the_table_never_holds_more_than_its_capacity(prompts, capacity):
    table = PrefixTable(capacity)
    for i, prompt in enumerate(prompts):
        table.record(block_hashes("m", prompt, block_chars=4), f"pod-{i % 3}")
        assert len(table) <= capacity
