"""Hand-built StepPlans for driving the torch executor without the real scheduler.

:class:`HandPlanner` is a deliberately dumb scheduler: the test says which
request runs how many tokens in each step, and it produces a valid compact
plan (new requests in full once, block-table deltas, slot mapping, placeholders
for a decode whose previous token is still in flight, drafts). Block ids come
from a shuffled free list, so tables are scattered and out of order.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from tokensched.config import GREEDY, SamplingParams
from tokensched.plan import PLACEHOLDER_TOKEN, NewRequestData, StepPlan, StepResult


@attrs.define
class HandRequest:
    request_id: str
    tokens: list[int]  # prompt then every output applied so far
    num_prompt: int
    sampling: SamplingParams
    blocks: list[int] = attrs.field(factory=list)
    num_scheduled: int = 0  # positions whose KV has been planned
    num_cached: int = 0
    send_full: bool = True
    in_flight: int = 0  # planned samples whose token is not applied yet


class HandPlanner:
    def __init__(self, num_blocks: int, block_size: int, *, seed: int = 0) -> None:
        self.block_size = block_size
        self.rng = random.Random(seed)
        self.free = list(range(num_blocks))
        self.rng.shuffle(self.free)
        self.refs: dict[int, int] = {}
        self.requests: dict[str, HandRequest] = {}
        self.step_id = 0
        self._removed: list[str] = []

    # -- request lifecycle -------------------------------------------------------------------
    def add(
        self,
        request_id: str,
        prompt: Sequence[int],
        sampling: SamplingParams = GREEDY,
        *,
        share_from: str | None = None,
        shared_blocks: int = 0,
        cached_blocks: Sequence[int] = (),
    ) -> HandRequest:
        """A new request, optionally a prefix-cache hit.

        ``share_from`` reuses a live request's first ``shared_blocks`` blocks;
        ``cached_blocks`` are blocks kept from a finished one (the caller vouches
        that they hold this prompt's first tokens).
        """
        req = HandRequest(request_id, list(prompt), len(prompt), sampling)
        if share_from is not None and shared_blocks:
            donor = self.requests[share_from]
            n = shared_blocks * self.block_size
            assert donor.tokens[:n] == req.tokens[:n], "shared blocks must hold the same tokens"
            assert donor.num_scheduled >= n
            cached_blocks = donor.blocks[:shared_blocks]
        if cached_blocks:
            assert len(cached_blocks) * self.block_size < len(prompt), "the last prompt token must be computed"
            req.blocks = list(cached_blocks)
            for b in req.blocks:
                self.refs[b] += 1
            req.num_scheduled = req.num_cached = len(cached_blocks) * self.block_size
        self.requests[request_id] = req
        return req

    def finish(self, request_id: str, *, keep_blocks: bool = False) -> None:
        """Drop a request; with ``keep_blocks`` its blocks stay allocated (a prefix cache keeping them)."""
        req = self.requests.pop(request_id)
        self._removed.append(request_id)
        if not keep_blocks:
            self._release(req.blocks)

    def preempt(self, request_id: str) -> None:
        """Free a request's blocks; it is resent in full (prompt + outputs) and recomputed."""
        req = self.requests[request_id]
        assert req.in_flight == 0
        self._removed.append(request_id)
        self._release(req.blocks)
        req.blocks, req.num_scheduled, req.num_cached, req.send_full = [], 0, 0, True

    def _release(self, blocks: Sequence[int]) -> None:
        for b in blocks:
            self.refs[b] -= 1
            if self.refs[b] == 0:
                del self.refs[b]
                self.free.insert(self.rng.randrange(len(self.free) + 1), b)

    # -- plans ---------------------------------------------------------------------------
    def remaining(self, request_id: str) -> int:
        req = self.requests[request_id]
        return len(req.tokens) + req.in_flight - req.num_scheduled

    def plan(self, chunks: Mapping[str, int], drafts: Mapping[str, Sequence[int]] | None = None) -> StepPlan:
        """One step running ``chunks[rid]`` tokens of each request (a decode is 1, plus its drafts)."""
        drafts = drafts or {}
        new_requests: list[NewRequestData] = []
        cols: dict[str, list[Any]] = {
            k: [] for k in ("ids", "computed", "tokens", "slots", "new_blocks", "sample", "drafts")
        }
        offsets = [0]
        bs = self.block_size
        for rid, n in chunks.items():
            req = self.requests[rid]
            draft = tuple(drafts.get(rid, ()))
            start = req.num_scheduled
            known = len(req.tokens)
            if start < known:
                assert not draft or start + n - len(draft) == known, "drafts follow the last known token"
                real = min(n - len(draft), known - start)
                chunk = req.tokens[start : start + real] + list(draft)
                assert len(chunk) == n
            else:  # the previous step's sample is still in flight
                assert req.in_flight == 1 and start == known and n == 1 + len(draft)
                chunk = [PLACEHOLDER_TOKEN, *draft]
            needed = -(-(start + n) // bs)
            fresh = [self.free.pop() for _ in range(needed - len(req.blocks))]
            for b in fresh:
                self.refs[b] = 1
            req.blocks.extend(fresh)
            sample = start + n - len(draft) >= known + req.in_flight
            if req.send_full:
                new_requests.append(
                    NewRequestData(
                        request_id=rid,
                        token_ids=list(req.tokens),
                        block_ids=tuple(req.blocks),
                        num_cached_tokens=req.num_cached,
                        num_output_tokens=len(req.tokens) - req.num_prompt,
                        sampling=req.sampling,
                    )
                )
                req.send_full = False
                fresh = []
            cols["ids"].append(rid)
            cols["computed"].append(start)
            cols["tokens"].extend(chunk)
            cols["slots"].extend(req.blocks[p // bs] * bs + p % bs for p in range(start, start + n))
            cols["new_blocks"].append(tuple(fresh))
            cols["sample"].append(sample)
            cols["drafts"].append(draft)
            offsets.append(offsets[-1] + n)
            # Drafts hold KV slots now; what verification rejects is overwritten by later steps.
            req.num_scheduled = start + n - len(draft)
            if sample:
                req.in_flight += 1
        plan = StepPlan(
            step_id=self.step_id,
            block_size=bs,
            new_requests=tuple(new_requests),
            removed_request_ids=tuple(self._removed),
            request_ids=cols["ids"],
            num_computed_tokens=cols["computed"],
            token_offsets=offsets,
            token_ids=cols["tokens"],
            slot_mapping=cols["slots"],
            new_block_ids=cols["new_blocks"],
            sample=cols["sample"],
            draft_token_ids=cols["drafts"],
        )
        self.step_id += 1
        self._removed = []
        return plan

    def apply(self, plan: StepPlan, result: StepResult) -> None:
        """Append each request's sampled tokens (accepted drafts + one more)."""
        for i, rid in enumerate(plan.request_ids):
            sampled = result.sampled_token_ids[i]
            req = self.requests.get(rid)
            if not plan.sample[i] or req is None:
                continue
            req.in_flight -= 1
            req.tokens.extend(sampled)
            # Accepted drafts had their KV computed in this step.
            req.num_scheduled += len(sampled) - 1
