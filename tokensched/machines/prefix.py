"""Keyed content hashes of full KV blocks, chained so that a hash names a whole prefix.

Hash to find, compare to confirm: a block hash only *finds* a candidate in the
prefix index; :class:`~tokensched.machines.blocks.BlockPool` then confirms the
candidate against the tokens it actually holds and the block it was computed
after, so a collision (accidental or crafted) costs at most a cache miss and
can never hand one prefix's KV to another.

The hash is keyed with a per-process secret (drawn lazily from ``os.urandom``
the first time a hasher is built, never at import; pass ``secret=`` to pin it
in tests), so nobody outside the process can search offline for colliding
token sequences and squat on another tenant's index slots. It is a keyed
universal hash, not a cryptographic one, chosen so that a 200k-token prompt
hashes in one vectorised numpy pass:

- per block ``b``: ``x_b = sum_j (w_bj xor K_j) * M_j`` over the block's
  64-bit words ``w_bj = t_b,2j + 2^32 t_b,2j+1`` (its int32 tokens read two at
  a time, a zero token padding an odd block size), which for a whole prompt is
  one xor and one matrix-vector product over a uint64 view of the tokens (no
  widening copy), then ``y_b = fmix(x_b xor K0)``;
- chained: ``P_b = P_{b-1} * R + y_b`` (mod 2^64), ``hash_b = fmix(P_b xor K1)``,
  where ``P_{-1}`` is the root of the request's ``cache_salt`` (so tenants with
  different salts get unrelated chains) and ``fmix`` is MurmurHash3's 64-bit
  finaliser, a bijection, so a chain can be extended from its last hash alone.

``P_b`` unrolls to ``R^(b+1) P_{-1} + R^b * cumsum_j(y_j R^-j)``: one cumulative
sum over the prompt's blocks instead of a Python loop. A single block (decode
filling one block) takes a short path, the chain in Python (its ``x_b`` still one
dot product when the tokens are an int32 array), that gives the same value.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

_MASK = (1 << 64) - 1
_C1 = 0xFF51AFD7ED558CCD  # MurmurHash3 fmix64 constants (Austin Appleby, public domain)
_C2 = 0xC4CEB9FE1A85EC53
_C1_INV = pow(_C1, -1, 1 << 64)
_C2_INV = pow(_C2, -1, 1 << 64)
_U33 = np.uint64(33)

_process_secret: bytes | None = None

Tokens = Sequence[int] | npt.NDArray[np.int32]


def process_secret() -> bytes:
    """This process's hashing secret, drawn on first use."""
    global _process_secret  # one secret a process, created lazily by design
    if _process_secret is None:
        _process_secret = os.urandom(32)
    return _process_secret


def _fmix(h: int) -> int:
    h ^= h >> 33
    h = (h * _C1) & _MASK
    h ^= h >> 33
    h = (h * _C2) & _MASK
    return h ^ (h >> 33)


def _unfmix(h: int) -> int:
    h ^= h >> 33  # a right xorshift by >= half the width is its own inverse
    h = (h * _C2_INV) & _MASK
    h ^= h >> 33
    h = (h * _C1_INV) & _MASK
    return h ^ (h >> 33)


