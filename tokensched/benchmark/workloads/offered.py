"""The prompt tokens a session schedule offers inside a window, at any rate scale, without building the schedule.

:class:`~tokensched.benchmark.workloads.arrivals.CodingAgentSource` rescales
its Poisson rate so that the measured window offers exactly the target TPM: a
bisection over ~50 scales. Building each candidate schedule (a pydantic copy
of every session, its turn offsets recomputed) took ~0.15 s a run. The
sessions themselves do not change with the scale, only their start times, so
their turns are laid out once as flat arrays and each scale is priced in a few
vectorised passes.

Every comparison is made on the same floating-point values the schedule
computes (``gap / rate``, ``start - offsets[join]``, ``origin + offset``, each
one IEEE operation, the same in numpy as in Python), so the counts and the
scale the bisection settles on are bit-identical to pricing the built
schedule (property-tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np
import numpy.typing as npt

from tokensched.benchmark.workloads.trace import TurnShape, prompt_lengths, turn_offsets

_Floats = npt.NDArray[np.float64]
_Ints = npt.NDArray[np.int64]


@attrs.frozen(slots=True)
class TurnTable:
    """The turns of a stream of sessions as flat arrays, in draw order (each session's turns in order).

    ``gaps[s]`` is session ``s``'s cumulative unit-rate gap (its start is
    ``gaps[s] / rate``); ``first[s]`` the index of its first turn; per turn,
    ``session`` its session, ``offsets`` when it is sent from the session's
    first turn at the reference speed and ``lengths`` its prompt length.
    """

    gaps: _Floats
    first: _Ints
    session: _Ints
    offsets: _Floats
    lengths: _Ints

    @classmethod
    def of(cls, drawn: Sequence[tuple[float, Sequence[TurnShape]]]) -> TurnTable:
        """The table of sessions given as (cumulative unit-rate gap, turns)."""
        counts = [len(turns) for _, turns in drawn]
        offsets = [offset for _, turns in drawn for offset in turn_offsets(turns)]
        lengths = [length for _, turns in drawn for length in prompt_lengths(turns)]
        return cls(
            gaps=np.array([gap for gap, _ in drawn], dtype=np.float64),
            first=np.cumsum([0, *counts[:-1]], dtype=np.int64) if counts else np.zeros(0, np.int64),
            session=np.repeat(np.arange(len(counts), dtype=np.int64), counts),
            offsets=np.array(offsets, dtype=np.float64),
            lengths=np.array(lengths, dtype=np.int64),
        )

    def new_sessions(self, count: int, rate: float, window: tuple[float, float]) -> int:
        """Prompt tokens inside ``window`` from the first ``count`` sessions, each starting at ``gap / rate``."""
        turns = self._turns(count)
        starts = self.gaps[:count] / rate
        sent = starts[self.session[:turns]] + self.offsets[:turns]  # origin: start - offsets[0], i.e. start - 0.0
        return self._inside(sent, np.ones(turns, dtype=bool), window)

    def in_progress(self, count: int, rate: float, duration: float, window: tuple[float, float]) -> int:
        """The same for sessions already in progress at t=0 (started ``gap / rate`` before it).

        Each joins at its first turn sent at or after 0 and is left out when
        it has none, or when that turn is sent at or after ``duration``.
        """
        turns = self._turns(count)
        started = -self.gaps[:count] / rate
        session, offsets = self.session[:turns], self.offsets[:turns]
        after_zero = started[session] + offsets >= 0  # offsets grow: False then True within a session
        skipped = np.bincount(session[~after_zero], minlength=count)  # the join turn, relative to the first
        last = np.append(self.first[1:count], turns) - 1 if count else np.zeros(0, np.int64)
        join = np.minimum(self.first[:count] + skipped, last)
        joined = skipped < last - self.first[:count] + 1
        join_offset = self.offsets[join]
        start_time = started + join_offset
        kept = joined & (start_time < duration)
        origin = start_time - join_offset
        sent = origin[session] + offsets
        return self._inside(sent, after_zero & kept[session], window)

    def _turns(self, count: int) -> int:
        return int(self.first[count]) if count < len(self.first) else len(self.offsets)

    def _inside(self, sent: _Floats, counted: npt.NDArray[np.bool_], window: tuple[float, float]) -> int:
        start, end = window
        inside = counted & (sent >= start) & (sent < end)
        return int(self.lengths[: len(sent)][inside].sum())
