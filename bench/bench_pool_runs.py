"""The block pool's run operations on a 200k-token request's table (3,125 blocks of 64), and one block at a time.

Allocates (evicting the previous requests' cached blocks once the pool is
full), commits new content and releases a whole table, 24 times (the first 4
not counted), then allocates, commits and releases one block 20,000 times (a
decode filling a block). Prints medians. Only the public ``BlockPool`` API,
so ``PYTHONPATH=<older checkout>`` measures a before.

    .venv/bin/python bench/bench_pool_runs.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np

import tokensched
from tokensched.machines.blocks import BlockPool

BS, N = 64, 3125  # a 200k-token request at the bench's block size


def main() -> None:
    pool = BlockPool(4 * N, BS)
    rng = np.random.default_rng(0)
    times: dict[str, list[float]] = {"allocate (evicting)": [], "commit (new content)": [], "release": []}
    toks = rng.integers(0, 30000, N * BS, dtype=np.int32)
    for rep in range(24):
        toks = rng.integers(0, 30000, N * BS, dtype=np.int32)
        hashes = [(rep << 32) + i + 1 for i in range(N)]
        t0 = time.perf_counter()
        blocks = pool.allocate(N)
        t1 = time.perf_counter()
        pool.commit(blocks, hashes, toks, pool.root(None))
        t2 = time.perf_counter()
        pool.release(blocks, None)
        t3 = time.perf_counter()
        if rep >= 4:
            for kind, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                times[kind].append(seconds * 1e3)
    t0 = time.perf_counter()
    for i in range(20000):
        b = pool.allocate_one()
        pool.commit([b], [(99 << 40) + i], toks[:BS], pool.root(None))
        pool.release([b], None)
    one = (time.perf_counter() - t0) / 20000 * 1e6
    print(f"tokensched from {tokensched.__file__}")
    for kind, ms in times.items():
        print(f"  {kind:<24} median {statistics.median(ms):6.2f} ms  ({N:,} blocks)")
    print(f"  one block: allocate_one + commit + release {one:6.1f} us")


if __name__ == "__main__":
    main()
