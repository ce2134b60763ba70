"""The one contract between the scheduler and executors: StepPlan in, StepResult out.

A plan is plain data. It is compact on purpose: a request entering the running
set is sent in full once (:class:`NewRequestData`); from then on each step
sends only what changed for it (its new tokens, their KV slots, blocks appended
to its table). Executors rebuild whatever per-request view they need with
:class:`~tokensched.executor.RequestMirror`.

Layout of the per-step columns: index ``i`` names the i-th scheduled request;
its tokens are ``token_ids[token_offsets[i]:token_offsets[i + 1]]`` at positions
``num_computed_tokens[i] + j`` and their KV goes to the same slice of
``slot_mapping`` (``slot = block_id * block_size + offset``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from enum import StrEnum
from typing import Any, overload

import attrs
import numpy as np
import numpy.typing as npt

from tokensched.config import SamplingParams
from tokensched.int_column import IntColumn, as_list

PLACEHOLDER_TOKEN = -1
"""Stands for "the last token this request sampled in its previous step".

With overlap, step k+1 is planned before step k's tokens are known; the
executor, which produced them, substitutes them when it runs step k+1.
"""


class FinishReason(StrEnum):
    STOP = "stop"  # eos or a stop token
    LENGTH = "length"  # max_tokens or max_model_len
    ABORT = "abort"  # the caller aborted it
    ERROR = "error"  # the executor failed its step and it was not retried


@attrs.frozen(slots=True)
class NewRequestData:
    """Everything an executor must know about a request entering the running set.

    Sent when a request is first scheduled and again when it resumes after a
    preemption (then ``token_ids`` holds the prompt and every output so far, and
    ``num_output_tokens`` says how many of them are outputs).
    """

    request_id: str
    token_ids: Sequence[int]
    block_ids: tuple[int, ...]
    num_cached_tokens: int  # prefix served from the prefix cache; KV already present
    num_output_tokens: int
    sampling: SamplingParams


@attrs.frozen(slots=True)
class ScheduledRequest:
    """A per-request view of a plan, for executors that prefer objects to columns."""

    request_id: str
    token_ids: list[int]
    start_position: int
    slot_mapping: list[int]
    new_block_ids: tuple[int, ...]
    sample: bool
    draft_token_ids: tuple[int, ...]

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def positions(self) -> range:
        return range(self.start_position, self.start_position + len(self.token_ids))


class TransferKind(StrEnum):
    STORE = "store"  # device block -> host slot (a write-back)
    LOAD = "load"  # host slot -> device block


@attrs.frozen(slots=True)
class KVTransfer:
    """One block copied between device KV and the host tier (:mod:`tokensched.machines.host_tier`)."""

    kind: TransferKind
    host_slot: int
    device_block: int


NO_BLOCKS: tuple[int, ...] = ()
NO_DRAFTS: tuple[int, ...] = ()


@attrs.frozen(slots=True)
class PlanArrays:
    """A plan's columns as numpy arrays, for ``torch.from_numpy`` (no copy) or vectorised executors.

    ``token_ids`` is int32, the rest int64. ``positions`` is per token
    (``num_computed_tokens[i] + j`` for the j-th token of request i), the one
    column the lists leave implicit. The arrays belong to the plan: an
    executor that writes into them (say to substitute placeholders) copies first.
    """

    num_computed_tokens: npt.NDArray[np.int64]
    token_offsets: npt.NDArray[np.int64]
    token_ids: npt.NDArray[np.int32]
    positions: npt.NDArray[np.int64]
    slot_mapping: npt.NDArray[np.int64]


def _column_array(values: Sequence[int], dtype: type[np.signedinteger[Any]]) -> npt.NDArray[Any]:
    """A per-token column as an array: an :class:`IntColumn` joins its parts, a list converts once."""
    if isinstance(values, IntColumn):
        return values.array(dtype)
    return np.asarray(values, dtype=dtype)


@attrs.frozen(slots=True)
class StepPlan:
    """One step: which tokens of which requests to compute, and where their KV goes.

    Columns are parallel lists over the scheduled requests (batch order); the
    two per-token ones (``token_ids``, ``slot_mapping``) are read-only sequences
    that may be :class:`~tokensched.int_column.IntColumn` s, which build their
    list only when indexed (:meth:`arrays` never does). New
    requests in ``new_requests`` are also scheduled (they appear in the columns).
    ``removed_request_ids`` are requests the executor may forget (finished,
    aborted or preempted since the previous plan); their state must be dropped
    before this plan's new requests are added, since a preempted request can
    come back in the same plan.
    ``truncated_block_tables`` maps a request to the length its block table
    shrank to (speculative rollback) before ``new_block_ids`` are appended.
    ``kv_transfers`` are the host tier's copies for this step, to perform in
    order before the step's compute reads KV: a load fills a block this step
    reads as cached prefix; a stored block stays held until this step
    completes, so its copy may also overlap the compute.
    """

    step_id: int
    block_size: int
    new_requests: tuple[NewRequestData, ...]
    removed_request_ids: tuple[str, ...]
    request_ids: list[str]
    num_computed_tokens: list[int]
    token_offsets: list[int]  # len(request_ids) + 1 entries, starting at 0
    # Per token: a list, or an IntColumn (a read-only sequence the planner joins lazily from its parts, so
    # that a long prefill chunk costs no list unless the executor indexes it; arrays() never builds one).
    token_ids: Sequence[int]
    slot_mapping: Sequence[int]
    new_block_ids: list[tuple[int, ...]]
    sample: list[bool]
    draft_token_ids: list[tuple[int, ...]]
    truncated_block_tables: dict[str, int] = attrs.field(factory=dict)
    kv_transfers: tuple[KVTransfer, ...] = ()  # host tier copies, performed in order before compute reads KV
    # The arrays, once built (a list so that a frozen plan can fill it once); not an init argument, so
    # attrs.evolve() of a plan with other columns never carries arrays that no longer match them.
    _arrays: list[PlanArrays] = attrs.field(init=False, factory=list, eq=False, repr=False)

    def attach_arrays(self, arrays: PlanArrays) -> StepPlan:
        """Keep ``arrays`` (the same columns, already built by the planner) for :meth:`arrays`; returns the plan."""
        self._arrays[:] = [arrays]
        return self

    def arrays(self) -> PlanArrays:
        """The columns as numpy arrays: the columnar decode path hands over those it built, others convert once."""
        if not self._arrays:
            offsets = np.asarray(self.token_offsets, dtype=np.int64)
            computed = np.asarray(self.num_computed_tokens, dtype=np.int64)
            counts = np.diff(offsets)
            starts = np.repeat(computed - offsets[:-1], counts)
            positions = starts + np.arange(offsets[-1] if len(offsets) else 0, dtype=np.int64)
            tokens = _column_array(self.token_ids, np.int32)
            slots = _column_array(self.slot_mapping, np.int64)
            self._arrays.append(PlanArrays(computed, offsets, tokens, positions, slots))
        return self._arrays[0]

    @property
    def num_requests(self) -> int:
        return len(self.request_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    def num_scheduled_tokens(self, index: int) -> int:
        return self.token_offsets[index + 1] - self.token_offsets[index]

    def requests(self) -> Iterator[ScheduledRequest]:
        """Per-request views (allocates; fine for executors, not for the scheduler's hot path)."""
        offsets = self.token_offsets
        for i, request_id in enumerate(self.request_ids):
            lo, hi = offsets[i], offsets[i + 1]
            yield ScheduledRequest(
                request_id=request_id,
                token_ids=as_list(self.token_ids[lo:hi]),
                start_position=self.num_computed_tokens[i],
                slot_mapping=as_list(self.slot_mapping[lo:hi]),
                new_block_ids=self.new_block_ids[i],
                sample=self.sample[i],
                draft_token_ids=self.draft_token_ids[i],
            )


@attrs.frozen(slots=True)
class StepResult:
    """What an executor reports for one plan, in the plan's request order.

    ``sampled_token_ids[i]`` is empty for a request that did not sample (a
    non-final prefill chunk), one token for a plain decode, and for speculative
    verification the accepted drafts followed by the bonus token (1 to k+1).
    ``draft_token_ids[i]`` proposes drafts for the request's next step (empty
    when the executor has none). ``logprobs[i]`` pairs with ``sampled_token_ids[i]``
    when the request asked for them.
    """

    step_id: int
    sampled_token_ids: list[list[int]]
    draft_token_ids: list[list[int]] | None = None
    logprobs: list[list[float]] | None = None
    elapsed: float | None = None  # seconds the step took on the executor's clock, if known


class RequestEvent(StrEnum):
    """Something that happened to a live request besides new tokens (``RequestOutput.event``)."""

    PREEMPTED = "preempted"  # lost its KV to a better-ranked request; it will recompute, its tokens stand
    ROLLED_BACK = "rolled_back"  # its step failed and is retried by recompute (StepFailurePolicy.RETRY)


@attrs.frozen(slots=True)
class RequestOutput:
    """New tokens for one request after a step, and whether it finished.

    An output with ``event`` set carries no tokens: it tells the caller that
    the request was preempted (delivered with the next ``complete()`` or
    ``fail()``, since ``plan()`` returns only the plan) or rolled back by
    ``fail()``. The request stays live and its tokens so far stand.
    """

    request_id: str
    new_token_ids: list[int]
    finish_reason: FinishReason | None = None
    logprobs: list[float] | None = None
    num_output_tokens: int = 0
    num_cached_tokens: int = 0
    event: RequestEvent | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


def _as_list(column: npt.NDArray[np.int64] | list[int]) -> list[int]:
    """A count column as a list: the per-row path's own list, or the columnar path's array converted."""
    if isinstance(column, list):
        return column
    counts: list[int] = column.tolist()
    return counts


_NO_COUNTS = np.zeros(0, np.int64)  # the column counts of a batch built one by one: shared, never written
_NO_COUNTS.flags.writeable = False


class OutputBatch(Sequence[RequestOutput]):
    """One step's outputs: preemption events, then one output per sampling request in plan order.

    The columnar decode path and the per-row path of a single step
    (:mod:`tokensched.decode_rows`) fill it from columns (request ids, the
    result's rows, output counts, cached counts; a row whose output is not
    plain, in ``special``) and build each :class:`RequestOutput` only when it
    is read, so a step's cost does not include objects nobody looks at; a
    consumer that can take the columns reads :meth:`plain_columns`. Compares
    equal to a list of the same outputs.
    """

    __slots__ = ("_built", "_cached", "_events", "_ids", "_num_output", "_rows", "_special")

    def __init__(
        self,
        events: list[RequestOutput],
        ids: list[str],
        rows: list[list[int]],
        num_output: npt.NDArray[np.int64] | list[int],
        num_cached: npt.NDArray[np.int64] | list[int],
        special: dict[int, RequestOutput],
    ) -> None:
        self._events = events
        self._ids = ids
        self._rows = rows
        self._num_output = num_output
        self._cached = num_cached
        self._special = special
        self._built: list[RequestOutput] | None = None

    @classmethod
    def of(cls, outputs: list[RequestOutput]) -> OutputBatch:
        """A batch of outputs built one by one (the per-request path)."""
        batch = cls(outputs, [], [], _NO_COUNTS, _NO_COUNTS, {})
        batch._built = outputs
        return batch

    def _list(self) -> list[RequestOutput]:
        built = self._built
        if built is None:
            special = self._special
            built = list(self._events)
            for i, (rid, row, count, cached) in enumerate(
                zip(self._ids, self._rows, _as_list(self._num_output), _as_list(self._cached), strict=True)
            ):
                out = special.get(i)
                built.append(out if out is not None else RequestOutput(rid, row, None, None, count, cached))
            self._built = built
        return built

    def __len__(self) -> int:
        return len(self._built) if self._built is not None else len(self._events) + len(self._ids)

    def plain_columns(self) -> tuple[list[str], list[list[int]], list[int]] | None:
        """``(request ids, new tokens, cached counts)``, row by row, when every output is a plain one; else None.

        Plain: no event, and row ``i``'s output is
        ``RequestOutput(ids[i], tokens[i], None, None, ..., cached[i])`` (no
        finish, no logprobs). What the bench's metrics and answers read of a
        step, without building the outputs; the lists are the batch's own (read
        them, do not change them).
        """
        if self._events or self._special:
            return None
        return self._ids, self._rows, _as_list(self._cached)

    @overload
    def __getitem__(self, index: int) -> RequestOutput: ...
    @overload
    def __getitem__(self, index: slice) -> list[RequestOutput]: ...
    def __getitem__(self, index: int | slice) -> RequestOutput | list[RequestOutput]:
        return self._list()[index]

    def __iter__(self) -> Iterator[RequestOutput]:
        return iter(self._list())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, OutputBatch | list | tuple):
            return self._list() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"OutputBatch({self._list()!r})"
