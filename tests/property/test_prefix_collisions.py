"""Hash to find, compare to confirm: a deliberately weak hash never makes the scheduler share the wrong KV.

Every block hashes to one of three values (and every ``cache_salt`` to the
same root), so the prefix index proposes wrong candidates constantly. Random
traffic runs through the real Scheduler and the FakeExecutor, which records
which (request, position) last wrote each KV slot; whenever a plan serves a
request from the prefix cache, every cached position must have been written
by a request with the same salt and exactly the same tokens up to and
including that position.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from unittest.mock import patch

import numpy as np
import numpy.typing as npt
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tokensched import prompt_match as prompt_match_module
from tokensched.config import RequestSpec, SchedulerConfig
from tokensched.errors import CapacityError, InvalidRequest
from tokensched.machines.prefix import BlockHasher, Tokens
from tokensched.machines.request import Request
from tokensched.plan import StepPlan
from tokensched.policies import PrefixAwarePolicy
from tokensched.scheduler import Scheduler
from tokensched.testing.fake_executor import FakeExecutor
from tokensched.testing.strategies import EOS, VOCAB, prompts, scheduler_configs

EXAMPLES = int(os.environ.get("TOKENSCHED_STATEFUL_EXAMPLES", "500"))
SALTS = (None, "tenant-a", "tenant-b")


class WeakHasher(BlockHasher):
    """Collides all the time: three hash values in all, and one root for every salt."""

    def root(self, salt: str | None) -> int:
        return 7

    def extend(self, hashes: list[int], tokens: Tokens, root: int) -> None:
        start = len(hashes)
        super().extend(hashes, tokens, root)
        hashes[start:] = [h % 3 for h in hashes[start:]]

    def next_hashes(self, parents: Sequence[int], blocks: npt.NDArray[np.int32]) -> list[int]:
        return [h % 3 for h in super().next_hashes(parents, blocks)]


@st.composite
def traffic(draw: st.DrawFn) -> list[tuple[list[int], str | None, int, str | None]]:
    """(prompt, cache_salt, max_tokens, session_id) per request."""
    return draw(
        st.lists(
            st.tuples(
                prompts(),
                st.sampled_from(SALTS),
                st.integers(1, 8),
                st.none() | st.sampled_from(["s1", "s2"]),
            ),
            min_size=1,
            max_size=12,
        )
    )


def check_cached_prefixes(
    plan: StepPlan, executor: FakeExecutor, history: dict[str, list[int]], salt: dict[str, str | None]
) -> None:
    bs = plan.block_size
    for new in plan.new_requests:
        tokens = list(new.token_ids)
        for p in range(new.num_cached_tokens):
            slot = new.block_ids[p // bs] * bs + p % bs
            writer, position = executor.slot_owner[slot]
            assert position == p, f"{new.request_id}: cached position {p} holds position {position} of {writer}"
            assert salt[writer] == salt[new.request_id], f"{new.request_id} shares KV across salts with {writer}"
            assert history[writer][: p + 1] == tokens[: p + 1], (
                f"{new.request_id}: cached position {p} was computed after other tokens (by {writer})"
            )
        if new.num_cached_tokens:
            event("served from the prefix cache")


# Cached traffic under the weak hash: the two tests below draw the same examples (the second remembers more runs).
weak_hash_traffic = given(
    config=scheduler_configs(speculative=False).map(lambda c: c.model_copy(update={"enable_prefix_caching": True})),
    requests=traffic(),
    seed=st.integers(0, 2**16),
    arrivals=st.lists(st.integers(0, 3), min_size=12, max_size=12),
    prefix_aware=st.booleans(),
)


@settings(
    max_examples=max(1, EXAMPLES // 5),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@weak_hash_traffic
def test_weak_hash_never_shares_the_wrong_kv(
    config: SchedulerConfig,
    requests: list[tuple[list[int], str | None, int, str | None]],
    seed: int,
    arrivals: list[int],
    prefix_aware: bool,
) -> None:
    """Also with PrefixAware: its cached-prefix keys stay exact (checked by the invariants) when hashes repeat."""
    run_traffic(config, requests, seed, arrivals, prefix_aware)


@settings(
    max_examples=max(1, EXAMPLES // 10),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@weak_hash_traffic
def test_weak_hash_never_makes_a_recent_run_share_the_wrong_kv(
    config: SchedulerConfig,
    requests: list[tuple[list[int], str | None, int, str | None]],
    seed: int,
    arrivals: list[int],
    prefix_aware: bool,
) -> None:
    """The same with every finished request remembered as a recent run (a hash match proposes it, tokens decide)."""
    with patch.object(prompt_match_module, "MIN_REUSE_BLOCKS", 1):
        run_traffic(config, requests, seed, arrivals, prefix_aware)


@settings(
    max_examples=max(1, EXAMPLES // 5),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(
    # Tight pools: admissions wait, requests are preempted, and their remembered blocks are evicted and handed
    # out anew (committed with other content) before they try again.
    config=scheduler_configs(max_blocks=14, speculative=False).map(
        lambda c: c.model_copy(update={"enable_prefix_caching": True, "num_blocks": min(c.num_blocks, 12)})
    ),
    requests=traffic(),
    seed=st.integers(0, 2**16),
    arrivals=st.lists(st.integers(0, 3), min_size=12, max_size=12),
    prefix_aware=st.booleans(),
)
def test_a_remembered_run_matches_what_the_index_finds(
    config: SchedulerConfig,
    requests: list[tuple[list[int], str | None, int, str | None]],
    seed: int,
    arrivals: list[int],
    prefix_aware: bool,
) -> None:
    """Every match that starts from a remembered run (a session's previous turn, a recent long run, the run a
    blocked request found, a preempted request's own blocks) returns exactly the run a full walk of the index
    finds now, under colliding hashes."""
    full_walk = prompt_match_module.PromptMatcher.match

    def checked(matcher: prompt_match_module.PromptMatcher, request: Request) -> npt.NDArray[np.int64]:
        run = full_walk(matcher, request)
        root = matcher.root(request.cache_salt)[1]
        assert run.tolist() == matcher._pool.match_prefix(request.block_hashes, request.tokens.array, root)
        if request.reuse_run is not None:  # remembered before, or taken from the session's turn just now
            event("a match from a remembered run" + (" (preempted)" if request.num_preemptions else ""))
        return run

    with patch.object(prompt_match_module.PromptMatcher, "match", checked):
        run_traffic(config, requests, seed, arrivals, prefix_aware)


def run_traffic(
    config: SchedulerConfig,
    requests: list[tuple[list[int], str | None, int, str | None]],
    seed: int,
    arrivals: list[int],
    prefix_aware: bool,
) -> None:
    executor = FakeExecutor(config.num_blocks, config.block_size, seed=seed, vocab_size=VOCAB, eos_token_id=EOS)
    policy = PrefixAwarePolicy() if prefix_aware else None
    hasher = WeakHasher(config.block_size, secret=b"weak")
    scheduler = Scheduler(config, policy=policy, clock=executor.now, hasher=hasher)
    history: dict[str, list[int]] = {}
    salt: dict[str, str | None] = {}
    pending = list(enumerate(requests))
    for _ in range(2000):
        arriving = arrivals[len(pending) % len(arrivals)] if scheduler.has_work else 1
        for _ in range(arriving):
            if not pending:
                break
            k, (prompt, cache_salt, max_tokens, session) = pending.pop(0)
            rid = f"r{k}"
            spec = RequestSpec(
                request_id=rid,
                prompt_token_ids=prompt,
                max_tokens=max_tokens,
                eos_token_id=EOS,
                cache_salt=cache_salt,
                session_id=session,
            )
            try:
                scheduler.submit(spec)
            except (InvalidRequest, CapacityError):
                continue
            history[rid] = list(prompt)
            salt[rid] = cache_salt
        plan = scheduler.plan()
        if plan is not None:
            check_cached_prefixes(plan, executor, history, salt)
            executor.launch(plan)
        elif not len(scheduler.steps):
            if not pending and not scheduler.has_work:
                break
            continue
        if plan is not None and len(scheduler.steps) < config.max_steps_in_flight:
            continue  # keep steps in flight: results arrive later, as with overlap
        result = executor.collect()
        for out in scheduler.complete(result):
            history[out.request_id].extend(out.new_token_ids)
        scheduler.check_invariants()
    assert not pending and not scheduler.has_work, "the traffic did not drain"
