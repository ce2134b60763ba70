"""Token ids as int32 buffers: converted and validated once at the edge, never copied per step.

A 200k-token prompt arrives as a list of Python ints (decoded JSON), a numpy
array or an ``array('i')``. :func:`as_token_array` turns any of them into one
int32 numpy array in a single C-level pass and checks it vectorised
(non-negative, fits int32), naming the first bad position. Inside the
scheduler a request keeps its history in a :class:`TokenBuffer` that grows by
doubling, so appending a decoded token is amortised O(1), hashing and prefix
confirmation read the buffer's memory directly, and comparing a session's next
turn with its previous turn is one memory compare.

Both types are also plain ``Sequence[int]`` (indexing gives an ``int``,
slicing a ``list[int]``, equality with any sequence of ints), so code written
for lists keeps working.
"""

from __future__ import annotations

import operator
import struct
from array import array
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any, overload

import numpy as np
import numpy.typing as npt

Int32Array = npt.NDArray[np.int32]
INT32_MAX = 2**31 - 1


def as_token_array(tokens: object) -> Int32Array:
    """One int32 array from a list/tuple of ints, a numpy integer array or an ``array('i')``.

    Raises ValueError naming the first position that is negative, too large
    for int32, a bool or not an integer (floats are refused, never cast); the
    input is never modified.
    """
    if isinstance(tokens, TokenIds | TokenBuffer):
        return tokens.array.copy()
    if isinstance(tokens, np.ndarray):
        if tokens.ndim != 1:
            raise ValueError(f"token ids must be one-dimensional, got shape {tokens.shape}")
        if tokens.dtype.kind in "iu":
            values = tokens
        else:
            raise ValueError(f"token ids must be integers, got dtype {tokens.dtype}")
    elif isinstance(tokens, array):
        if tokens.typecode not in "bBhHiIlLqQ":
            raise ValueError(f"token ids must be integers, got array typecode {tokens.typecode!r}")
        values = np.frombuffer(tokens, dtype=np.dtype(tokens.typecode)) if len(tokens) else np.zeros(0, np.int32)
    elif isinstance(tokens, list | tuple):
        try:
            values = _pack_int32(tokens)
        except struct.error as e:
            bad = next((i for i, t in enumerate(tokens) if type(t) is bool or not _is_token(t)), None)
            where = f"position {bad} holds {tokens[bad]!r}" if bad is not None else str(e)  # None: a fickle __index__
            raise ValueError(f"token ids must be non-negative int32 integers; {where}") from e
        _refuse_bools_and_negatives(tokens, values)
        values.flags.writeable = False  # packed into memory of our own: nothing to copy
        return values
    else:
        raise ValueError(f"token ids must be a list of ints, a numpy integer array or array('i'), got {type(tokens)}")
    if values.size and values.dtype != np.int32:
        low, high = values.min(), values.max()
        if low < 0 or high > INT32_MAX:
            bad = int(np.argmax((values < 0) | (values > INT32_MAX)))
            raise ValueError(f"token ids must be non-negative int32; position {bad} holds {int(values[bad])}")
    elif values.size and values.min() < 0:
        bad = int(np.argmax(values < 0))
        raise ValueError(f"token ids must be non-negative int32; position {bad} holds {int(values[bad])}")
    out = values.astype(np.int32, copy=True)  # the caller's memory: copy it, never freeze it
    out.flags.writeable = False
    return out


def _is_token(token: object) -> bool:
    """An integer (an ``int``, or anything with ``__index__``, as ``struct`` takes) in ``[0, 2**31)``."""
    try:
        return 0 <= operator.index(token) <= INT32_MAX  # type: ignore[arg-type]
    except TypeError:
        return False


def _refuse_bools_and_negatives(tokens: list[int] | tuple[int, ...], values: Int32Array) -> None:
    """Raise ValueError naming the first bool or negative item of ``tokens`` (``values`` is their packing).

    ``struct`` packs ``True`` and ``False`` as 1 and 0 (``bool`` is an
    ``int``), so a bool can only sit where the packed value is at most 1: only
    those positions (a prompt holds few) are looked at, in C-level passes.
    """
    low = np.flatnonzero(values <= 1)
    if not len(low):
        return
    suspects = low.tolist()
    kinds = list(map(type, map(tokens.__getitem__, suspects)))
    bad = [i for i, kind in zip(suspects, kinds, strict=True) if kind is bool] if bool in kinds else []
    negative = low[values[low] < 0]
    first = min(bad[:1] + negative[:1].tolist(), default=None)
    if first is not None:
        raise ValueError(
            f"token ids must be non-negative int32 integers (bools refused); position {first} holds {tokens[first]!r}"
        )


_CHUNK = 4096
_pack_chunk = struct.Struct(f"={_CHUNK}i").pack_into


def _pack_int32(tokens: list[int] | tuple[int, ...]) -> Int32Array:
    """Python ints straight into an int32 array, refusing anything else, in C-level chunks.

    ``struct`` packs each item with an integer check (floats, strings and None
    are refused, where ``np.array(..., dtype=np.int32)`` would cast them) and an
    int32 range check, and writes into the array's memory: measured at about
    2.3 ms for 200k fresh ints, against 3.2 ms for ``np.array`` (which casts)
    and 4.6 ms for ``array('q')`` plus the narrowing copy. Chunks of 4096 keep
    one precompiled ``Struct`` whatever the prompt's length. Raises
    ``struct.error`` on the first bad item.

    Each chunk goes through ``partial(pack_into, buf, offset)(*chunk)``:
    written ``pack_into(buf, offset, *chunk)`` the call would first gather its
    arguments into a list and then copy that into a tuple, one more write of
    every item's refcount, about 0.3 ms of the 2.3 for 200k fresh ints
    (``bench/bench_admission_parts.py``); the partial takes the chunk's tuple
    as it is.
    """
    n = len(tokens)
    out = np.empty(n, dtype=np.int32)
    if not n:
        return out
    buf = out.data.cast("B")
    full = n - n % _CHUNK
    for start in range(0, full, _CHUNK):
        partial(_pack_chunk, buf, 4 * start)(*tokens[start : start + _CHUNK])
    if n > full:
        partial(struct.Struct(f"={n - full}i").pack_into, buf, 4 * full)(*tokens[full:])
    return out


