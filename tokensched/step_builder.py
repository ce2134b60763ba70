"""Accumulates one step's columns while the scheduler walks its requests.

Kept separate from the algorithm so that :mod:`tokensched.scheduler` reads like
the policy it implements, while this module keeps the per-request cost of
filling a :class:`~tokensched.plan.StepPlan` to a few list appends. A long
prefill chunk adds its tokens as an array and its slots as a
:class:`~tokensched.int_column.ChunkSlots` (made when first read) instead:
the plan's per-token columns are then :class:`~tokensched.int_column.IntColumn` s
that build a list only if an executor indexes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from tokensched.int_column import ChunkSlots, IntColumn, Part
from tokensched.machines.request import Request
from tokensched.machines.step import Step
from tokensched.plan import NO_DRAFTS, PLACEHOLDER_TOKEN, NewRequestData, StepPlan

# From this many positions a chunk's tokens and slots stay arrays, its slots made in one array pass over its
# blocks (for 8,192 positions ~2.8x faster than one range per block, before any list; for 100 the ranges win).
BULK_SLOTS = 256


class StepBuilder:
    __slots__ = (
        "_parts_len",
        "_slot_parts",
        "_token_parts",
        "block_size",
        "drafts",
        "epochs",
        "new_blocks",
        "new_requests",
        "num_computed",
        "num_drafts",
        "num_tokens",
        "offsets",
        "request_ids",
        "requests",
        "sample",
        "slots",
        "step_id",
        "token_ids",
    )

    def __init__(self, step_id: int, block_size: int) -> None:
        self.step_id = step_id
        self.block_size = block_size
        self.new_requests: list[NewRequestData] = []
        self.request_ids: list[str] = []
        self.num_computed: list[int] = []
        self.offsets = [0]
        # The per-token columns: finished parts (lists and chunk arrays, in order), then the list being filled.
        self._token_parts: list[Part] = []
        self._slot_parts: list[Part] = []
        self._parts_len = 0  # positions in the finished parts
        self.token_ids: list[int] = []
        self.slots: list[int] = []
        self.new_blocks: list[tuple[int, ...]] = []
        self.sample: list[bool] = []
        self.drafts: list[tuple[int, ...]] = []
        self.requests: list[Request] = []
        self.epochs: list[int] = []
        self.num_tokens: list[int] = []
        self.num_drafts: list[int] = []

    def __len__(self) -> int:
        return len(self.request_ids)

    def add(
        self,
        request: Request,
        blocks: Sequence[int],
        pos: int,
        n: int,
        new_blocks: tuple[int, ...],
        is_sample: bool,
        drafts: tuple[int, ...] = NO_DRAFTS,
    ) -> None:
        """Schedule positions ``pos .. pos+n-1`` of ``request`` (the last ``len(drafts)`` are drafts).

        Also counts the step against the request: it is planned in this step,
        has one more step in flight and, if it samples, up to ``1 + len(drafts)``
        more tokens coming.
        """
        bs = self.block_size
        tokens = request.tokens
        token_ids = self.token_ids
        if n == 1:
            size = tokens.size
            token_ids.append(
                request.last_token if pos == size - 1 else tokens.at(pos) if pos < size else PLACEHOLDER_TOKEN
            )
            self.slots.append(blocks[pos // bs] * bs + pos % bs)
        else:
            real = n - len(drafts)
            if n >= BULK_SLOTS and pos + n <= tokens.size and not drafts:
                # A prefill chunk: its tokens stay an array and its slots are made when first read (parts of
                # the plan's lazy columns).
                first = pos // bs
                chunk_blocks = blocks[first : (pos + n - 1) // bs + 1]  # a copy: the table may change later
                if len(chunk_blocks) * bs < pos % bs + n:
                    raise IndexError(f"{request.request_id}: positions {pos}..{pos + n - 1} past its block table")
                chunk_slots = ChunkSlots(chunk_blocks, pos % bs, n, bs)
                self._push(tokens.array[pos : pos + n].copy(), chunk_slots)  # copied: a history may be truncated
            else:
                size = tokens.size
                if real == 1:  # a decode and its drafts: the one real position is usually the newest token
                    token_ids.append(
                        request.last_token if pos == size - 1 else tokens.at(pos) if pos < size else PLACEHOLDER_TOKEN
                    )
                elif pos < size:
                    token_ids.extend(tokens.array[pos : pos + real].tolist())
                else:
                    token_ids.append(PLACEHOLDER_TOKEN)
                if drafts:
                    token_ids.extend(drafts)
                self.extend_slots(blocks, pos, pos + n)
        self.request_ids.append(request.request_id)
        self.num_computed.append(pos)
        self.offsets.append(self._parts_len + len(self.token_ids))
        self.new_blocks.append(new_blocks)
        self.sample.append(is_sample)
        self.drafts.append(drafts)
        self.requests.append(request)
        self.epochs.append(request.epoch)
        self.num_tokens.append(n)
        self.num_drafts.append(len(drafts))
        request.planned_in = self.step_id
        request.inflight_steps += 1
        if is_sample:
            request.inflight_samples += 1 + len(drafts)

    def extend_slots(self, blocks: Sequence[int], pos: int, end: int) -> None:
        """Append the slots of positions ``pos .. end-1`` (a row's tokens that are lists, not a chunk's array)."""
        bs = self.block_size
        first = pos // bs
        if (end - 1) // bs == first:  # all in one block
            base_slot = blocks[first] * bs - first * bs
            self.slots.extend(range(base_slot + pos, base_slot + end))
            return
        while pos < end:  # one range per block touched
            block_end = min(end, (pos // bs + 1) * bs)
            base_slot = blocks[pos // bs] * bs - (pos // bs) * bs
            self.slots.extend(range(base_slot + pos, base_slot + block_end))
            pos = block_end

    def _push(self, tokens: npt.NDArray[np.int32], slots: ChunkSlots) -> None:
        """Close the lists being filled and add a chunk's arrays as the columns' next parts."""
        if self.token_ids:
            self._token_parts.append(self.token_ids)
            self._slot_parts.append(self.slots)
            self._parts_len += len(self.token_ids)
            self.token_ids = []
            self.slots = []
        self._token_parts.append(tokens)
        self._slot_parts.append(slots)
        self._parts_len += len(tokens)

    def _column(self, parts: list[Part], tail: list[int]) -> Sequence[int]:
        """A plan column: the list itself when no chunk made a part, else an IntColumn of the parts."""
        if not parts:
            return tail
        return IntColumn([*parts, tail] if tail else parts)

    def step(self) -> Step:
        return Step(self.step_id, self.requests, self.epochs, self.num_tokens, self.num_drafts, self.sample)

    def plan(self, removed: tuple[str, ...], truncated: dict[str, int]) -> StepPlan:
        return StepPlan(
            step_id=self.step_id,
            block_size=self.block_size,
            new_requests=tuple(self.new_requests),
            removed_request_ids=removed,
            request_ids=self.request_ids,
            num_computed_tokens=self.num_computed,
            token_offsets=self.offsets,
            token_ids=self._column(self._token_parts, self.token_ids),
            slot_mapping=self._column(self._slot_parts, self.slots),
            new_block_ids=self.new_blocks,
            sample=self.sample,
            draft_token_ids=self.drafts,
            truncated_block_tables=truncated,
        )
