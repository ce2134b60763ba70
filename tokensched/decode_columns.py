"""The columnar decode fast path: a steady running set of decodes, stepped as arrays.

Why: in steady decoding every running request does the same thing each step
(one position planned, one token sampled, a few counters moved). Done per
request in Python that costs microseconds a request; done over columns it
costs a few numpy calls a step. :class:`DecodeColumns` holds the running
decodes as arrays (position, slot of that position, last token, length limit,
eos id, output count less the position, cached tokens) and a small matrix of tokens sampled
since the last flush.

The typed machines stay the single source of truth for everything structural:
block tables (a row whose next position starts a block gets its block from
:class:`~tokensched.machines.blocks.BlockPool` and appends it to its
``Decoding`` state at once), state types, the running set, the pool. What the
columns carry for a while are only the per-step counters of rows that did the
common thing (``num_computed``, ``num_scheduled``, the in-flight counts,
``last_token`` and the newest tokens of the history). Every row that does
anything else in a step (fills a block, samples a stop or reaches its length)
is first written back (:meth:`DecodeColumns.flush_row`) and then goes through
the scheduler's ordinary per-request code; every caller that may look at a
request (``Scheduler.live``, ``running``, ``get``, views, ``abort``, ``fail``,
the slow planning path) first writes every row back
(:meth:`DecodeColumns.flush_all`). The property test
``tests/property/test_fast_path.py`` runs random traffic through this path and
through the per-request path alone and asserts identical plans, outputs,
request states and pool states.

A step may take the fast path when nothing else is in flight, every running
request is decoding without drafts, no request waits, the budget covers one
token a request and enough blocks are free that the reference path would not
sort the running set by victim key; otherwise the scheduler writes the
columns back, drops them and plans per request.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from tokensched.machines.request import Decoding, Request

I64 = npt.NDArray[np.int64]
PENDING_COLUMNS = 32  # tokens kept per row before every row is flushed into its TokenBuffer


def exact_decode(
    request: Request, block_size: int, caching: bool, ahead: int = 0, *, hashed_ahead: bool = False
) -> bool:
    """Whether ``request`` is a decode whose counters agree: ``ahead`` tokens scheduled past those computed,
    its tokens one past them, blocks for exactly the scheduled ones and (with caching) every full block committed.

    What both fast paths (the columns and a decode run) need before they stand in for the typed machines.
    ``hashed_ahead`` also accepts a block whose tokens are all known but not all computed, so hashed and
    not yet committed (a run applies the step that commits it through the per-request code).
    """
    s = request.state
    if type(s) is not Decoding:
        return False
    pos = s.num_computed
    if (
        s.num_scheduled != pos + ahead
        or request.tokens.size != pos + 1
        or len(s.blocks) != -(-(pos + ahead) // block_size)
    ):
        return False
    if not caching:
        return True
    committed = pos // block_size
    hashed = len(request.block_hashes)
    return s.num_committed == committed and (
        hashed == committed or (hashed_ahead and hashed == (pos + 1) // block_size)
    )


class DecodeColumns:
    """The running decodes as parallel arrays (row order = the running set's order)."""

    __slots__ = (
        "_groups",
        "_slack",
        "block_size",
        "cached",
        "common_eos",
        "eos",
        "epochs",
        "flushed",
        "ids",
        "in_flight",
        "last",
        "last_step",
        "limit",
        "npend",
        "out_base",
        "pending",
        "pos",
        "requests",
        "slot",
        "states",
        "stop_rows",
        "ticks",
    )

    def __init__(self, requests: list[Request], block_size: int, max_model_len: int) -> None:
        """Columns for ``requests``, which :meth:`eligible` accepted (all exact: nothing pending)."""
        n = len(requests)
        self.block_size = block_size
        self.requests = requests
        states: list[Decoding] = []
        for r in requests:
            state = r.state
            assert type(state) is Decoding
            states.append(state)
        self.states = states
        self.ids = [r.request_id for r in requests]
        self.epochs = [r.epoch for r in requests]
        pos = np.fromiter((s.num_computed for s in states), np.int64, n)
        self.pos: I64 = pos
        bs = block_size
        # slot of the position before ``pos`` (the last one written): the next one is +1 within a block
        positions = pos.tolist()
        tables = [st.blocks for st in states]
        self.slot: I64 = np.fromiter(
            (b[(p - 1) // bs] * bs + (p - 1) % bs if p else -1 for b, p in zip(tables, positions, strict=True)),
            np.int64,
            n,
        )
        self.last: I64 = np.fromiter((r.last_token for r in requests), np.int64, n)
        self.limit: I64 = np.fromiter(
            (min(r.num_prompt_tokens + r.max_tokens, max_model_len) for r in requests), np.int64, n
        )
        self.eos: I64 = np.fromiter((-1 if r.eos_token_id is None else r.eos_token_id for r in requests), np.int64, n)
        # a row's output count after this step is pos + out_base (two past the position, less the prompt)
        self.out_base: I64 = 2 - np.fromiter((r.num_prompt_tokens for r in requests), np.int64, n)
        eos_ids = set(self.eos.tolist())
        self.common_eos = eos_ids.pop() if len(eos_ids) == 1 else None  # one id for all: test the list for it
        self.cached: I64 = np.fromiter((r.num_cached_tokens for r in requests), np.int64, n)
        self.stop_rows: list[int] = [i for i, r in enumerate(requests) if r.stop_token_ids]
        self.pending = np.empty((n, PENDING_COLUMNS), dtype=np.int32)
        self.npend = 0
        self.flushed = np.zeros(n, dtype=np.int64)  # pending[i, flushed[i]:npend] is not yet in row i's buffer
        self.in_flight = -1  # the fast step in flight (its plan moved num_scheduled and the in-flight counts)
        self.last_step = -1  # the latest step the rows were planned in
        self.ticks = 0  # steps advanced together: a row's position minus ``ticks`` keeps its phase in a block
        self._groups: list[list[int]] | None = None  # rows by (pos - ticks) % block_size; None: rebuild
        self._slack: int | None = None  # min(limit - pos); None: recompute

    @staticmethod
    def eligible(requests: list[Request], block_size: int, caching: bool) -> bool:
        """Whether every request is a plain decode with exact counters (nothing in flight, no drafts)."""
        return all(
            not r.inflight_steps and not r.draft_tokens and exact_decode(r, block_size, caching) for r in requests
        )

    def __len__(self) -> int:
        return len(self.requests)

    def rows_at(self, phase: int) -> list[int]:
        """The rows (ascending) whose position is ``phase`` modulo the block size.

        Why grouped: every row advances one position a step, so a row's
        position minus :attr:`ticks` keeps its phase, and the rows that start
        or fill a block are one list lookup, not an array pass a step. The
        groups are rebuilt only after a row moved otherwise (rare rows).
        """
        groups = self._groups
        bs = self.block_size
        if groups is None:
            groups = [[] for _ in range(bs)]
            for i, key in enumerate(((self.pos - self.ticks) % bs).tolist()):
                groups[key].append(i)
            self._groups = groups
        return groups[(phase - self.ticks) % bs]

    def finishing_rows(self, flat: list[int], sampled: I64) -> list[int]:
        """Rows (ascending) that this step's tokens finish (eos, a stop id) or bring to their length limit.

        The common step has none; it is told so by one list search for the
        shared eos id and one comparison of the smallest headroom, not by
        array passes.
        """
        eos = self.common_eos
        hit: npt.NDArray[np.bool_] | None = None
        if eos is None:
            hit = sampled == self.eos
        elif eos in flat:
            hit = sampled == eos
        slack = self._slack
        if slack is None:
            slack = self._slack = int((self.limit - self.pos).min())
        if slack <= 2:
            by_length = self.pos + 2 >= self.limit
            hit = by_length if hit is None else hit | by_length
        rows: list[int] = [] if hit is None else np.flatnonzero(hit).tolist()
        requests = self.requests
        stopped = [i for i in self.stop_rows if flat[i] in requests[i].stop_token_ids]
        if stopped:
            rows = sorted({*rows, *stopped})
        return rows

    def advance(self, sampled: I64) -> None:
        """Every row computed one more position and sampled ``sampled``."""
        self.pos = self.pos + 1
        self.last = sampled
        self.ticks += 1
        if self._slack is not None:
            self._slack -= 1
        self.push_tokens(sampled)

    def flush_row(self, i: int) -> None:
        """Write row ``i``'s counters and tokens back into its request and state."""
        request = self.requests[i]
        state = self.states[i]
        npend = self.npend
        start = int(self.flushed[i])
        if start < npend:
            request.tokens.extend(self.pending[i, start:npend].tolist())
            self.flushed[i] = npend
        pos = int(self.pos[i])
        request.last_token = int(self.last[i])
        state.num_computed = pos
        if self.in_flight >= 0:
            state.num_scheduled = pos + 1
            request.inflight_steps = 1
            request.inflight_samples = 1
        else:
            state.num_scheduled = pos
            request.inflight_steps = 0
            request.inflight_samples = 0
        if self.last_step >= 0:
            request.planned_in = self.last_step

    def flush_tokens(self, i: int, token: int) -> None:
        """Write row ``i``'s pending tokens and ``token`` (sampled now) into its buffer; counters stay here."""
        start = int(self.flushed[i])
        tokens = self.requests[i].tokens
        if start < self.npend:
            tokens.extend(self.pending[i, start : self.npend].tolist())
        tokens.append(token)
        self.flushed[i] = self.npend

    def reload_row(self, i: int) -> None:
        """Row ``i`` went through the per-request code and stays: take its counters from its state again."""
        request = self.requests[i]
        self.pos[i] = self.states[i].num_computed
        self.last[i] = request.last_token
        self._groups = None
        self._slack = None

    def flush_all(self) -> None:
        """Write every row back (the columns may be dropped afterwards)."""
        for i in range(len(self.requests)):
            self.flush_row(i)
        self.npend = 0
        self.flushed[:] = 0

    def push_tokens(self, tokens: npt.NDArray[np.int64]) -> None:
        """Record one sampled token per row (rows written back this step are skipped by ``flushed``)."""
        if self.npend == PENDING_COLUMNS:
            for i in range(len(self.requests)):
                start = int(self.flushed[i])
                if start < PENDING_COLUMNS:
                    self.requests[i].tokens.extend(self.pending[i, start:].tolist())
            self.npend = 0
            self.flushed[:] = 0
        self.pending[:, self.npend] = tokens
        self.npend += 1

    def keep(self, mask: npt.NDArray[np.bool_]) -> None:
        """Keep only the rows in ``mask`` (the others left the running set and were written back)."""
        index = np.flatnonzero(mask).tolist()
        self.requests = [self.requests[i] for i in index]
        self.states = [self.states[i] for i in index]
        self.ids = [self.ids[i] for i in index]
        self.epochs = [self.epochs[i] for i in index]
        self.pos = self.pos[mask]
        self.slot = self.slot[mask]
        self.last = self.last[mask]
        self.limit = self.limit[mask]
        self.eos = self.eos[mask]
        self.out_base = self.out_base[mask]
        self.cached = self.cached[mask]
        self.pending = self.pending[mask]
        self.flushed = self.flushed[mask]
        self.stop_rows = [i for i, r in enumerate(self.requests) if r.stop_token_ids]
        self._groups = None
        self._slack = None
