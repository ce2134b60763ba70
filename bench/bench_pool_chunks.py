"""The block pool's work for one prefill chunk: allocate its blocks, commit them, later release them.

A single step of the simulator usually carries one prefill chunk: 8,192 tokens
(128 blocks of 64) under the TensorRT-LLM-like profiles, 2,048 (32 blocks) per
rank under DP attention. The pool is full of cached content released by
finished 200k-token requests (runs of 3,125 blocks), so every allocation
evicts from the front of such a run. A listener hears the index change, as
the PrefixAware queue does. Prints the mean CPU microseconds per call over
1,500 chunks, for chunks of 24, 32 and 40 blocks (a DP rank's chunks: 24-39
blocks measured in the hour) and of 128. Only the public ``BlockPool``
API, so ``PYTHONPATH=<older checkout>`` measures a before.

    .venv/bin/python bench/bench_pool_chunks.py
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

import tokensched
from tokensched.machines.blocks import BlockPool
from tokensched.machines.prefix import BlockHasher

BS, RUN = 64, 3125  # the bench's block size; a 200k-token request's table


class Listener:
    """Hears the index change and keeps nothing (what a listener costs the pool, not what it does)."""

    def blocks_stored(self, block_hashes: list[int], parent: int | None, tokens: Sequence[int], bs: int) -> None:
        pass

    def blocks_removed(self, block_hashes: list[int]) -> None:
        pass

    def all_cleared(self) -> None:
        pass


def measure(k: int, chunks: int = 1500) -> dict[str, float]:
    pool = BlockPool(8 * RUN, BS, Listener())
    hasher = BlockHasher(BS, secret=b"bench")
    rng = np.random.default_rng(0)
    root = pool.root(None)
    for _ in range(8):  # the pool full of cached, released 200k-token tables
        tokens = rng.integers(0, 30000, RUN * BS, dtype=np.int32)
        hashes: list[int] = []
        hasher.extend(hashes, tokens, hasher.root(None))
        blocks = pool.allocate(RUN)
        pool.commit(blocks, hashes, tokens, root)
        pool.release(blocks, None)
    work = []
    for _ in range(chunks):
        tokens = rng.integers(0, 30000, k * BS, dtype=np.int32)
        hashes = []
        hasher.extend(hashes, tokens, hasher.root(None))
        work.append((tokens, hashes))
    spent = {"allocate (evicting)": 0.0, "commit (new content)": 0.0, "release": 0.0}
    clock = time.process_time
    held: list[list[int]] = []
    for tokens, hashes in work:
        start = clock()
        blocks = pool.allocate(k)
        spent["allocate (evicting)"] += clock() - start
        start = clock()
        pool.commit(blocks, hashes, tokens, root)
        spent["commit (new content)"] += clock() - start
        held.append(blocks)
        if len(held) > 20:  # a few requests' chunks stay held; the oldest goes back to the cache
            start = clock()
            pool.release(held.pop(0), None)
            spent["release"] += clock() - start
    counts = {"allocate (evicting)": chunks, "commit (new content)": chunks, "release": chunks - 20}
    return {op: spent[op] / counts[op] * 1e6 for op in spent}


def main() -> None:
    print(f"tokensched from {tokensched.__file__}")
    for k in (24, 32, 40, 128):
        parts = "  ".join(f"{op} {us:6.1f} us" for op, us in measure(k).items())
        print(f"chunk of {k:3d} blocks: {parts}")


if __name__ == "__main__":
    main()
