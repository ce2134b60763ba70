"""The gateway's routing policies, for the cluster simulation: which replica gets a request.

Each mirrors ``smg`` 1.13.0's policy of the same name (``model_gateway/src/
policies/*.rs`` in lightseekorg/smg, read for this; its defaults are the ones
``smg launch --help`` prints):

- ``round_robin``: the next replica in turn.
- ``random``: uniformly at random (seeded).
- ``least_load``: fewest requests in flight (running + waiting).
- ``power_of_two``: the less loaded of two replicas drawn at random.
- ``consistent_hashing``: a hash ring keyed on the session (160 virtual
  nodes a replica), so a session stays put while its replica lives.
- ``cache_aware``: smg's approximate-tree algorithm. While load is balanced
  it sends a request to the replica whose tree (the prefixes routed there
  before) matches the longest share of the prompt, if that share exceeds
  ``cache_threshold`` (default 0.3), and otherwise to the least-loaded
  replica; once load is imbalanced, ``max - min > balance_abs_threshold``
  (64) and ``max > balance_rel_threshold * min`` (1.5), it sends every
  request to the least-loaded replica. Either way the prompt is added to the
  chosen replica's tree. Trees hold chained block hashes, so a prefix match
  is a set lookup per block (a binary search down the chain).

The tree is the router's belief, not the replica's cache: a prefix the replica
evicted still routes there, as in smg without KV events.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Callable, Sequence

from tokensched.cluster.spec import RouterPolicy

VIRTUAL_NODES = 160  # points per replica on the consistent-hashing ring
CACHE_THRESHOLD = 0.3  # smg launch --cache-threshold default
BALANCE_ABS_THRESHOLD = 64  # smg Router(balance_abs_threshold=64)
BALANCE_REL_THRESHOLD = 1.5  # smg launch --balance-rel-threshold default


def _point(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class SimRouter:
    """Chooses a replica for each request from its session, its prompt's block-hash chain and the loads."""

    def __init__(
        self,
        policy: RouterPolicy,
        replicas: int,
        *,
        seed: int = 0,
        cache_threshold: float = CACHE_THRESHOLD,
        balance_abs_threshold: int = BALANCE_ABS_THRESHOLD,
        balance_rel_threshold: float = BALANCE_REL_THRESHOLD,
    ) -> None:
        if replicas < 1:
            raise ValueError(f"a router needs at least one replica, got {replicas}")
        if policy is RouterPolicy.PREFIX_HASH:
            raise ValueError("prefix_hash is not simulated; choose another policy")
        if not 0.0 <= cache_threshold <= 1.0:
            raise ValueError(f"cache_threshold must be within [0, 1], got {cache_threshold}")
        self.policy = policy
        self.replicas = replicas
        self.cache_threshold = cache_threshold
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold
        self._rng = random.Random(f"tokensched/router/{seed}")
        self._next = 0
        self._trees: list[set[int]] = [set() for _ in range(replicas)]
        ring = sorted((_point(f"replica-{r}#{v}"), r) for r in range(replicas) for v in range(VIRTUAL_NODES))
        self._ring_points = [p for p, _ in ring]
        self._ring_owners = [r for _, r in ring]
        self.decisions = {"cache_hit": 0, "cache_miss": 0, "balance": 0}
        """cache_aware only: how often it followed a prefix, fell back to load, or was overruled by imbalance."""

    @property
    def reads_block_hashes(self) -> bool:
        """Whether :meth:`choose` looks at the prompt's hash chain (only the cache-aware policy does).

        A caller may pass an empty chain otherwise and skip hashing the prompt.
        """
        return self.policy is RouterPolicy.CACHE_AWARE

    def choose(self, session: str | None, block_hashes: Sequence[int], loads: Sequence[int]) -> int:
        """The replica for a request with this session, prompt hash chain and the replicas' loads now."""
        match self.policy:
            case RouterPolicy.ROUND_ROBIN:
                chosen = self._next
                self._next = (self._next + 1) % self.replicas
                return chosen
            case RouterPolicy.RANDOM:
                return self._rng.randrange(self.replicas)
            case RouterPolicy.LEAST_LOAD:
                return _least(loads)
            case RouterPolicy.POWER_OF_TWO:
                if self.replicas == 1:
                    return 0
                a, b = self._rng.sample(range(self.replicas), 2)
                return a if loads[a] <= loads[b] else b
            case RouterPolicy.CONSISTENT_HASHING:
                at = bisect.bisect(self._ring_points, _point(session or "")) % len(self._ring_points)
                return self._ring_owners[at]
            case _:
                return self._cache_aware(block_hashes, loads)

    def _cache_aware(self, block_hashes: Sequence[int], loads: Sequence[int]) -> int:
        low, high = min(loads), max(loads)
        if high - low > self.balance_abs_threshold and high > self.balance_rel_threshold * low:
            chosen = _least(loads)
            self.decisions["balance"] += 1
        else:
            matches = [self._matched(tree, block_hashes) for tree in self._trees]
            best = max(range(self.replicas), key=lambda r: (matches[r], -loads[r]))
            if block_hashes and matches[best] / len(block_hashes) > self.cache_threshold:
                chosen = best
                self.decisions["cache_hit"] += 1
            else:
                chosen = _least(loads, tie=lambda r: len(self._trees[r]))
                self.decisions["cache_miss"] += 1
        self._trees[chosen].update(block_hashes)
        return chosen

    @staticmethod
    def _matched(tree: set[int], chain: Sequence[int]) -> int:
        """Leading blocks of ``chain`` in ``tree`` (chained hashes: block i present means the prefix is)."""
        lo, hi = 0, len(chain)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if chain[mid - 1] in tree:
                lo = mid
            else:
                hi = mid - 1
        return lo


def _least(loads: Sequence[int], tie: Callable[[int], int] | None = None) -> int:
    """The least-loaded replica; ``tie`` ranks replicas of equal load (lowest index otherwise)."""
    if tie is None:
        return min(range(len(loads)), key=loads.__getitem__)
    rank = tie
    return min(range(len(loads)), key=lambda r: (loads[r], rank(r)))
