"""Which leading blocks of a new prompt the prefix cache already holds, found without walking 12k blocks.

A coding agent's turn repeats its session's previous turn plus a few hundred
tokens, and a 200k-token prompt is 12.5k blocks. Looking each block up in the
prefix index and comparing its tokens costs milliseconds, so the matcher
first tries what it remembers:

- a session's previous turn: the part of the new prompt that repeats it is
  found by one memory compare, and the previous turn's block hashes and
  blocks are taken over (those blocks still cached are confirmed by
  generation, not by tokens: :meth:`BlockPool.still_cached_run`);
- a recently finished long request whose first block the prompt repeats:
  one memory compare of the tokens finds the shared part.

Either way the earlier request's block hashes of the shared part are taken
over, so only the new blocks are hashed.

Only what neither covers goes through the index (hash to find, tokens to
confirm: :meth:`BlockPool.match_run`).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from tokensched.machines.blocks import BlockPool
from tokensched.machines.prefix import BlockHasher, shared_prefix_blocks
from tokensched.machines.request import Decoding, Prefilling, Request

# Finished requests with at least MIN_REUSE_BLOCKS committed blocks are remembered (the RECENT_RUNS newest), so
# that a request repeating one's prefix takes over its still-cached blocks without 12k index look-ups.
RECENT_RUNS = 8
MIN_REUSE_BLOCKS = 64


class PromptMatcher:
    """Hashes prompts and finds their cached runs, remembering finished sessions' turns and long requests."""

    __slots__ = ("_bs", "_max_sessions", "_pool", "_recent_runs", "_roots", "_sessions", "hasher")

    def __init__(self, pool: BlockPool, hasher: BlockHasher, max_remembered_sessions: int) -> None:
        self._pool = pool
        self.hasher = hasher
        self._bs = pool.block_size
        self._max_sessions = max_remembered_sessions
        self._roots: dict[str | None, tuple[int, int]] = {}  # cache_salt -> (root hash, pool link root)
        self._sessions: OrderedDict[str, Request] = OrderedDict()  # each session's latest finished turn
        self._recent_runs: deque[Request] = deque(maxlen=RECENT_RUNS)  # finished, with long committed runs

    def __repr__(self) -> str:
        # By content, not address: the exhaustive search keys states by the reprs of what it does not know.
        return (
            f"PromptMatcher(roots={self._roots!r}, sessions={list(self._sessions.items())!r}, "
            f"recent_runs={list(self._recent_runs)!r})"
        )

    def root(self, salt: str | None) -> tuple[int, int]:
        """The hash chain's root and the pool's link root for requests with this ``cache_salt``."""
        root = self._roots.get(salt)
        if root is None:
            root = self._roots[salt] = (self.hasher.root(salt), self._pool.root(salt))
        return root

    def extend_hashes(self, request: Request) -> None:
        """Hash ``request``'s full blocks not hashed yet (its chain grows as it decodes)."""
        self.hasher.extend(request.block_hashes, request.tokens.array, self.root(request.cache_salt)[0])

    def hash_prompt(self, request: Request) -> None:
        """Chained block hashes of the prompt, taken over from an earlier request for the part it repeats.

        The earlier request is the session's previous turn (the part the new
        prompt repeats found by one memory compare), else a recently finished
        long request whose prompt the new one repeats (one memory compare per
        candidate). Its hashes of the shared blocks are the new prompt's too
        (same tokens, same salt, same chain), so only the blocks past them are
        hashed: a 200k-token prompt that repeats a cached one hashes nothing.

        Also leaves on the request the blocks of that earlier request that held
        its leading blocks (``reuse_run``, checked still cached at admission).
        """
        hashes = request.block_hashes
        tokens = request.tokens.array
        previous = self._previous_turn(request)
        if previous is not None:
            shared = shared_prefix_blocks(previous.tokens.array, tokens, self._bs)
            hashes.extend(previous.block_hashes[:shared])
            self._take_over_run(request, previous, shared)
        if request.reuse_run is None and len(tokens) // self._bs >= MIN_REUSE_BLOCKS and self._recent_runs:
            self._find_recent_run(request)
        self.hasher.extend(hashes, tokens, self.root(request.cache_salt)[0])

    def _find_recent_run(self, request: Request) -> None:
        """The longest run of a recently finished request that ``request``'s prompt repeats, by its tokens.

        One memory compare per remembered run whose first block matches (at
        most :data:`RECENT_RUNS`, each C-speed); the first of the longest wins.
        The winner's hashes of the shared blocks are taken over as well.
        """
        bs = self._bs
        tokens = request.tokens.array
        full = len(tokens) // bs
        best: Request | None = None
        best_n = 0
        for earlier in self._recent_runs:
            run = earlier.kv_run
            if run is None or earlier.cache_salt != request.cache_salt:
                continue
            hi = min(len(run[0]), len(earlier.block_hashes), full)
            theirs = earlier.tokens.array
            if hi <= best_n or theirs[:bs].tobytes() != tokens[:bs].tobytes():  # first block: a 64-byte compare
                continue
            n = shared_prefix_blocks(theirs[: hi * bs], tokens[: hi * bs], bs)
            if n > best_n:
                best, best_n = earlier, n
        if best is None or best.kv_run is None:
            return
        request.reuse_run = (best.kv_run[0][:best_n], best.kv_run[1][:best_n])
        hashes = request.block_hashes
        if len(hashes) < best_n:
            hashes.extend(best.block_hashes[len(hashes) : best_n])

    def match(self, request: Request) -> npt.NDArray[np.int64]:
        """The confirmed run of cached blocks for ``request``'s prompt.

        A session's next turn first takes over what is still cached of the
        previous turn's blocks for the part of its prompt that repeats it (no
        look-up, no token compare: see :meth:`BlockPool.still_cached_run`); the
        index is searched only past that part.
        """
        pool = self._pool
        tokens = request.tokens.array
        hint = request.reuse_run
        if hint is None:
            hint = self._late_session_hint(request)
        if hint is not None:
            k = pool.still_cached_run(*hint)
            if k:
                run = hint[0][:k]
                rest = pool.match_run_after(request.block_hashes[k:], tokens[k * self._bs :], int(run[-1]))
                return np.concatenate((run, rest)) if len(rest) else run
        return pool.match_run(request.block_hashes, tokens, self.root(request.cache_salt)[1])

    def _late_session_hint(self, request: Request) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None:
        """The session's previous turn, if it finished after ``request`` was submitted: what hash_prompt would
        have taken over from it (its blocks for the part the prompt repeats), or None.

        A session's next turn may arrive while the previous one still runs;
        by the time it is matched the previous turn may have finished, and one
        memory compare then saves walking the index for thousands of blocks.
        """
        previous = self._previous_turn(request)
        if previous is None or previous.kv_run is None:
            return None  # no finished turn before it, or one that kept no blocks
        shared = shared_prefix_blocks(previous.tokens.array, request.tokens.array, self._bs)
        self._take_over_run(request, previous, shared)
        return request.reuse_run

    def _previous_turn(self, request: Request) -> Request | None:
        """The latest finished turn of ``request``'s session, under the same salt (else no KV is shared), or None."""
        sid = request.session_id
        previous = self._sessions.get(sid) if sid is not None else None
        return previous if previous is not None and previous.cache_salt == request.cache_salt else None

    @staticmethod
    def _take_over_run(request: Request, previous: Request, shared: int) -> None:
        """``request`` repeats ``previous``'s first ``shared`` blocks: it remembers the blocks that held them."""
        if previous.kv_run is not None and shared:
            blocks, generations = previous.kv_run
            request.reuse_run = (blocks[:shared], generations[:shared])

    def remember_match(self, request: Request, run: Sequence[int] | npt.NDArray[np.int64]) -> None:
        """``run`` holds ``request``'s leading blocks now: its next :meth:`match` confirms them by generation.

        For a request that could not be admitted yet (``run``: what :meth:`match`
        just found) or that is preempted (its committed blocks), so its next try
        neither looks its prompt up block by block nor compares its tokens
        again: a block that is still cached and not handed out since (its
        generation unchanged) still holds the same content after the same
        prefix, and is still the copy the index maps its hash to. An empty run
        leaves whatever the request remembers as it is.
        """
        if len(run):
            blocks = np.asarray(run, dtype=np.int64)
            request.reuse_run = (blocks, self._pool.generations(blocks))

    def remember_run(
        self, request: Request, state: Prefilling | Decoding, table: npt.NDArray[np.int64] | None = None
    ) -> None:
        """``request`` is finishing while holding ``state``'s blocks: keep what a later request may take over.

        ``table``, if given, is ``state.blocks`` as a read-only int64 array
        that the caller made for the release as well: the run kept is a view
        of it, so a 2k-block table is converted from a list once per finish
        rather than three times (the run, its generations, the release).
        """
        long_run = state.num_committed >= MIN_REUSE_BLOCKS
        if long_run or (request.session_id is not None and state.num_committed):
            if table is None:
                blocks = np.array(state.blocks[: state.num_committed], dtype=np.int64)
            else:
                blocks = table[: state.num_committed]
            request.kv_run = (blocks, self._pool.generations(blocks))
            if long_run:
                self._recent_runs.append(request)

    def remember_turn(self, request: Request) -> None:
        """``request`` finished a turn of its session: the session's next turn starts from it."""
        sid = request.session_id
        if sid is None:
            return
        sessions = self._sessions
        sessions[sid] = request
        sessions.move_to_end(sid)
        if len(sessions) > self._max_sessions:
            sessions.popitem(last=False)
