"""An immutable column of ints joined lazily from parts: what a step plan's per-token columns are.

Why lazily: a prefill chunk schedules thousands of positions, and the plan's
per-token columns (token ids, slot mapping) as Python lists cost a list
element a position to build and again to free, on every step, whether or not
the executor reads them. An executor on arrays (``StepPlan.arrays()``, the
simulator, torch) never needs the lists; one that indexes the column gets
them built once, on first use. The parts are the scheduler's own: small lists
for one-position rows (decodes) and arrays for chunks, joined in order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload

import numpy as np
import numpy.typing as npt


class ChunkSlots:
    """The KV slots of a prefill chunk's ``n`` positions, from lane ``lane`` of the first of ``blocks``, made
    when first read: ``blocks[j] * block_size + lane`` onwards, position after position.

    Why lazily: the simulator never reads a plan's slot mapping, and making a 32-block chunk's 512 slots
    (a list of block ids to an array, a broadcast add, a ravel) was a tenth of a DP-attention rank's step.
    An :class:`IntColumn` part; ``blocks`` must be the caller's own copy (a block table changes later).
    """

    __slots__ = ("_array", "_block_size", "_blocks", "_lane", "_n")

    def __init__(self, blocks: Sequence[int], lane: int, n: int, block_size: int) -> None:
        if lane + n > len(blocks) * block_size:
            raise IndexError(f"{n} positions from lane {lane} run past {len(blocks)} blocks of {block_size}")
        self._blocks = blocks
        self._lane = lane
        self._n = n
        self._block_size = block_size
        self._array: npt.NDArray[np.int64] | None = None

    def slots(self) -> npt.NDArray[np.int64]:
        """The slots as an int64 array, made once in one array pass over the blocks."""
        made = self._array
        if made is None:
            bs, lane = self._block_size, self._lane
            base = np.array(self._blocks, dtype=np.int64) * bs
            made = self._array = (base[:, None] + np.arange(bs, dtype=np.int64)).ravel()[lane : lane + self._n]
        return made

    def __len__(self) -> int:
        return self._n

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> npt.NDArray[Any]:
        made = self.slots()
        return made if dtype is None else made.astype(dtype, copy=False)

    def tolist(self) -> list[int]:
        return self.slots().tolist()  # type: ignore[no-any-return]


Part = list[int] | npt.NDArray[np.int32] | npt.NDArray[np.int64] | ChunkSlots


class IntColumn(Sequence[int]):
    """A read-only sequence of ints made of ``parts`` (lists and 1-d integer arrays, in order)."""

    __slots__ = ("_array", "_len", "_list", "_parts")

    def __init__(self, parts: list[Part]) -> None:
        self._parts = parts
        self._len = sum(map(len, parts))
        self._list: list[int] | None = None
        self._array: npt.NDArray[Any] | None = None

    def tolist(self) -> list[int]:
        """The values as a list, built on first use (the caller must not change it: the column keeps it)."""
        values = self._list
        if values is None:
            values = []
            for part in self._parts:
                values += part if isinstance(part, list) else part.tolist()
            self._list = values
        return values

    def array(self, dtype: type[np.signedinteger[Any]]) -> npt.NDArray[Any]:
        """The values as a new or cached 1-d array of ``dtype`` (no list is built)."""
        cached = self._array
        if cached is None or cached.dtype != dtype:
            parts = self._parts
            if self._list is not None:
                cached = np.asarray(self._list, dtype=dtype)
            elif not parts:
                cached = np.zeros(0, dtype=dtype)
            else:
                cached = np.concatenate([np.asarray(part, dtype=dtype) for part in parts])
            self._array = cached
        return cached

    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, index: int) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> list[int]: ...
    def __getitem__(self, index: int | slice) -> int | list[int]:
        return self.tolist()[index]

    def __iter__(self) -> Iterator[int]:
        return iter(self.tolist())

    def __contains__(self, value: object) -> bool:
        return value in self.tolist()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IntColumn):
            return self._len == other._len and self.tolist() == other.tolist()
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return self._len == len(other) and self.tolist() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # like the list it stands for

    def __repr__(self) -> str:
        return repr(self.tolist())


def as_list(values: Sequence[int]) -> list[int]:
    """``values`` as a list without copying one that already is (a plan's column may be either)."""
    if isinstance(values, list):
        return values
    if isinstance(values, IntColumn):
        return values.tolist()
    return list(values)
