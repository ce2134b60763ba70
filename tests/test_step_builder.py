"""The plan's slot mapping for chunks long enough to take the array pass, against the block tables."""

from __future__ import annotations

import os

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from tokensched import RequestSpec, Scheduler, SchedulerConfig, StepResult
from tokensched.int_column import IntColumn
from tokensched.machines.request import Decoding, Prefilling
from tokensched.step_builder import BULK_SLOTS

EXAMPLES = int(os.environ.get("TOKENSCHED_STATEFUL_EXAMPLES", "500"))


def planned_slots_match_the_tables(block_size: int, lengths: list[int], budget: int) -> int:
    """Run prompts of ``lengths`` to their end, checking every plan's slots; returns the chunks >= BULK_SLOTS."""
    s = Scheduler(SchedulerConfig(num_blocks=4096, block_size=block_size, max_batched_tokens=budget))
    for i, n in enumerate(lengths):
        s.submit(RequestSpec(request_id=f"r{i}", prompt_token_ids=[(7 * j + i) % 50 for j in range(n)], max_tokens=2))
    long_chunks = 0
    while s.has_work:
        plan = s.plan()
        assert plan is not None
        for i, rid in enumerate(plan.request_ids):
            state = s.get(rid).state
            assert type(state) is Prefilling or type(state) is Decoding
            lo, hi = plan.token_offsets[i], plan.token_offsets[i + 1]
            first = plan.num_computed_tokens[i]
            table, bs = state.blocks, block_size
            expected = [table[p // bs] * bs + p % bs for p in range(first, first + hi - lo)]
            assert plan.slot_mapping[lo:hi] == expected
            long_chunks += hi - lo >= BULK_SLOTS
        s.complete(StepResult(plan.step_id, [[9] if x else [] for x in plan.sample]))
    return long_chunks


@settings(max_examples=40, deadline=None)
@given(
    block_size=st.sampled_from([1, 4, 16]),
    lengths=st.lists(st.integers(1, 3 * BULK_SLOTS), min_size=1, max_size=3),
    budget=st.integers(BULK_SLOTS // 2, 2 * BULK_SLOTS),
)
def test_every_planned_position_maps_to_its_slot_in_the_block_table(
    block_size: int, lengths: list[int], budget: int
) -> None:
    planned_slots_match_the_tables(block_size, lengths, budget)


def test_long_chunks_starting_mid_block_take_the_array_pass() -> None:
    assert planned_slots_match_the_tables(16, [3 * BULK_SLOTS + 5, 2 * BULK_SLOTS], BULK_SLOTS + 7) >= 3


def test_a_long_chunk_leaves_its_columns_as_arrays_until_an_executor_indexes_them() -> None:
    s = Scheduler(SchedulerConfig(num_blocks=256, block_size=16, max_batched_tokens=2048))
    s.submit(RequestSpec(request_id="short", prompt_token_ids=[5, 6, 7], max_tokens=4))
    s.submit(RequestSpec(request_id="long", prompt_token_ids=list(range(3, 3 + 2 * BULK_SLOTS)), max_tokens=2))
    plan = s.plan()
    assert plan is not None and isinstance(plan.token_ids, IntColumn) and isinstance(plan.slot_mapping, IntColumn)
    arrays = plan.arrays()
    assert plan.token_ids._list is None and plan.slot_mapping._list is None  # arrays() built no list
    assert len(plan.token_ids) == plan.token_offsets[-1] == 3 + 2 * BULK_SLOTS
    assert arrays.token_ids.tolist() == [5, 6, 7, *range(3, 3 + 2 * BULK_SLOTS)] == plan.token_ids
    as_lists = attrs.evolve(plan, token_ids=list(plan.token_ids), slot_mapping=list(plan.slot_mapping))
    assert as_lists == plan and plan == as_lists
