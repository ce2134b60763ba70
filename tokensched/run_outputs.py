"""The outputs of a decode run's plain step as columns, with the per-request view built only when read.

Why: a simulated hour applies ~100k decode-run steps of one to three rows,
and nearly all of them only append tokens. Building a
:class:`~tokensched.plan.RequestOutput` per row per step (and reading its
attributes back in the bench's metrics) cost more than applying the tokens.
:meth:`Scheduler.complete_run <tokensched.scheduler.Scheduler.complete_run>`
hands such a step back as a :class:`PlainStepOutputs`: a sequence of
``RequestOutput`` to whoever iterates or indexes it (built once, on first
read, equal to the list the per-request code builds), and its columns
(:meth:`PlainStepOutputs.columns`) to a consumer that can take them, as the
bench's :meth:`MetricsCollector.on_steps
<tokensched.benchmark.metrics.MetricsCollector.on_steps>` and
:func:`~tokensched.benchmark.run.record_steps` do.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

from tokensched.plan import RequestOutput


class PlainStepOutputs(Sequence[RequestOutput]):
    """One step of a run in which every row only appended tokens: no finish, event or logprobs.

    Row ``r`` of the step is the run's row ``rows[r]``: request
    ``request_ids[rows[r]]`` got ``tokens[r]`` and then had
    ``num_output[r]`` output tokens and ``num_cached[rows[r]]`` cached ones.
    The lists are shared with the run (read them, do not change them).
    """

    __slots__ = ("_built", "num_cached", "num_output", "request_ids", "rows", "tokens")

    def __init__(
        self,
        request_ids: list[str],
        rows: list[int],
        tokens: list[list[int]],
        num_output: list[int],
        num_cached: list[int],
    ) -> None:
        self.request_ids = request_ids
        self.rows = rows
        self.tokens = tokens
        self.num_output = num_output
        self.num_cached = num_cached
        self._built: list[RequestOutput] | None = None

    def columns(self) -> tuple[list[str], list[int], list[list[int]], list[int], list[int]]:
        """``(request_ids, rows, tokens, num_output, num_cached)``, as described on the class."""
        return self.request_ids, self.rows, self.tokens, self.num_output, self.num_cached

    def _list(self) -> list[RequestOutput]:
        built = self._built
        if built is None:
            ids, cached = self.request_ids, self.num_cached
            built = self._built = [
                RequestOutput(ids[i], tokens, None, None, count, cached[i])
                for i, tokens, count in zip(self.rows, self.tokens, self.num_output, strict=True)
            ]
        return built

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, index: int) -> RequestOutput: ...
    @overload
    def __getitem__(self, index: slice) -> list[RequestOutput]: ...
    def __getitem__(self, index: int | slice) -> RequestOutput | list[RequestOutput]:
        return self._list()[index]

    def __iter__(self) -> Iterator[RequestOutput]:
        return iter(self._list())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str):
            return self._list() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PlainStepOutputs({self._list()!r})"
