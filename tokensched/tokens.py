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

from array import array
from collections.abc import Iterator, Sequence
from typing import Any, overload

import numpy as np
import numpy.typing as npt

Int32Array = npt.NDArray[np.int32]
INT32_MAX = 2**31 - 1


def as_token_array(tokens: object) -> Int32Array:
    """One int32 array from a list/tuple of ints, a numpy integer array or an ``array('i')``.

    Raises ValueError naming the first position that is negative, too large
    for int32 or not an integer; the input is never modified.
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
        try:  # array('q') converts in C and refuses floats, strings and None (np.array would cast them)
            values = np.frombuffer(array("q", tokens), dtype=np.int64) if tokens else np.zeros(0, np.int64)
        except (OverflowError, TypeError) as e:
            bad = next((i for i, t in enumerate(tokens) if not isinstance(t, int)), None)
            if bad is None:  # ints too large for int64
                bad = next(i for i, t in enumerate(tokens) if not 0 <= t <= INT32_MAX)
            raise ValueError(
                f"token ids must be non-negative int32 integers; position {bad} holds {tokens[bad]!r}"
            ) from e
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
    out = values.astype(np.int32, copy=True)
    out.flags.writeable = False
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
    """A request's growing history (prompt, then outputs) in an int32 buffer that grows by doubling."""

    __slots__ = ("_buf", "_n")

    def __init__(self, prompt: Int32Array, reserve: int = 0) -> None:
        n = len(prompt)
        self._buf = np.empty(max(16, n + reserve), dtype=np.int32)
        self._buf[:n] = prompt
        self._n = n

    @property
    def array(self) -> Int32Array:
        """The tokens so far, as a view (valid until the next append that grows the buffer)."""
        return self._buf[: self._n]

    def append(self, token: int) -> None:
        n = self._n
        if n == len(self._buf):
            self._grow(n + 1)
        self._buf[n] = token
        self._n = n + 1

    def extend(self, tokens: Sequence[int]) -> None:
        n, m = self._n, len(tokens)
        if n + m > len(self._buf):
            self._grow(n + m)
        self._buf[n : n + m] = tokens
        self._n = n + m

    def truncate(self, n: int) -> None:
        self._n = min(self._n, n)

    def _grow(self, need: int) -> None:
        buf = np.empty(max(need, 2 * len(self._buf)), dtype=np.int32)
        buf[: self._n] = self._buf[: self._n]
        self._buf = buf

    def tolist(self) -> list[int]:
        return self._buf[: self._n].tolist()  # type: ignore[no-any-return]

    def snapshot(self) -> TokenIds:
        """An immutable copy of the tokens so far."""
        values = self._buf[: self._n].copy()
        values.flags.writeable = False
        return TokenIds.trusted(values)

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, index: int) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> list[int]: ...
    def __getitem__(self, index: int | slice) -> int | list[int]:
        if isinstance(index, slice):
            return self._buf[: self._n][index].tolist()  # type: ignore[no-any-return]
        if index < 0:
            index += self._n
        if not 0 <= index < self._n:
            raise IndexError(f"token index {index} out of range for {self._n} tokens")
        return int(self._buf[index])

    def __iter__(self) -> Iterator[int]:
        return iter(self.tolist())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TokenIds | TokenBuffer):
            return bool(np.array_equal(self.array, other.array))
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(other) == self._n and self.tolist() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"TokenBuffer(<{self._n} tokens>)"
