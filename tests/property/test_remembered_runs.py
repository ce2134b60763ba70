"""A remembered run, confirmed by generation, is exactly what a full walk of the prefix index finds.

A request that could not be admitted, or was preempted, remembers the blocks
that held its prefix (:meth:`PromptMatcher.remember_match`), and a session's
next turn takes over its previous turn's blocks (at submission, or at its
match if the previous turn finished in between); its match keeps the leading
ones still cached and not handed out since, and walks the index only past them.
Here a tiny pool churns (blocks evicted, handed out anew and committed with
other content) under a hash with five values, and every match must equal
:meth:`BlockPool.match_run` of the whole prompt.
"""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tokensched.config import RequestSpec
from tokensched.machines.blocks import BlockPool
from tokensched.machines.prefix import BlockHasher, Tokens
from tokensched.machines.request import Decoding, Request
from tokensched.prompt_match import PromptMatcher

EXAMPLES = int(os.environ.get("TOKENSCHED_STATEFUL_EXAMPLES", "500"))
BS = 2
MAX_LEN = 16  # a session's prompts grow turn by turn; past this its next turn starts afresh
PREFIXES = ((), (1, 2, 3, 4), (1, 2, 3, 4, 5, 6), (1, 2, 1, 2, 1, 2))


class WeakHasher(BlockHasher):
    def extend(self, hashes: list[int], tokens: Tokens, root: int) -> None:
        start = len(hashes)
        super().extend(hashes, tokens, root)
        hashes[start:] = [h % 5 for h in hashes[start:]]


class Churn:
    def __init__(self, num_blocks: int) -> None:
        self.pool = BlockPool(num_blocks, BS)
        self.matcher = PromptMatcher(self.pool, WeakHasher(BS, secret=b"remembered"), 4)
        self.held: list[tuple[Request, list[int]]] = []  # admitted, holding blocks
        self.waiting: list[Request] = []  # remembered a run and let it go (blocked or preempted)
        self.seq = 0
        self.last_prompt: dict[str, list[int]] = {}  # each session's latest prompt

    def match(self, request: Request) -> list[int]:
        hint = request.reuse_run
        run = self.matcher.match(request).tolist()
        root = self.matcher.root(None)[1]
        assert run == self.pool.match_prefix(request.block_hashes, request.tokens.array, root)
        if hint is None and request.reuse_run is not None:
            event("matched from the session's previous turn, finished since the submission")
        if hint is not None:
            kept = self.pool.still_cached_run(*hint)
            event(f"matched from a remembered run ({'all' if kept == len(hint[0]) else 'part'} of it still cached)")
        return run

    def arrive(self, prompt: list[int], session: str | None, wait: bool) -> None:
        if session is not None:  # the next turn repeats the session's latest prompt
            prompt = [*self.last_prompt.get(session, []), *prompt]
            if len(prompt) > MAX_LEN:
                prompt = prompt[-MAX_LEN // 2 :]
            self.last_prompt[session] = prompt
        spec = RequestSpec(request_id=f"r{self.seq}", prompt_token_ids=prompt, max_tokens=1, session_id=session)
        request = Request.from_spec(spec, 0.0, self.seq)
        self.seq += 1
        self.matcher.hash_prompt(request)
        if wait:  # queued behind others: matched at a later try
            self.waiting.append(request)
        else:
            self.admit(request)

    def admit(self, request: Request) -> None:
        pool = self.pool
        run = self.match(request)
        bs = BS
        known = request.tokens.size
        need = -(-known // bs) - len(run)
        if need + pool.count_evictable(run) > pool.num_free:
            self.matcher.remember_match(request, run)  # blocked: it tries again later
            self.waiting.append(request)
            return
        request.reuse_run = None
        blocks = pool.share_run(np.array(run, dtype=np.int64)) + pool.allocate(need)
        full = known // bs
        if full > len(run):
            after = blocks[len(run) - 1] if run else self.matcher.root(None)[1]
            pool.commit(
                blocks[len(run) : full],
                request.block_hashes[len(run) : full],
                request.tokens.array[len(run) * bs : full * bs],
                after,
                len(run),
            )
        self.held.append((request, blocks))

    def preempt(self, which: int) -> None:
        request, blocks = self.held.pop(which % len(self.held))
        full = request.tokens.size // BS
        self.matcher.remember_match(request, blocks[:full])  # its committed blocks
        self.pool.release(blocks, None)
        self.waiting.append(request)

    def retry(self, which: int) -> None:
        self.admit(self.waiting.pop(which % len(self.waiting)))

    def finish(self, which: int, as_table: bool) -> None:
        """A request finishes; ``as_table``: as the scheduler finishes a long one, its table handed over as a
        read-only array that the remembered run is a view of and the release takes as it is."""
        request, blocks = self.held.pop(which % len(self.held))
        size = request.tokens.size
        state = Decoding(blocks, size, size, 0, size // BS)
        if not as_table:
            self.matcher.remember_run(request, state)
            self.pool.release(blocks, None)
        else:
            committed = blocks[: size // BS]
            expected = (committed, self.pool.generations(committed).tolist())
            table = np.array(blocks, dtype=np.int64)
            table.flags.writeable = False
            self.matcher.remember_run(request, state, table)
            if request.kv_run is not None:
                event("a remembered run kept as a view of the table")
                assert (request.kv_run[0].tolist(), request.kv_run[1].tolist()) == expected
            self.pool.release_table(table, None)
        self.matcher.remember_turn(request)


@settings(max_examples=max(1, EXAMPLES // 2), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(num_blocks=st.integers(6, 12), data=st.data())
def test_a_remembered_run_is_what_the_index_finds_under_churn(num_blocks: int, data: st.DataObject) -> None:
    churn = Churn(num_blocks)
    for _ in range(data.draw(st.integers(1, 40))):
        op = data.draw(st.sampled_from(("arrive", "arrive", "preempt", "retry", "retry", "finish")))
        if op == "arrive":
            session = data.draw(st.sampled_from((None, "a", "b", "c", "d", "e")))
            prefix = data.draw(st.sampled_from(PREFIXES)) if session is None else ()
            tail = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=8))
            churn.arrive([*prefix, *tail], session, data.draw(st.booleans()))
        elif op == "preempt" and churn.held:
            churn.preempt(data.draw(st.integers(0, 99)))
        elif op == "retry" and churn.waiting:
            churn.retry(data.draw(st.integers(0, 99)))
        elif op == "finish" and churn.held:
            churn.finish(data.draw(st.integers(0, 99)), data.draw(st.booleans()))
        churn.pool.check_invariants()
