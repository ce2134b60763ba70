"""The parts of a 200k-token admission, each alone: int conversion and block hashing (ms).

Why the edge packs ints with ``struct`` and the hasher reads tokens as 64-bit
words: the alternatives side by side on fresh int objects (as decoded JSON
gives them), interleaved round by round so that all see the same machine
load; min and median of the rounds. See docs/performance.md.

    .venv/bin/python bench/bench_admission_parts.py [rounds]
"""

from __future__ import annotations

import marshal
import pickle
import statistics
import sys
import time
from array import array
from collections.abc import Callable

import numpy as np

from tokensched.machines.prefix import BlockHasher
from tokensched.tokens import as_token_array

N = 200_000
BLOCK = 16


def _slices(tokens: list[int]) -> None:
    for start in range(0, len(tokens), 4096):
        tokens[start : start + 4096]


def interleaved(make: Callable[[], object], runs: dict[str, Callable[[object], object]], rounds: int) -> None:
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            value = make()
            t0 = time.perf_counter()
            run(value)
            times[name].append((time.perf_counter() - t0) * 1e3)
    for name, ms in times.items():
        print(f"  {name:<50} min {min(ms):6.2f}  median {statistics.median(ms):6.2f}")


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 9
    prompt = [(i * 7919) % 30000 + 3 for i in range(N)]
    print(f"{N:,} fresh Python ints to int32, ms ({rounds} rounds)")
    interleaved(
        lambda: [int(str(t)) for t in prompt],
        {
            "as_token_array (struct in 4k chunks; strict)": as_token_array,
            "np.array(dtype=int32) (casts floats, parses str)": lambda v: np.array(v, dtype=np.int32),
            "array('q') + narrowing copy": lambda v: np.frombuffer(array("q", v), np.int64).astype(np.int32),  # type: ignore[call-overload]
            "np.fromiter(dtype=int32)": lambda v: np.fromiter(v, dtype=np.int32, count=N),  # type: ignore[call-overload]
            "marshal.dumps(v, 2) (5-byte records; encoding only)": lambda v: marshal.dumps(v, 2),
            "pickle.dumps(v, 5) (encoding only)": lambda v: pickle.dumps(v, 5),
            "slicing into 4k chunks only (refcounts written)": _slices,
            "sum(): each int read once, no conversion (a floor)": sum,  # type: ignore[dict-item]
        },
        rounds,
    )
    tokens = as_token_array(prompt)
    hasher = BlockHasher(BLOCK, secret=b"bench")
    root = hasher.root(None)
    key = np.random.default_rng(0).integers(0, 1 << 64, BLOCK, dtype=np.uint64, endpoint=False)
    odd = key | np.uint64(1)

    def widened(t: object) -> object:  # the form before: tokens widened to uint64, xor, multiply, row sums
        block = np.asarray(t).astype(np.uint64).reshape(-1, BLOCK)
        block ^= key
        block *= odd
        return block.sum(axis=1, dtype=np.uint64)

    print(f"block hashes of {N:,} tokens ({N // BLOCK:,} blocks), ms ({rounds} rounds)")
    interleaved(
        lambda: tokens,
        {
            "BlockHasher.extend (the chain, as Python ints)": lambda t: hasher.extend([], t, root),  # type: ignore[arg-type]
            "per-block mix: 64-bit words, xor + matvec": lambda t: hasher._mix(t.reshape(-1, BLOCK)),  # type: ignore[attr-defined]
            "per-block mix: widened to uint64, elementwise": widened,
        },
        rounds,
    )


if __name__ == "__main__":
    main()
