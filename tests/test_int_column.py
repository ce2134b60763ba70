"""IntColumn: a plan's lazily joined per-token column behaves as the list it stands for."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokensched.int_column import ChunkSlots, IntColumn, as_list

parts_strategy = st.lists(
    st.tuples(st.booleans(), st.lists(st.integers(-5, 2**31 - 1), max_size=6)), min_size=1, max_size=5
)


def build(parts: list[tuple[bool, list[int]]]) -> tuple[IntColumn, list[int]]:
    column = IntColumn([np.array(v, dtype=np.int64) if as_array else list(v) for as_array, v in parts])
    return column, [x for _, v in parts for x in v]


@settings(max_examples=100, deadline=None)
@given(parts=parts_strategy, data=st.data())
def test_a_column_is_the_list_of_its_parts(parts: list[tuple[bool, list[int]]], data: st.DataObject) -> None:
    column, expected = build(parts)
    assert len(column) == len(expected)  # without building the list
    assert column._list is None
    assert column.array(np.int64).tolist() == expected and column._list is None
    assert column == expected and expected == column and column == IntColumn([list(expected)])
    assert column != [*expected, 1] and column != "abc"
    assert list(column) == expected and column.tolist() == expected and as_list(column) == expected
    assert repr(column) == repr(expected)
    if expected:
        i = data.draw(st.integers(-len(expected), len(expected) - 1))
        lo = data.draw(st.integers(0, len(expected)))
        assert column[i] == expected[i] and column[lo:] == expected[lo:] and (expected[i] in column)
    assert pickle.loads(pickle.dumps(column)) == expected


def test_a_column_is_unhashable_like_a_list_and_its_arrays_keep_their_dtype() -> None:
    column = IntColumn([[1, 2], np.array([3], dtype=np.int32)])
    try:
        hash(column)
    except TypeError:
        pass
    else:
        raise AssertionError("an IntColumn must not be hashable")
    assert column.array(np.int32).dtype == np.int32 and column.array(np.int64).dtype == np.int64
    assert IntColumn([]).array(np.int32).shape == (0,) and IntColumn([]) == []


@settings(max_examples=100, deadline=None)
@given(
    block_size=st.sampled_from([1, 2, 4, 16]),
    blocks=st.lists(st.integers(0, 10**6), min_size=1, max_size=8),
    lane=st.integers(0, 15),
    n=st.integers(1, 128),
    list_first=st.booleans(),
)
def test_chunk_slots_are_the_positions_slots_in_their_blocks(
    block_size: int, blocks: list[int], lane: int, n: int, list_first: bool
) -> None:
    """Made lazily, in either order (list or array first), a chunk's slots are each position's block id times
    the block size plus its offset in the block; positions past the blocks are refused when it is made."""
    lane %= block_size
    if lane + n > len(blocks) * block_size:
        with pytest.raises(IndexError):
            ChunkSlots(blocks, lane, n, block_size)
        return
    expected = [blocks[(lane + j) // block_size] * block_size + (lane + j) % block_size for j in range(n)]
    slots = ChunkSlots(list(blocks), lane, n, block_size)
    assert len(slots) == n
    column = IntColumn([[7], slots])
    if list_first:
        assert column.tolist() == [7, *expected]
    assert column.array(np.int64).tolist() == [7, *expected]
    assert np.asarray(slots, dtype=np.int32).tolist() == expected
    assert slots.tolist() == expected
