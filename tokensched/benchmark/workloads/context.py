"""A session's conversation so far: an int32 buffer that grows in place and lends its prefix as each prompt.

A coding-agent turn sends the whole conversation back (45k-200k tokens) plus a
few thousand new ones. Keeping the conversation as a list or ``array('i')``
costs a Python-int conversion per drawn token and a full copy per turn (about
1 ms a turn, over a second of CPU in a simulated hour). Here drawn tokens go
from the random bytes into the buffer in one numpy pass, and a released
prompt is a read-only view of the buffer's first ``len(context)`` tokens.

Appending writes only past every view lent so far, so a prompt the scheduler
still holds never changes. Growing reallocates (old views keep the old
memory), and rewriting the tail copies first (copy on write), for the same
reason.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from tokensched.tokens import Int32Array, TokenIds

_WORDS = np.dtype("<u2")  # drawn ids are little-endian 16-bit words, whatever the machine
_INITIAL_CAPACITY = 1 << 16


def draw_tokens(rng: random.Random, count: int, vocab_size: int) -> Int32Array:
    """``count`` token ids from ``rng``'s next ``2 * count`` random bytes, reduced below ``vocab_size``.

    The same ids as reading the bytes as little-endian 16-bit words one by one
    (and taking each modulo the vocabulary when it is smaller than 2**16).
    Draws nothing for ``count <= 0``.
    """
    if count <= 0:
        return np.zeros(0, np.int32)
    words = np.frombuffer(rng.randbytes(2 * count), dtype=_WORDS)
    if vocab_size < 1 << 16:
        words = words % vocab_size
    return words.astype(np.int32)


class SessionContext:
    """Every token of one conversation so far; :meth:`prompt` lends the whole of it without copying."""

    __slots__ = ("_buf", "_size")

    def __init__(self) -> None:
        self._buf: Int32Array = np.empty(0, np.int32)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def extend(self, tokens: Sequence[int] | Int32Array) -> None:
        """Append ``tokens`` (an answer, drawn ids) after everything lent so far."""
        count = len(tokens)
        if not count:
            return
        end = self._size + count
        if end > len(self._buf):
            self._regrow(end)
        self._buf[self._size : end] = tokens
        self._size = end

    def draw(self, rng: random.Random, count: int, vocab_size: int) -> None:
        """Append ``count`` ids drawn from ``rng`` (:func:`draw_tokens`)."""
        self.extend(draw_tokens(rng, count, vocab_size))

    def truncate(self, keep: int) -> None:
        """Drop everything after the first ``keep`` tokens; later appends will not touch a lent prompt."""
        if not 0 <= keep <= self._size:
            raise ValueError(f"cannot keep {keep} tokens of a {self._size}-token context")
        if keep < self._size:
            buf = np.empty(len(self._buf), np.int32)  # a lent prompt may still cover the dropped tail: copy
            buf[:keep] = self._buf[:keep]
            self._buf = buf
        self._size = keep

    def prompt(self) -> TokenIds:
        """The conversation so far as an immutable prompt: a read-only view, valid for as long as it is held."""
        view = self._buf[: self._size]
        view.flags.writeable = False
        return TokenIds.trusted(view)

    def tolist(self) -> list[int]:
        return self._buf[: self._size].tolist()  # type: ignore[no-any-return]

    def _regrow(self, needed: int) -> None:
        capacity = max(needed, 2 * len(self._buf), _INITIAL_CAPACITY)
        buf = np.empty(capacity, np.int32)
        buf[: self._size] = self._buf[: self._size]
        self._buf = buf
