"""Paged-attention index tensors for FlashInfer's batch MLA wrapper, built once per step.

FlashInfer describes a ragged batch in CSR form, with one KV page per tokensched
block (``page_size == block_size``)::

    qo_indptr[i]:qo_indptr[i + 1]    request i's query tokens in the packed batch
    kv_indptr[i]:kv_indptr[i + 1]    request i's live pages in ``kv_indices``
    kv_len[i]                        tokens of KV request i attends to

A request attends to everything computed before this step plus its own new
tokens, whose KV the step writes before attention runs, so
``kv_len = num_computed_tokens + num_scheduled_tokens``. FlashInfer requires
exactly ``ceil(kv_len / page_size)`` pages per request: blocks reserved beyond
that (a table grown ahead of its tokens) must not be listed, so only the live
prefix of each block table goes into ``kv_indices``.

Everything here is host-side integer work (numpy, then one ``torch.from_numpy``),
so it is testable without a GPU and costs O(live pages) per step, the size of
the index itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np
import torch

from tokensched.errors import InvalidRequest
from tokensched.executor import RequestMirror
from tokensched.plan import StepPlan


@attrs.frozen(slots=True)
class MLAIndices:
    """The CSR description of one step's batch, int32 CPU tensors as FlashInfer's plan() takes them.

    ``block_tables`` keeps each request's live pages (the same ids as
    ``kv_indices``) for the dense form that some backends plan from.
    """

    qo_indptr: torch.Tensor  # [batch + 1]
    kv_indptr: torch.Tensor  # [batch + 1]
    kv_indices: torch.Tensor  # [kv_indptr[-1]]
    kv_len: torch.Tensor  # [batch]
    page_size: int
    max_q_len: int
    max_kv_len: int

    @property
    def batch_size(self) -> int:
        return int(self.kv_len.numel())

    @property
    def num_tokens(self) -> int:
        return int(self.qo_indptr[-1])

    @property
    def num_pages(self) -> int:
        return int(self.kv_indptr[-1])

    @property
    def is_decode(self) -> bool:
        """Every request has exactly one query token (the shape CUDA graphs are captured for)."""
        return self.max_q_len == 1

    def pages_of(self, index: int) -> list[int]:
        """The live page ids of request ``index`` (a test and debugging view)."""
        lo, hi = int(self.kv_indptr[index]), int(self.kv_indptr[index + 1])
        return [int(page) for page in self.kv_indices[lo:hi]]

    def dense_block_tables(self, width_multiple: int = 1, pad_page: int = 0) -> torch.Tensor:
        """``[batch, width]`` int32 page table for dense-metadata backends (TRTLLM-GEN, CUTLASS).

        Rows hold each request's live pages, padded with ``pad_page`` (a valid
        page id, never read past ``kv_len``); ``width`` is the longest row
        rounded up to ``width_multiple`` and at least one.
        """
        if width_multiple < 1:
            raise ValueError(f"width_multiple must be positive, got {width_multiple}")
        indptr = self.kv_indptr.numpy().astype(np.int64)
        counts = indptr[1:] - indptr[:-1]
        longest = int(counts.max()) if counts.size else 0
        width = max(width_multiple, -(-longest // width_multiple) * width_multiple)
        table = np.full((self.batch_size, width), pad_page, dtype=np.int32)
        if counts.size:
            rows = np.repeat(np.arange(self.batch_size), counts)
            cols = np.arange(int(indptr[-1])) - np.repeat(indptr[:-1], counts)
            table[rows, cols] = self.kv_indices.numpy()
        return torch.from_numpy(table)


def build_mla_indices(
    token_offsets: Sequence[int],
    num_computed_tokens: Sequence[int],
    block_tables: Sequence[Sequence[int]],
    page_size: int,
    *,
    request_ids: Sequence[str] | None = None,
    step_id: int | None = None,
) -> MLAIndices:
    """CSR indices for a batch given its columns and each request's block table.

    ``token_offsets`` has one entry more than there are requests (the plan's
    column of the same name); ``block_tables[i]`` is request i's whole table,
    of which only the live prefix is used. ``request_ids`` and ``step_id`` only
    make error messages name the request at fault.

    Raises :class:`~tokensched.errors.InvalidRequest` when a request schedules
    no token or its table holds fewer blocks than its KV needs (a plan that does
    not match the executor's mirror).
    """
    if page_size < 1:
        raise ValueError(f"page_size must be positive, got {page_size}")
    batch = len(block_tables)
    if len(token_offsets) != batch + 1 or len(num_computed_tokens) != batch:
        raise InvalidRequest(
            f"{_where(step_id)}batch columns disagree: {len(token_offsets)} token offsets, "
            f"{len(num_computed_tokens)} computed counts and {batch} block tables"
        )
    offsets = np.asarray(token_offsets, dtype=np.int64)
    q_lens = offsets[1:] - offsets[:-1]
    kv_lens = np.asarray(num_computed_tokens, dtype=np.int64) + q_lens
    if batch and (offsets[0] != 0 or int(q_lens.min()) < 1):
        bad = 0 if offsets[0] != 0 else int(np.argmin(q_lens))
        raise InvalidRequest(
            f"{_where(step_id)}request {_name(request_ids, bad)} schedules no tokens "
            f"(token_offsets must start at 0 and increase: {list(token_offsets)[: bad + 2]})"
        )
    pages = -(-kv_lens // page_size)
    kv_indptr = np.zeros(batch + 1, dtype=np.int64)
    np.cumsum(pages, out=kv_indptr[1:])

    flat: list[int] = []
    for i, (table, needed) in enumerate(zip(block_tables, pages.tolist(), strict=True)):
        if needed > len(table):
            raise InvalidRequest(
                f"{_where(step_id)}request {_name(request_ids, i)} needs {needed} KV blocks for "
                f"{int(kv_lens[i])} tokens (block_size {page_size}) but its block table holds {len(table)}"
            )
        flat.extend(table[:needed])

    return MLAIndices(
        qo_indptr=torch.from_numpy(offsets.astype(np.int32)),
        kv_indptr=torch.from_numpy(kv_indptr.astype(np.int32)),
        kv_indices=torch.from_numpy(np.array(flat, dtype=np.int32)),
        kv_len=torch.from_numpy(kv_lens.astype(np.int32)),
        page_size=page_size,
        max_q_len=int(q_lens.max()) if batch else 0,
        max_kv_len=int(kv_lens.max()) if batch else 0,
    )


def indices_for_plan(plan: StepPlan, mirror: RequestMirror) -> MLAIndices:
    """Indices for ``plan`` from the executor's mirror, after ``mirror.begin(plan)`` ran.

    The mirror's block tables already hold this plan's new blocks and
    truncations, which is why it must be called after ``begin``.
    """
    return build_mla_indices(
        plan.token_offsets,
        plan.num_computed_tokens,
        [mirror.block_table(request_id) for request_id in plan.request_ids],
        plan.block_size,
        request_ids=plan.request_ids,
        step_id=plan.step_id,
    )


def _where(step_id: int | None) -> str:
    return "" if step_id is None else f"step {step_id}: "


def _name(request_ids: Sequence[str] | None, index: int) -> str:
    return repr(request_ids[index]) if request_ids is not None else f"#{index}"