def _fmix_array(h: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    h ^= h >> _U33
    h *= np.uint64(_C1)
    h ^= h >> _U33
    h *= np.uint64(_C2)
    h ^= h >> _U33
    return h


class BlockHasher:
    """Chained keyed hashes of full blocks of ``block_size`` tokens.

    >>> hasher = BlockHasher(4, secret=b"test")
    >>> hashes: list[int] = []
    >>> hasher.extend(hashes, [1, 2, 3, 4, 5, 6, 7, 8, 9], hasher.root(None))
    >>> len(hashes)  # two full blocks; the ninth token waits for its block to fill
    2
    """

    __slots__ = ("_k", "_k0", "_k1", "_key", "_kl", "_m", "_ml", "_r", "_rinv", "_rinvpow", "_rpow", "block_size")

    def __init__(self, block_size: int, secret: bytes | None = None) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {block_size}")
        self.block_size = block_size
        key = hashlib.blake2b(secret if secret is not None else process_secret(), digest_size=64).digest()
        self._key = key
        rng = np.random.default_rng(np.frombuffer(key, dtype=np.uint32))
        n = (block_size + 1) // 2  # 64-bit words a block
        words = rng.integers(0, 1 << 64, size=2 * n + 3, dtype=np.uint64, endpoint=False)
        self._k = words[:n].copy()
        self._m = words[n : 2 * n] | np.uint64(1)
        self._kl: list[int] = self._k.tolist()
        self._ml: list[int] = self._m.tolist()
        self._k0 = int(words[-3])
        self._k1 = int(words[-2])
        self._r = int(words[-1]) | 1  # odd: invertible mod 2^64
        self._rinv = pow(self._r, -1, 1 << 64)
        self._rpow = np.ones(1, dtype=np.uint64)
        self._rinvpow = np.ones(1, dtype=np.uint64)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(block_size={self.block_size})"  # never the key

    def root(self, salt: str | None) -> int:
        """The hash that stands for "before the first block" of a request with this ``cache_salt``."""
        data = b"\x00" if salt is None else b"\x01" + salt.encode()
        state = int.from_bytes(hashlib.blake2b(data, key=self._key, digest_size=8).digest(), "little")
        return _fmix(state ^ self._k1)

    def extend(self, hashes: list[int], tokens: Tokens, root: int) -> None:
        """Append the hashes of every full block of ``tokens`` not yet in ``hashes``."""
        bs = self.block_size
        start = len(hashes)
        end = len(tokens) // bs
        if end <= start:
            return
        parent = _unfmix(hashes[-1] if hashes else root) ^ self._k1
        if end - start <= 2:
            self._extend_small(hashes, tokens, start, end, parent)
            return
        x = self._mix(np.asarray(tokens[start * bs : end * bs]).reshape(end - start, bs))
        y = _fmix_array(x ^ np.uint64(self._k0))
        n = end - start
        rpow, rinvpow = self._powers(n)
        acc = np.cumsum(y * rinvpow[:n], dtype=np.uint64)
        chain = rpow[1 : n + 1] * np.uint64(parent) + rpow[:n] * acc
        hashes.extend(_fmix_array(chain ^ np.uint64(self._k1)).tolist())

    def next_hashes(self, parents: Sequence[int], blocks: npt.NDArray[np.int32]) -> list[int]:
        """The hash of ``blocks[i]`` (one full block each) chained after hash ``parents[i]``, for many chains at once.

        What a decode step needs when several requests fill a block: one
        vectorised pass instead of one :meth:`extend` per request.
        """
        p = np.array(parents, dtype=np.uint64)
        p ^= p >> _U33  # fmix inverted, vectorised
        p *= np.uint64(_C2_INV)
        p ^= p >> _U33
        p *= np.uint64(_C1_INV)
        p ^= p >> _U33
        p ^= np.uint64(self._k1)
        x = self._mix(blocks)
        chain = p * np.uint64(self._r) + _fmix_array(x ^ np.uint64(self._k0))
        return _fmix_array(chain ^ np.uint64(self._k1)).tolist()  # type: ignore[no-any-return]

    def _mix(self, blocks: npt.NDArray[np.integer[Any]]) -> npt.NDArray[np.uint64]:
        """``x_b`` of each row of ``blocks`` (shape ``(n, block_size)``): one xor and one matrix-vector product."""
        if self.block_size % 2:  # pad to whole words with a zero token
            padded = np.zeros((len(blocks), self.block_size + 1), dtype="<i4")
            padded[:, :-1] = blocks
            words = padded.view("<u8")
        else:
            words = np.ascontiguousarray(blocks, dtype="<i4").view("<u8")  # no copy for int32 on little-endian
        return (words ^ self._k) @ self._m  # uint64 arithmetic wraps mod 2^64

    def _extend_small(self, hashes: list[int], tokens: Tokens, start: int, end: int, parent: int) -> None:
        """:meth:`extend` of one or two blocks (a decode filling a block): the chain in Python, no cumsum.

        The blocks' ``x_b`` from an int32 array (the scheduler's token buffer)
        take one :meth:`_mix` (an xor and a 32-word dot product in C, ~5 us)
        instead of a Python sum over the block's words (~20 us); a list's
        take the Python sum (the reference, same values: both wrap mod 2^64).
        """
        bs = self.block_size
        k0, k1, r = self._k0, self._k1, self._r
        if isinstance(tokens, np.ndarray) and tokens.dtype == np.int32:
            xs: list[int] = self._mix(tokens[start * bs : end * bs].reshape(end - start, bs)).tolist()
        else:
            xs = [self._mix_block(tokens[b * bs : (b + 1) * bs]) for b in range(start, end)]
        for x in xs:
            parent = (parent * r + _fmix(x ^ k0)) & _MASK
            hashes.append(_fmix(parent ^ k1))

    def _mix_block(self, chunk: Tokens) -> int:
        """``x_b`` of one block's tokens in pure Python (the reference of :meth:`_mix` for one row)."""
        values = chunk.tolist() if isinstance(chunk, np.ndarray) else list(chunk)
        if self.block_size % 2:
            values.append(0)
        words = [lo | hi << 32 for lo, hi in zip(values[0::2], values[1::2], strict=True)]
        return int(sum((w ^ ki) * mi for w, ki, mi in zip(words, self._kl, self._ml, strict=True)) & _MASK)

    def _powers(self, n: int) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
        """``R^0..R^n`` and ``R^-0..R^-n`` (mod 2^64), grown by doubling and kept."""
        if len(self._rpow) <= n:
            size = max(n + 1, 2 * len(self._rpow))
            self._rpow = np.cumprod(np.full(size, self._r, dtype=np.uint64), dtype=np.uint64)
            self._rpow = np.concatenate((np.ones(1, dtype=np.uint64), self._rpow[:-1]))
            self._rinvpow = np.cumprod(np.full(size, self._rinv, dtype=np.uint64), dtype=np.uint64)
            self._rinvpow = np.concatenate((np.ones(1, dtype=np.uint64), self._rinvpow[:-1]))
        return self._rpow, self._rinvpow


def shared_prefix_blocks(previous: Tokens, tokens: Tokens, block_size: int) -> int:
    """How many full blocks ``tokens`` shares with ``previous`` (a session's last turn).

    One C-speed comparison of the common part in the common case where the new
    prompt extends the old one; a block-wise search otherwise.
    """
    n = min(len(previous), len(tokens)) // block_size * block_size
    if n == 0:
        return 0
    if isinstance(previous, np.ndarray) or isinstance(tokens, np.ndarray):
        a = np.asarray(previous[:n], dtype=np.int32)
        b = np.asarray(tokens[:n], dtype=np.int32)
        if np.array_equal(a, b):  # one pass, no copies
            return n // block_size
        return int(np.argmin(a == b)) // block_size
    if tokens[:n] == (previous if len(previous) == n else previous[:n]):
        return n // block_size
    lo, hi = 0, n // block_size  # binary search for the first differing block
    while lo < hi:
        mid = (lo + hi + 1) // 2
        end = mid * block_size
        if tokens[:end] == previous[:end]:
            lo = mid
        else:
            hi = mid - 1
    return lo
