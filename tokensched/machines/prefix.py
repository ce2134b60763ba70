"""Content hashes of full KV blocks, chained so that a hash names a whole prefix.

``hash_i = H(hash_{i-1}, tokens of block i)``: two requests share block i's
hash only if they agree on every token up to the end of block i, so a dict
lookup per block finds the longest cached prefix. Hashes are computed once per
full block as tokens arrive (:class:`BlockHasher`), never for a whole prompt per
step; a session's next turn reuses the hashes of the tokens it shares with the
previous turn after one comparison of those tokens.

Python's tuple hash is 64-bit; collisions are possible in principle (about
n^2 / 2^64 for n cached blocks) and would alias two prefixes.
"""

from __future__ import annotations

from collections.abc import Sequence

ROOT_HASH = 0x746F6B656E736368  # "tokensch": the parent of every first block


def hash_block(parent: int, tokens: Sequence[int]) -> int:
    return hash((parent, *tokens))


def extend_hashes(hashes: list[int], tokens: Sequence[int], block_size: int) -> None:
    """Append the hashes of every full block of ``tokens`` not yet in ``hashes``."""
    start = len(hashes)
    end = len(tokens) // block_size
    if end <= start:
        return
    parent = hashes[-1] if hashes else ROOT_HASH
    append = hashes.append
    lo = start * block_size
    for _ in range(start, end):
        hi = lo + block_size
        parent = hash((parent, *tokens[lo:hi]))
        append(parent)
        lo = hi


def shared_prefix_blocks(previous: Sequence[int], tokens: Sequence[int], block_size: int) -> int:
    """How many full blocks ``tokens`` shares with ``previous`` (a session's last turn).

    One C-speed comparison of the common part in the common case where the new
    prompt extends the old one; a block-wise search otherwise.
    """
    n = min(len(previous), len(tokens)) // block_size * block_size
    if n == 0:
        return 0
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
