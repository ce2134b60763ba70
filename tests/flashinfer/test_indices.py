"""CSR index building for FlashInfer's MLA wrapper, on hand-built plans (CPU only)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokensched import InvalidRequest, NewRequestData, RequestMirror, SamplingParams, StepPlan
from tokensched.plan import PLACEHOLDER_TOKEN
from tokensched_flashinfer.indices import build_mla_indices, indices_for_plan

BS = 4  # block size of the hand-built plans


def _new(request_id: str, prompt: list[int], blocks: tuple[int, ...], cached: int = 0) -> NewRequestData:
    return NewRequestData(
        request_id=request_id,
        token_ids=prompt,
        block_ids=blocks,
        num_cached_tokens=cached,
        num_output_tokens=0,
        sampling=SamplingParams(),
    )


def _plan(
    step_id: int,
    rows: list[tuple[str, int, list[int], tuple[int, ...]]],
    new: tuple[NewRequestData, ...] = (),
    removed: tuple[str, ...] = (),
    truncated: dict[str, int] | None = None,
) -> StepPlan:
    """rows: (request_id, num_computed_tokens, tokens, new_block_ids); slots are not checked here."""
    offsets = [0]
    tokens: list[int] = []
    for _, _, toks, _ in rows:
        tokens.extend(toks)
        offsets.append(len(tokens))
    return StepPlan(
        step_id=step_id,
        block_size=BS,
        new_requests=new,
        removed_request_ids=removed,
        request_ids=[r[0] for r in rows],
        num_computed_tokens=[r[1] for r in rows],
        token_offsets=offsets,
        token_ids=tokens,
        slot_mapping=[0] * len(tokens),
        new_block_ids=[r[3] for r in rows],
        sample=[True] * len(rows),
        draft_token_ids=[()] * len(rows),
        truncated_block_tables=truncated or {},
    )


def test_mixed_step_lists_only_live_pages_of_each_request() -> None:
    # "a": prefix hit of 8 tokens (2 shared blocks 7, 3), prefills 3 more; table reserves a spare block 9.
    # "b": a chunked prefill, second chunk: 5 computed + 4 new = 9 tokens -> 3 pages of 4.
    # "c": a decode at position 12: kv_len 13 -> 4 pages.
    mirror = RequestMirror()
    mirror.begin(
        _plan(
            0,
            [("b", 0, [1] * 5, ()), ("c", 0, [2] * 12, ())],
            new=(_new("b", [1] * 9, (4, 5)), _new("c", [2] * 12, (0, 1, 2))),
        )
    )
    plan = _plan(
        1,
        [("a", 8, [5, 6, 7], ()), ("b", 5, [1] * 4, (6,)), ("c", 12, [PLACEHOLDER_TOKEN], (8,))],
        new=(_new("a", list(range(11)), (7, 3, 10, 9), cached=8),),
    )
    mirror.begin(plan)
    idx = indices_for_plan(plan, mirror)
    assert idx.qo_indptr.tolist() == [0, 3, 7, 8]
    assert idx.kv_len.tolist() == [11, 9, 13]
    assert idx.kv_indptr.tolist() == [0, 3, 6, 10]
    assert idx.kv_indices.tolist() == [7, 3, 10, 4, 5, 6, 0, 1, 2, 8]
    assert (idx.batch_size, idx.num_tokens, idx.num_pages) == (3, 8, 10)
    assert (idx.max_q_len, idx.max_kv_len, idx.is_decode) == (4, 13, False)
    assert [idx.pages_of(i) for i in range(3)] == [[7, 3, 10], [4, 5, 6], [0, 1, 2, 8]]
    for t in (idx.qo_indptr, idx.kv_indptr, idx.kv_indices, idx.kv_len):
        assert t.dtype == torch.int32 and t.device.type == "cpu" and t.is_contiguous()


def test_full_last_block_takes_no_extra_page() -> None:
    idx = build_mla_indices([0, 1, 2], [7, 3], [[5, 6, 9], [2, 4]], BS)
    assert idx.kv_len.tolist() == [8, 4]
    assert idx.kv_indptr.tolist() == [0, 2, 3]
    assert idx.kv_indices.tolist() == [5, 6, 2]
    assert idx.is_decode


def test_speculative_truncation_then_growth_follows_the_mirror() -> None:
    mirror = RequestMirror()
    mirror.begin(_plan(0, [("r", 0, [1] * 6, ())], new=(_new("r", [1] * 6, (3, 4, 5)),)))
    # Rollback to 2 blocks, then one new block appended: the table is [3, 4, 11].
    plan = _plan(1, [("r", 6, [PLACEHOLDER_TOKEN, 9, 9], (11,))], truncated={"r": 2})
    mirror.begin(plan)
    idx = indices_for_plan(plan, mirror)
    assert idx.kv_len.tolist() == [9]
    assert idx.kv_indices.tolist() == [3, 4, 11]


def test_removed_and_readmitted_request_uses_its_new_table() -> None:
    mirror = RequestMirror()
    mirror.begin(_plan(0, [("p", 0, [1] * 4, ())], new=(_new("p", [1] * 4, (0,)),)))
    plan = _plan(1, [("p", 0, [1] * 4, ())], new=(_new("p", [1] * 4, (6,)),), removed=("p",))
    mirror.begin(plan)
    assert indices_for_plan(plan, mirror).kv_indices.tolist() == [6]


def test_short_block_table_is_refused_naming_step_and_request() -> None:
    mirror = RequestMirror()
    plan = _plan(3, [("x", 0, [1] * 5, ())], new=(_new("x", [1] * 5, (1,)),))
    mirror.begin(plan)
    with pytest.raises(InvalidRequest, match=r"step 3: request 'x' needs 2 KV blocks for 5 tokens .* holds 1"):
        indices_for_plan(plan, mirror)


def test_request_with_no_tokens_is_refused() -> None:
    with pytest.raises(InvalidRequest, match=r"request #1 schedules no tokens"):
        build_mla_indices([0, 2, 2], [0, 0], [[1], [2]], BS)


def test_mismatched_columns_are_refused() -> None:
    with pytest.raises(InvalidRequest, match=r"batch columns disagree"):
        build_mla_indices([0, 1], [0, 0], [[1], [2]], BS)


def test_empty_batch_builds_empty_indices() -> None:
    idx = build_mla_indices([0], [], [], BS)
    assert (idx.batch_size, idx.num_tokens, idx.num_pages, idx.max_q_len) == (0, 0, 0, 0)
    assert idx.dense_block_tables().shape == (0, 1)


def test_dense_block_tables_pad_rows_to_the_requested_multiple() -> None:
    idx = build_mla_indices([0, 1, 3], [8, 0], [[5, 6, 9, 1], [2, 4]], BS)
    assert idx.dense_block_tables().tolist() == [[5, 6, 9], [2, 0, 0]]
    wide = idx.dense_block_tables(width_multiple=4, pad_page=7)
    assert wide.dtype == torch.int32
    assert wide.tolist() == [[5, 6, 9, 7], [2, 7, 7, 7]]
    with pytest.raises(ValueError, match="width_multiple"):
        idx.dense_block_tables(width_multiple=0)


@st.composite
def _batches(draw: st.DrawFn) -> tuple[list[int], list[int], list[list[int]], int]:
    page = draw(st.sampled_from([1, 2, 16, 64]))
    n = draw(st.integers(0, 12))
    q_lens = draw(st.lists(st.integers(1, 70), min_size=n, max_size=n))
    computed = draw(st.lists(st.integers(0, 300), min_size=n, max_size=n))
    tables = []
    for q, c in zip(q_lens, computed, strict=True):
        spare = draw(st.integers(0, 3))
        need = math.ceil((q + c) / page)
        tables.append(draw(st.lists(st.integers(0, 10_000), min_size=need + spare, max_size=need + spare)))
    offsets = [0]
    for q in q_lens:
        offsets.append(offsets[-1] + q)
    return offsets, computed, tables, page


@settings(max_examples=150, deadline=None)
@given(_batches())
def test_csr_matches_a_per_request_reading_of_the_batch(
    batch: tuple[list[int], list[int], list[list[int]], int],
) -> None:
    offsets, computed, tables, page = batch
    idx = build_mla_indices(offsets, computed, tables, page)
    assert idx.qo_indptr.tolist() == offsets
    for i, table in enumerate(tables):
        kv_len = computed[i] + offsets[i + 1] - offsets[i]
        assert int(idx.kv_len[i]) == kv_len
        assert idx.pages_of(i) == table[: math.ceil(kv_len / page)]
        assert idx.dense_block_tables()[i, : len(idx.pages_of(i))].tolist() == idx.pages_of(i)
    assert idx.num_pages == idx.kv_indices.numel()