class TokenIds(Sequence[int]):
    """An immutable int32 token sequence (a validated prompt)."""

    __slots__ = ("_a",)

    def __init__(self, tokens: object) -> None:
        self._a = as_token_array(tokens)

    @classmethod
    def trusted(cls, values: Int32Array) -> TokenIds:
        """Wrap an already validated read-only int32 array without copying it."""
        ids = cls.__new__(cls)
        ids._a = values
        return ids

    @property
    def array(self) -> Int32Array:
        """The tokens as a read-only int32 array (no copy): hand it to ``torch.from_numpy`` after ``.copy()``."""
        return self._a

    def tolist(self) -> list[int]:
        return self._a.tolist()  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return len(self._a)

    @overload
    def __getitem__(self, index: int) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> list[int]: ...
    def __getitem__(self, index: int | slice) -> int | list[int]:
        if isinstance(index, slice):
            return self._a[index].tolist()  # type: ignore[no-any-return]
        return int(self._a[index])

    def __iter__(self) -> Iterator[int]:
        return iter(self._a.tolist())

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> Int32Array:
        return self._a if dtype is None else self._a.astype(dtype)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TokenIds | TokenBuffer):
            return bool(np.array_equal(self._a, other.array))
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(other) == len(self._a) and self._a.tolist() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable-looking sequences are not hashable, like list

    def __repr__(self) -> str:
        return f"TokenIds({self._a.tolist()!r})" if len(self._a) <= 16 else f"TokenIds(<{len(self._a)} tokens>)"


class TokenBuffer(Sequence[int]):
    """A request's growing history (prompt, then outputs) in an int32 buffer that grows by doubling.

    ``size`` is the number of tokens (``len()`` without a method call, for the
    scheduler's per-step loop). A read-only prompt (a validated spec's) is
    taken as the buffer itself, copied only when the first token is appended
    (copy on write): admitting a 200k-token prompt copies nothing, and the copy
    (with room for ``reserve`` outputs) comes with the first output.
    """

    __slots__ = ("_buf", "_frozen", "_reserve", "size")

    def __init__(self, prompt: Int32Array, reserve: int = 0) -> None:
        n = len(prompt)
        self._reserve = reserve
        if prompt.flags.writeable:  # the caller's memory: copy it now
            self._buf = np.empty(max(16, n + reserve), dtype=np.int32)
            self._buf[:n] = prompt
        else:  # full, so the first append or extend grows it into a buffer of its own
            self._buf = prompt
        self.size = n
        # A read-only prompt (a validated spec's) is its own snapshot while the buffer still holds just it:
        # the size only grows by appending, and truncate() forgets it.
        self._frozen: Int32Array | None = None if prompt.flags.writeable else prompt

    @property
    def array(self) -> Int32Array:
        """The tokens so far, as a view (valid until the next append that grows the buffer)."""
        return self._buf[: self.size]

    def append(self, token: int) -> None:
        n = self.size
        if n == len(self._buf):
            self._grow(n + 1)
        self._buf[n] = token
        self.size = n + 1

    def extend(self, tokens: Sequence[int]) -> None:
        n, m = self.size, len(tokens)
        if n + m > len(self._buf):
            self._grow(n + m)
        self._buf[n : n + m] = tokens
        self.size = n + m

    def truncate(self, n: int) -> None:
        self.size = min(self.size, n)
        self._frozen = None
        if not self._buf.flags.writeable:  # still the prompt itself: the next append must not write into it
            self._grow(self.size)

    def _grow(self, need: int) -> None:
        old = self._buf
        cap = 2 * len(old) if old.flags.writeable else max(16, len(old) + self._reserve)
        buf = np.empty(max(need, cap), dtype=np.int32)
        buf[: self.size] = self._buf[: self.size]
        self._buf = buf

    def tolist(self) -> list[int]:
        return self._buf[: self.size].tolist()  # type: ignore[no-any-return]

    def snapshot(self) -> TokenIds:
        """An immutable copy of the tokens so far (the prompt itself, not copied, until the first change)."""
        frozen = self._frozen
        if frozen is not None and len(frozen) == self.size:
            return TokenIds.trusted(frozen)
        values = self._buf[: self.size].copy()
        values.flags.writeable = False
        return TokenIds.trusted(values)

    def __len__(self) -> int:
        return self.size

    def at(self, index: int) -> int:
        """Token ``index`` (0 <= index < size), without the checks of ``[]``."""
        return int(self._buf[index])

    @overload
    def __getitem__(self, index: int) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> list[int]: ...
    def __getitem__(self, index: int | slice) -> int | list[int]:
        if isinstance(index, slice):
            return self._buf[: self.size][index].tolist()  # type: ignore[no-any-return]
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"token index {index} out of range for {self.size} tokens")
        return int(self._buf[index])

    def __iter__(self) -> Iterator[int]:
        return iter(self.tolist())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TokenIds | TokenBuffer):
            return bool(np.array_equal(self.array, other.array))
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(other) == self.size and self.tolist() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"TokenBuffer(<{self.size} tokens>)"
