"""The scheduler: continuous batching with chunked prefill, prefix caching, preemption and overlap.

One step, as :meth:`Scheduler.plan` builds it, under a token budget:

1. Every running request gets its next tokens, oldest admission first: a
   decode gets one position (plus its drafts), a prefill the next chunk the
   budget leaves. Decodes are never held back for a prefill, so a 200k-token
   prompt streams in chunks while decodes keep running.
2. When blocks run short, the running set is served best-ranked first by
   the policy's victim key; a request that needs a block when none is free
   preempts requests ranked below it, the worst first, for recompute. It
   never preempts itself: with nobody below it left, it waits for the steps
   in flight.
3. If no running request was preempted or starved, waiting requests are admitted in policy order,
   each served from the prefix cache as far as its chained block hashes match.

:meth:`Scheduler.complete` applies a step's result: positions become computed,
full blocks are committed to the prefix cache, sampled tokens are appended and
checked against the stop conditions, and the blocks of finished requests are
released, held PENDING while a later step in flight may touch them. Every
public method validates before it changes anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import attrs
import numpy as np
import numpy.typing as npt

from tokensched import columnar_steps, decode_rows, plan_rows, run_steps
from tokensched.config import RequestSpec, SchedulerConfig, StepFailurePolicy
from tokensched.decode_columns import DecodeColumns
from tokensched.decode_run import DecodeRun, RunResult
from tokensched.errors import CapacityError, InvalidRequest, QueueFull, UnknownRequest
from tokensched.host_kv import NO_SLOTS, HostKV, LoadCost
from tokensched.invariants import check_scheduler
from tokensched.machines.blocks import NO_RUN, BlockPool, BlockPoolListener
from tokensched.machines.eviction import PinnedEviction, make_eviction
from tokensched.machines.prefix import BlockHasher
from tokensched.machines.request import (
    Decoding,
    Finished,
    Preempted,
    Prefilling,
    Request,
    held_blocks,
    prompt_array,
    transition,
)
from tokensched.machines.step import Step, StepTracker
from tokensched.plan import (
    NO_BLOCKS,
    NO_DRAFTS,
    FinishReason,
    NewRequestData,
    OutputBatch,
    RequestEvent,
    RequestOutput,
    StepPlan,
    StepResult,
)
from tokensched.policies.base import KeyDependence, Policy, PolicyContext, key_dependence
from tokensched.policies.fcfs import FCFSPolicy
from tokensched.prefix_keys import PrefixKeys
from tokensched.prompt_match import PromptMatcher
from tokensched.queue import WaitingQueue
from tokensched.retention import MAX_PASSED_OVER, SessionRetention
from tokensched.stats import SchedulerStats
from tokensched.step_builder import StepBuilder
from tokensched.validation import validate_result
from tokensched.views import PlanOutcome, RequestView


class Scheduler:
    """Owns every machine and is the only thing that moves them; never waits on a device."""

    #: A request admitted with a matched run of at least this many blocks keeps that run as an array (the head
    #: of its table at its finish). The reference, tables converted whole at the finish: ``sys.maxsize``.
    head_runs_from: int = 16

    def __init__(
        self,
        config: SchedulerConfig,
        policy: Policy | None = None,
        clock: Callable[[], float] | None = None,
        *,
        hasher: BlockHasher | None = None,
        listener: BlockPoolListener | None = None,
        fast_decode: bool = True,
        load_cost: LoadCost | None = None,
    ) -> None:
        self.config = config
        self.policy: Policy = policy if policy is not None else FCFSPolicy()
        self.clock: Callable[[], float] = clock if clock is not None else time.monotonic
        eviction = make_eviction(config.prefix_eviction, config.pinned_prefix_blocks)
        self.pool = BlockPool(config.num_blocks, config.block_size, listener, eviction)
        self.hasher = hasher if hasher is not None else BlockHasher(config.block_size)
        self.host = HostKV(config, self.pool, load_cost) if config.host_kv_blocks else None
        self.matcher = PromptMatcher(self.pool, self.hasher, config.max_remembered_sessions)
        self.steps = StepTracker(config.max_steps_in_flight)
        self._live: dict[str, Request] = {}
        dependence = self._key_dependence = key_dependence(self.policy)
        self.waiting = WaitingQueue(dependence)
        # A dynamic policy reads each waiting request's cached prefix from here, kept exact from the pool's
        # events; one keyed on the cached prefix only is also re-keyed from here, request by request.
        self._prefix_keys: PrefixKeys | None = None
        if dependence is not KeyDependence.STATIC and config.enable_prefix_caching:
            self._prefix_keys = PrefixKeys(
                self.pool,
                self.waiting,
                self.policy,
                self.clock,
                rekey=dependence is KeyDependence.CACHED_PREFIX,
            )
            self.pool.add_listener(self._prefix_keys)
            self.waiting.on_read(self._prefix_keys.flush)
        self._running: dict[str, Request] = {}
        self._removed: list[str] = []
        self._truncated: dict[str, int] = {}
        # The matched run each running request was admitted with (its table's head, int64, a copy of its own),
        # kept when that run is long: at its finish the table's array is that head plus the blocks after it,
        # so only the blocks added since admission go through a list->array conversion (see _finish).
        self._head_runs: dict[str, npt.NDArray[np.int64]] = {}
        self._seq = 0
        self._bs = config.block_size
        self._caching = config.enable_prefix_caching
        self._chunk = config.long_prefill_chunk or config.max_batched_tokens
        self._k_spec = config.num_speculative_tokens
        reserve = config.admission_reserve
        self._admit_reserve = max(1, int(config.num_blocks * reserve)) if reserve > 0 else 0
        self._events: list[RequestOutput] = []  # preemptions in plan(), told with the next complete() or fail()
        self.last_plan_outcome = PlanOutcome.IDLE
        retention_s = config.session_kv_retention_s
        self._retention = (
            SessionRetention(retention_s, self.pool)
            if retention_s is not None and config.enable_prefix_caching
            else None
        )
        self._hit_tokens = 0
        self._query_tokens = 0
        self._preemptions = 0
        self._finished = 0
        self._aborted = 0
        self._failed_steps = 0
        # The columnar decode path and the decode-row lanes (False: every row through the per-request code,
        # the reference the property tests compare them with).
        self._fast = fast_decode
        # The columnar path never plans a speculative step or one with a host tier: not asked then.
        self._columnar = fast_decode and not self._k_spec and self.host is None
        self._cols: DecodeColumns | None = None
        self._run: tuple[DecodeRun, list[Request]] | None = None  # a decode run out (plan_run .. complete_run)

    @property
    def live(self) -> dict[str, Request]:
        """Every live request by id (waiting or running); read-only by convention."""
        self._materialize()
        return self._live

    @property
    def running(self) -> dict[str, Request]:
        """The running set by id, in admission order; read-only by convention."""
        self._materialize()
        return self._running

    def _materialize(self) -> None:
        """Write the decode columns back into the requests and drop them (before anything reads or moves one)."""
        cols = self._cols
        if cols is not None:
            cols.flush_all()
            self._cols = None

    @property
    def has_work(self) -> bool:
        return bool(self._live) or len(self.steps) > 0 or self._run is not None

    # ================================================================ intake
    def submit(self, spec: RequestSpec) -> None:
        """Queue a request. Raises InvalidRequest, CapacityError or QueueFull, and then changes nothing."""
        cfg = self.config
        rid = spec.request_id
        if rid in self._live:
            raise InvalidRequest(f"request {rid!r}: a live request already has this id")
        prompt_len = len(spec.prompt_token_ids)
        if prompt_len + spec.max_tokens > cfg.max_model_len:
            raise InvalidRequest(
                f"request {rid!r}: prompt ({prompt_len} tokens) + max_tokens ({spec.max_tokens}) "
                f"exceeds max_model_len ({cfg.max_model_len})"
            )
        # Drafts are capped at the room left, so no position past prompt + max_tokens - 2 is ever written.
        worst = -(-(prompt_len + spec.max_tokens - 1) // self._bs)
        if worst > cfg.num_blocks:
            raise CapacityError(
                f"request {rid!r} needs up to {worst} KV blocks but the pool has {cfg.num_blocks}: it can never fit"
            )
        if cfg.vocab_size is not None:
            self._check_vocab(spec, cfg.vocab_size)
        if cfg.max_waiting is not None and len(self.waiting) >= cfg.max_waiting:
            raise QueueFull(f"request {rid!r}: {len(self.waiting)} requests are waiting (max_waiting)")
        arrival = spec.arrival_time if spec.arrival_time is not None else self.clock()
        request = Request.from_spec(spec, arrival, self._seq)
        self._seq += 1
        if self._caching:
            self.matcher.hash_prompt(request)
        self._live[rid] = request
        self._enqueue(request)

    @staticmethod
    def _check_vocab(spec: RequestSpec, vocab: int) -> None:
        """Raise InvalidRequest naming the first token id of ``spec`` at or above ``vocab`` (one vectorised max)."""
        prompt = prompt_array(spec.prompt_token_ids)
        if int(prompt.max()) >= vocab:
            bad = int(np.argmax(prompt >= vocab))
            raise InvalidRequest(
                f"request {spec.request_id!r}: prompt position {bad} holds token id {int(prompt[bad])}, "
                f"not below vocab_size ({vocab})"
            )
        special = [*sorted(spec.stop_token_ids), *([] if spec.eos_token_id is None else [spec.eos_token_id])]
        if special and max(special) >= vocab:
            raise InvalidRequest(
                f"request {spec.request_id!r}: stop/eos token id {max(special)} is not below vocab_size ({vocab})"
            )

    def _enqueue(self, request: Request) -> None:
        keys = self._prefix_keys
        key = keys.add(request) if keys is not None else self.policy.admission_key(request, self.policy_context())
        self.waiting.push(request, key)

    def _dequeue(self, index: int) -> Request:
        request = self.waiting.pop_at(index)
        if self._prefix_keys is not None:
            self._prefix_keys.discard(request)
        return request

    def policy_context(self) -> PolicyContext:
        """What the policy sees now, computed afresh (to check its keys from outside, as ``tokensched.testing`` does).

        ``cached_prefix_tokens`` walks the request's chain through the prefix
        index (the leading blocks it holds, PENDING ones included: they are
        shareable once the step in flight completes). The scheduler itself
        reads the same number for a waiting request from :class:`PrefixKeys`,
        in O(1).
        """
        return PolicyContext(now=self.clock(), block_size=self._bs, cached_prefix_tokens=self._cached_tokens)

    def _cached_tokens(self, request: Request) -> int:
        """Tokens of ``request``'s prefix the index holds: the leading run of its block hashes found there."""
        return self.pool.indexed_run(request.block_hashes) * self._bs

    def abort(self, request_id: str) -> RequestOutput:
        """Finish a live request with reason ABORT; its blocks go back (held while a step may use them)."""
        request = self._live.get(request_id)
        if request is None:
            raise UnknownRequest(f"request {request_id!r} is not live (never submitted, or already finished)")
        if self._run is not None:
            raise InvalidRequest(f"abort {request_id!r}: a decode run is out; complete_run() it first")
        self._materialize()
        state = request.state
        if type(state) is Prefilling or type(state) is Decoding:
            self._finish(request, FinishReason.ABORT, "abort")
        else:
            keys = self._prefix_keys
            if keys is not None:
                self.waiting.remove(request, keys.key_of(request))
                keys.discard(request)
            else:
                self.waiting.remove(request)
            self._retire(request, FinishReason.ABORT, "abort")
        self._aborted += 1
        return RequestOutput(request_id, [], FinishReason.ABORT, None, request.num_output_tokens)

    # ============================================================== planning
    def plan(self) -> StepPlan | None:
        """The next step, or None when nothing can run now; :attr:`last_plan_outcome` says which case."""
        if self.steps.full or self._run is not None:
            self.last_plan_outcome = PlanOutcome.WINDOW_FULL
            return None
        if not (self._running or self.waiting):
            self.last_plan_outcome = PlanOutcome.IDLE
            return None
        if self._columnar:
            fast = columnar_steps.plan_fast(self)
            if fast is not None:
                self.last_plan_outcome = PlanOutcome.PLANNED
                return fast
        self._materialize()
        builder = StepBuilder(self.steps.next_step_id, self._bs)
        host = self.host
        if host is not None:
            host.begin(builder.step_id)
        budget, preempted = self._schedule_running(builder)
        if not preempted and budget > 0 and self.waiting:
            self._admit_waiting(builder, budget)
        if not builder:
            self.last_plan_outcome = PlanOutcome.BLOCKED
            return None
        self.last_plan_outcome = PlanOutcome.PLANNED
        self.steps.open(builder.step())
        removed = tuple(self._removed)
        self._removed.clear()
        truncated, self._truncated = self._truncated, {}
        plan = builder.plan(removed, truncated)
        if host is not None:
            host.write_back(self.pool.num_free - len(self._running) - self._admit_reserve)  # room for decodes
            transfers = host.take_transfers()
            if transfers:
                plan = attrs.evolve(plan, kv_transfers=transfers)
        return plan

    def _schedule_running(self, builder: StepBuilder) -> tuple[int, bool]:
        """Give every running request its next tokens; returns the budget left and whether admission must wait.

        When the free blocks cannot run short in this step (each request needs
        at most ``ceil(n / block_size)`` new blocks for its ``n`` tokens), the
        running set is served in admission order without sorting. Otherwise it
        is served best-ranked first by the policy's victim key, so a request
        that runs short may preempt exactly the requests ranked below it, the
        worst first (see :meth:`_make_room`). Once a request is starved of
        blocks, no request ranked below it takes one in this step, and
        admission waits too. :func:`tokensched.plan_rows.schedule_running` is the same
        loop with a decode row's columns appended in place (``fast_decode``).
        """
        if self._fast:
            return plan_rows.schedule_running(self, builder)
        bs = self._bs
        pool = self.pool
        budget = self.config.max_batched_tokens
        chunk_cap = self._chunk
        k_spec = self._k_spec
        running = self._running
        add = builder.add
        if pool.num_free >= -(-budget // bs) + len(running):
            order = list(running.values())
        else:
            ctx = self.policy_context()
            victim_key = self.policy.victim_key
            order = sorted(running.values(), key=lambda r: victim_key(r, ctx))
        starved = False
        preempted = False
        for index, request in enumerate(order):
            if budget <= 0:
                break
            state = request.state
            if type(state) is not Prefilling and type(state) is not Decoding:
                continue  # preempted earlier in this loop
            if k_spec and request.inflight_steps:
                continue  # its drafts come with the result still in flight
            pos = state.num_scheduled
            known = request.tokens.size
            room = request.max_tokens - (known - request.num_prompt_tokens) - request.inflight_samples
            drafts = NO_DRAFTS
            chunk = pos < known - 1 or (pos == known - 1 and type(state) is Prefilling)
            if chunk:
                n = min(known - pos, budget, chunk_cap)  # a prefill chunk (prompt, or recompute)
                is_sample = pos + n == known
            else:
                n = 1  # a decode; its input is a placeholder while the previous step is in flight
                is_sample = True
                if k_spec and request.draft_tokens:
                    drafts = tuple(request.draft_tokens[: min(k_spec, room - 1, budget - 1)])
                    n += len(drafts)
            if is_sample and room <= 0:
                continue  # max_tokens reached by steps in flight
            blocks = state.blocks
            need = (pos + n + bs - 1) // bs - len(blocks)
            if need > 0 and (starved or pool.num_free < need):
                if starved:
                    continue  # a better-ranked request waits for blocks: do not take them from under it
                before = self._preemptions
                served = self._make_room(need, order, index)
                preempted = preempted or self._preemptions != before
                if not served:
                    starved = True
                    continue
            if need == 1:
                new_blocks: tuple[int, ...] = (pool.allocate_one(),)
                blocks.append(new_blocks[0])
            elif need > 1:
                new_blocks = tuple(pool.allocate(need))
                blocks.extend(new_blocks)
            else:
                new_blocks = NO_BLOCKS
            add(request, blocks, pos, n, new_blocks, is_sample, drafts)
            state.num_scheduled = pos + n
            budget -= n
        return budget, preempted or starved

    def _make_room(self, need: int, order: list[Request], index: int) -> bool:
        """Preempt requests ranked below ``order[index]``, the worst first, until ``need`` blocks are free.

        ``order`` is the running set best-ranked first, and ``order[index]``
        is the requester; everything after it ranks below it and is not yet
        in this step. The requester never preempts itself (nor anyone ranked
        above it). A victim in a step in flight frees its blocks only when
        that step completes (they go PENDING): once the free blocks plus those
        pending would do, or nobody ranked below is left, the requester waits
        for the steps in flight, and the method returns False.
        """
        pool = self.pool
        running = self._running
        for victim in reversed(order[index + 1 :]):
            if pool.num_free >= need:
                return True
            if pool.num_free + pool.num_pending >= need:
                return False  # the steps in flight give back enough
            if victim.request_id in running:
                self._preempt(victim)
        return pool.num_free >= need

    def _admit_waiting(self, builder: StepBuilder, budget: int) -> None:
        """Admit waiting requests in policy order while budget, slots and blocks allow."""
        bs = self._bs
        pool = self.pool
        cfg = self.config
        waiting = self.waiting
        prefix_keys = self._prefix_keys
        resort = self.policy.dynamic and waiting.needs_resort()
        if self._fast and not resort and len(self._running) >= cfg.max_running:
            return  # nobody can be admitted: the cache's events wait for the next reader of the queue
        if prefix_keys is not None:
            prefix_keys.flush()  # the cache moved since the last admission: re-key whom it touched
        if resort:  # keys that may move with anything: re-sort them all
            ctx = prefix_keys.context() if prefix_keys is not None else self.policy_context()
            key = self.policy.admission_key
            waiting.resort(lambda r: key(r, ctx))
        retention = self._retention
        now = self.clock() if retention is not None else 0.0
        index = 0  # past a head held back by retention, only retained sessions' next turns may go first
        # Retained sessions' evictable tails, walked once while the pool stands still (None: not walked since
        # the last admission changed it), for each request looked at in turn.
        tails: dict[str, int] | None = None
        while index < len(waiting) and budget > 0 and len(self._running) < cfg.max_running:
            request = waiting.at(index)
            if index and (retention is None or not retention.holds(request.session_id)):
                if index >= MAX_PASSED_OVER:
                    break
                index += 1
                continue
            available = pool.num_free
            protected = 0
            if retention is not None and len(retention) and self._running:  # work-conserving: never idle for it
                if tails is None and now - request.arrival_time < retention.window_s:
                    tails = retention.tails(now)
                protected = retention.protected_from(tails, request, now)
                available -= protected
            if available <= request.blocked_at_free:
                # nothing was freed since it last did not fit: skip the 12k-block match
                if protected and index < MAX_PASSED_OVER:
                    index += 1
                    continue
                break
            tokens = request.tokens
            known = len(tokens)
            matched = self.matcher.match(request) if self._caching else NO_RUN
            run = matched[:-1] if len(matched) * bs >= known else matched  # always compute the last token
            n_matched = len(run)
            loads = (
                self.host.loadable(request.block_hashes, tokens.array, n_matched, known)
                if self.host is not None
                else NO_SLOTS
            )
            cached = (n_matched + len(loads)) * bs
            uncached_blocks = (known + bs - 1) // bs - n_matched
            revived = pool.count_evictable(run)
            n = min(known - cached, budget, self._chunk)
            need = (cached + n + bs - 1) // bs - n_matched
            if need + revived > available or (
                self._running and uncached_blocks + revived + self._admit_reserve > available
            ):
                request.blocked_at_free = available
                if len(matched):  # its next try confirms this run by generation instead of matching it again
                    self.matcher.remember_match(request, matched)
                if protected and index < MAX_PASSED_OVER:
                    index += 1  # held back by another session's retained cache: let later ones try
                    continue
                break  # the head of the line waits for room for its whole prompt
            request.blocked_at_free = -1
            self._dequeue(index)
            request.reuse_run = None
            if retention is not None:
                retention.forget(request.session_id)
            blocks = pool.share_run(run)  # a new list: the allocated blocks join it in place (no 12.5k-item copy)
            if n_matched >= self.head_runs_from:
                self._head_runs[request.request_id] = np.array(run, dtype=np.int64)  # a copy: nobody else writes it
            blocks += pool.allocate(need)
            if loads:  # the loaded blocks stay OWNED (unmatchable) until this step completes and commits them
                self.host.load(loads, blocks[n_matched : n_matched + len(loads)])  # type: ignore[union-attr]
            transition(request, "admit", Prefilling(blocks, cached, cached + n, cached, n_matched))
            self._running[request.request_id] = request
            request.num_cached_tokens = cached
            self._hit_tokens += cached
            self._query_tokens += known
            builder.new_requests.append(
                NewRequestData(
                    request_id=request.request_id,
                    token_ids=tokens.snapshot(),
                    block_ids=tuple(blocks),
                    num_cached_tokens=cached,
                    num_output_tokens=known - request.num_prompt_tokens,
                    sampling=request.sampling,
                )
            )
            is_sample = cached + n == known
            builder.add(request, blocks, cached, n, NO_BLOCKS, is_sample)
            budget -= n
            tails = None  # its blocks moved the pool (and its session's protection went)
            if prefix_keys is not None and prefix_keys.flush():
                index = 0  # its blocks evicted some of the others' cached runs: the head may have changed

    # ============================================================= results
    def complete(self, result: StepResult) -> Sequence[RequestOutput]:
        """Apply the oldest step's result; returns new tokens per request and finishes.

        The outputs are an :class:`~tokensched.plan.OutputBatch`: a sequence of
        :class:`~tokensched.plan.RequestOutput` (preemption events first, then
        one per sampling request in plan order), built when first read.
        """
        step = self.steps.oldest(result.step_id, "complete")
        cols = self._cols
        if cols is not None and cols.in_flight == step.step_id:
            fast = columnar_steps.complete_fast(self, cols, step, result)
            if fast is not None:
                return fast
        self._materialize()
        validate_result(step, result, self._k_spec)
        step.move("complete")
        now = self.clock()
        outputs = self._take_events()
        fills: list[Request] = []  # requests whose one new full block is hashed and committed in a batch below
        if self._fast:  # the common decode row without the per-row calls; the rest through _apply_row
            batch = decode_rows.apply_rows(self, step, result, now, outputs, fills)
        else:
            for i, request in enumerate(step.requests):
                if request.epoch != step.epochs[i]:
                    continue  # left the running set (finished, aborted, preempted) after this step was planned
                self._apply_row(i, request, step, result, now, outputs, fills)
            batch = OutputBatch.of(outputs)
        if fills:
            self._commit_fills(fills)
        step.move("apply")
        self.steps.close(step)
        self.pool.step_completed(step.step_id)
        if self.host is not None:
            self.host.step_completed(step.step_id)
        return batch

    def _apply_row(
        self,
        i: int,
        request: Request,
        step: Step,
        result: StepResult,
        now: float,
        outputs: list[RequestOutput],
        fills: list[Request],
    ) -> None:
        """Apply row ``i`` of ``result`` to ``request`` (still in the running set since ``step`` was planned)."""
        state = request.state
        assert type(state) is Prefilling or type(state) is Decoding
        caching = self._caching
        bs = self._bs
        request.inflight_steps -= 1
        sampled = result.sampled_token_ids[i]
        nd = step.num_drafts[i]
        if nd:
            computed = state.num_computed = state.num_computed + step.num_tokens[i] - nd + len(sampled) - 1
            state.num_scheduled = computed
            if len(state.blocks) > (computed + bs - 1) // bs:  # blocks that only held rejected drafts
                self._roll_back_blocks(request, state)
        else:
            state.num_computed += step.num_tokens[i]
        if not step.samples[i]:
            if caching:
                self._commit_full_blocks(request, state)
            return
        request.inflight_samples -= 1 + nd
        reason, kept = self._append_tokens(request, sampled)
        if caching:
            size = request.tokens.size
            committed = state.num_committed
            if reason is None and not nd and committed == len(request.block_hashes):
                if min(state.num_computed, size) // bs == committed + 1:
                    fills.append(request)  # the common case: one block filled
            else:
                if size >= (len(request.block_hashes) + 1) * bs:
                    self.matcher.extend_hashes(request)
                if min(state.num_computed, size) // bs > committed:  # else nothing to commit (the usual decode)
                    self._commit_full_blocks(request, state)
        if type(state) is Prefilling:
            decoding = Decoding(
                state.blocks, state.num_computed, state.num_scheduled, state.num_cached, state.num_committed
            )
            transition(request, "first_token", decoding)
            request.first_token_time = now
        drafts_in = result.draft_token_ids
        if drafts_in is not None and reason is None:
            request.draft_tokens = drafts_in[i][: self._k_spec]
        logprobs_in = result.logprobs
        outputs.append(
            RequestOutput(
                request.request_id,
                sampled if reason is None else sampled[:kept],
                reason,
                logprobs_in[i] if logprobs_in is not None and request.sampling.logprobs else None,
                request.num_output_tokens,
                request.num_cached_tokens,
            )
        )
        if reason is not None:
            request.finish_time = now
            self._finish(request, reason, "finish")

    # ================================================== the columnar decode path (tokensched.columnar_steps)
    def _commit_fills(self, fills: list[Request]) -> None:
        """Hash and commit the one block each of ``fills`` just filled: one vectorised hash, one token write.

        The same as :meth:`_commit_full_blocks` per request (none of them
        finished in this step, so their blocks are still OWNED by them). Their
        current state is read here: a first token replaced Prefilling by
        Decoding after the request was queued.
        """
        states: list[Prefilling | Decoding] = []
        bs = self._bs
        rows = np.empty((len(fills), bs), dtype=np.int32)
        parents: list[int] = []
        afters: list[int] = []
        blocks: list[int] = []
        for j, request in enumerate(fills):
            state = request.state
            assert type(state) is Prefilling or type(state) is Decoding
            states.append(state)
            c = state.num_committed
            rows[j] = request.tokens.array[c * bs : (c + 1) * bs]
            if c:
                parents.append(request.block_hashes[c - 1])
                afters.append(state.blocks[c - 1])
            else:
                root = self.matcher.root(request.cache_salt)
                parents.append(root[0])
                afters.append(root[1])
            blocks.append(state.blocks[c])
        hashes = self.hasher.next_hashes(parents, rows)
        self.pool.commit_each(blocks, hashes, rows, afters, [state.num_committed for state in states])
        for request, state, h in zip(fills, states, hashes, strict=True):
            request.block_hashes.append(h)
            state.num_committed += 1

    def _append_tokens(self, request: Request, sampled: list[int]) -> tuple[FinishReason | None, int]:
        """Append sampled tokens up to the first stop; returns why the request finished (if it did) and how many.

        The tokens are checked first and appended in one go: a stop id ends the
        request at that token, else the token that reaches the length limit does.
        """
        m = len(sampled)
        if not m:
            return None, 0
        tokens = request.tokens
        limit = min(request.num_prompt_tokens + request.max_tokens, self.config.max_model_len)
        room = limit - tokens.size  # the token at index room - 1 (the first, at least) reaches the limit
        end, reason = (max(room, 1), FinishReason.LENGTH) if room <= m else (m, None)
        eos = request.eos_token_id
        stop = request.stop_token_ids
        if eos is not None or stop:
            for j in range(end):
                token = sampled[j]
                if token == eos or token in stop:
                    end, reason = j + 1, FinishReason.STOP
                    break
        if end == 1:
            tokens.append(sampled[0])
        else:
            tokens.extend(sampled[:end])
        request.last_token = sampled[end - 1]
        return reason, end

    def _commit_full_blocks(self, request: Request, state: Prefilling | Decoding) -> None:
        # Accepted drafts are computed before they are appended; a stop among them ends the request.
        bs = self._bs
        full = min(state.num_computed, request.tokens.size) // bs
        committed = state.num_committed
        if committed >= full:
            return
        hashes = request.block_hashes
        if len(hashes) < full:
            self.matcher.extend_hashes(request)
        blocks = state.blocks
        after = blocks[committed - 1] if committed else self.matcher.root(request.cache_salt)[1]
        self.pool.commit(
            blocks[committed:full],
            hashes[committed:full],
            request.tokens.array[committed * bs : full * bs],
            after,
            first_depth=committed,
        )
        state.num_committed = full

    def _roll_back_blocks(self, request: Request, state: Prefilling | Decoding) -> None:
        """After speculative verification, give back blocks that only held rejected drafts."""
        keep = (state.num_computed + self._bs - 1) // self._bs
        blocks = state.blocks
        if len(blocks) > keep:
            self.pool.release(blocks[keep:], self._hold_for(request))
            del blocks[keep:]
            self._truncated[request.request_id] = keep

    # ================================================== multi-step decode runs
    def plan_run(self, max_steps: int, *, cross_blocks: bool = False, chunks: bool = False) -> DecodeRun | None:
        """A run of up to ``max_steps`` decode steps of the running set, or None (plan single steps).

        See :mod:`tokensched.decode_run`. A run is offered only when single
        steps would plan exactly it: no host tier, no admission possible
        before the run's ``admission_shut_until`` (see
        :func:`tokensched.run_steps._admission_stays_shut`), every running request a plain decode
        (its drafts allowed; a block of it may be hashed and not yet
        committed), the free blocks enough for the step it plans now (whose
        blocks it allocates now, as :meth:`plan` would), no events still to
        tell, and either nothing in flight (one group; without drafts this
        needs ``max_steps_in_flight == 1``, since the engine would otherwise
        keep several steps in flight) or, with drafts and two steps in flight,
        one step of decodes in flight, planned in admission order, and the
        other decodes waiting for it (two groups that alternate). While a run
        is out, :meth:`plan` plans nothing and :meth:`abort` refuses.

        ``cross_blocks``: the run may go on where a row needs a new block or
        fills one (see :class:`~tokensched.decode_run.DecodeRun`), when that
        cannot change what single steps would admit: nothing waits, or the
        policy's keys are static and no retention window is kept (a run only
        takes free blocks, so a head that did not fit still does not), and no
        block is pending a step in flight.

        ``chunks`` (with ``cross_blocks``): the running set may also hold one
        request still prefilling, served last, whose non-final chunks fill
        each step's budget (see :func:`tokensched.run_steps.plan_chunk_run`).
        """
        return run_steps.plan_run(self, max_steps, cross_blocks=cross_blocks, chunks=chunks)

    def complete_run(self, result: RunResult) -> list[Sequence[RequestOutput]]:
        """Apply the steps an executor completed of the run out; returns each step's outputs, in step order.

        The result is validated whole first (InvalidRequest changes nothing).
        Steps that only moved counters are applied in one pass per request,
        the rows of a step that filled, hashed or rolled back a block through
        the per-request code; a final step that finished a request goes
        through :meth:`complete`, as it would have as a single step. With two
        groups, the step after the last completed one stays open (in flight).
        """
        return run_steps.complete_run(self, result)

    def fail_run(self, error: BaseException) -> list[RequestOutput]:
        """The executor could not run the decode run out: none of its steps has a result to apply.

        Fails the steps the run held when it was handed out (the step in
        flight before it, if any, and those it planned), oldest first, as
        :meth:`fail` fails a single step: each of their requests is rolled
        back for a retry or finished with an error, per
        ``on_step_failure``. Afterwards nothing is in flight and planning
        goes on. Raises InvalidRequest when no run is out.
        """
        return run_steps.fail_run(self, error)

    def fail(self, step_id: int, error: BaseException) -> list[RequestOutput]:
        """The executor could not run ``step_id`` (the oldest in flight): retry its requests or finish them."""
        step = self.steps.oldest(step_id, "fail")
        self._materialize()
        step.move("fail")
        self._failed_steps += 1
        retry = self.config.on_step_failure is StepFailurePolicy.RETRY
        outputs = self._take_events()
        now = self.clock()
        for i, request in enumerate(step.requests):
            if request.epoch != step.epochs[i]:
                continue
            request.num_failures += 1
            request.inflight_steps -= 1  # the failed step touches nothing any more
            if retry and request.num_failures <= self.config.max_step_retries:
                self._preempt(request, RequestEvent.ROLLED_BACK)  # recompute from what the prefix cache kept
                outputs.append(self._event_output(request, RequestEvent.ROLLED_BACK))
            else:
                request.finish_time = now
                self._finish(request, FinishReason.ERROR, "finish")
                outputs.append(
                    RequestOutput(request.request_id, [], FinishReason.ERROR, None, request.num_output_tokens)
                )
        self.steps.close(step)
        self.pool.step_completed(step_id)
        if self.host is not None:
            self.host.step_failed(step_id)
        return outputs

    def _hold_for(self, request: Request) -> int | None:
        """The step that blocks ``request`` lets go must wait for: the newest in flight, if it is in one.

        Only a step that includes the request writes into its own blocks; a
        stale step that merely reads a shared block has its result discarded.
        """
        return self.steps.newest_step_id if request.inflight_steps else None

    # ================================================== leaving the running set
    def _preempt(self, request: Request, why: RequestEvent = RequestEvent.PREEMPTED) -> None:
        state = request.state
        if self._caching and (type(state) is Prefilling or type(state) is Decoding):
            self.matcher.remember_match(request, state.blocks[: state.num_committed])  # for its readmission
        self.pool.release(held_blocks(state), self._hold_for(request))
        transition(request, "preempt", Preempted())
        self._leave_running(request)
        request.num_preemptions += 1
        self._preemptions += 1  # rollbacks included, as before: both cost a recompute
        if why is RequestEvent.PREEMPTED:
            self._events.append(self._event_output(request, why))  # fail() reports its rollbacks itself
        self._enqueue(request)

    @staticmethod
    def _event_output(request: Request, event: RequestEvent) -> RequestOutput:
        return RequestOutput(
            request.request_id, [], None, None, request.num_output_tokens, request.num_cached_tokens, event
        )

    def _take_events(self) -> list[RequestOutput]:
        """Preemption events since the last complete() or fail(), dropping requests that finished since."""
        if not self._events:
            return []
        events, self._events = self._events, []
        live = self._live
        return [e for e in events if e.request_id in live]

    def _finish(self, request: Request, reason: FinishReason, event: str) -> None:
        state = request.state
        blocks = held_blocks(state)
        if len(blocks) >= self.pool.bulk_from and isinstance(state, Prefilling | Decoding):
            # A long table (1.9k blocks at the hour's median): one list->array conversion serves the run the
            # matcher keeps and the release; read-only, since that run is shared by later requests' views.
            # Its head is the run it was admitted with (a table only grows at its end while it runs, and a
            # rollback never reaches its computed head), kept as an array: only the blocks after it are
            # converted, ~20 us instead of ~160 us for a 1.9k-block table of which 1.7k were matched.
            head = self._head_runs.get(request.request_id)
            if head is None:
                table = np.array(blocks, dtype=np.int64)
            else:
                n = len(head)
                table = np.empty(len(blocks), dtype=np.int64)
                table[:n] = head
                table[n:] = blocks[n:]
            table.flags.writeable = False
            if self._caching:
                self.matcher.remember_run(request, state, table)
            self.pool.release_table(table, self._hold_for(request))
        else:
            if self._caching and isinstance(state, Prefilling | Decoding):
                self.matcher.remember_run(request, state)
            self.pool.release(blocks, self._hold_for(request))
        self._leave_running(request)
        self._retire(request, reason, event)

    def _leave_running(self, request: Request) -> None:
        del self._running[request.request_id]
        self._removed.append(request.request_id)
        self._truncated.pop(request.request_id, None)
        self._head_runs.pop(request.request_id, None)
        request.epoch += 1
        request.inflight_steps = 0
        request.inflight_samples = 0
        request.draft_tokens = []

    def _retire(self, request: Request, reason: FinishReason, event: str) -> None:
        transition(request, event, Finished(reason))
        del self._live[request.request_id]
        self._finished += 1
        sid = request.session_id
        if sid is not None and self._caching:
            if self._retention is not None and reason in (FinishReason.STOP, FinishReason.LENGTH):
                self._retention.retain(request, self.clock())
            self.matcher.remember_turn(request)

    def pin_prefix(self, token_ids: list[int]) -> int:
        """Keep the full blocks of ``token_ids`` (say a system prompt) cached; returns how many blocks are pinned.

        Needs ``prefix_eviction="pinned"``; at most ``pinned_prefix_blocks`` blocks
        are pinned in all. The blocks stay cached once a request has computed them.
        """
        evict = self.pool.eviction
        if not isinstance(evict, PinnedEviction) or not self._caching:
            raise InvalidRequest("pin_prefix needs prefix_eviction='pinned' and prefix caching on")
        salt = None  # pinned content is shared by requests without a cache_salt
        hashes: list[int] = []
        self.hasher.extend(hashes, np.asarray(token_ids, dtype=np.int32), self.matcher.root(salt)[0])
        return evict.pin(hashes)

    def take_removed(self) -> tuple[str, ...]:
        """Ids of requests that left the running set since the last plan, handed over now instead.

        They normally reach the executor in the next plan's ``removed_request_ids``;
        an executor whose scheduler went idle (``plan()`` returned None) can take
        them here to drop their state at once. The next plan will not repeat them.
        """
        removed = tuple(self._removed)
        self._removed.clear()
        return removed

    # ========================================================== inspection
    def running_requests(self) -> list[RequestView]:
        """Read-only snapshots of the running set, in the order it is served when blocks are plentiful."""
        return [RequestView.of(r) for r in self.running.values()]

    def waiting_requests(self) -> list[RequestView]:
        """Read-only snapshots of the waiting queue, in the policy's admission order (as of its latest sort)."""
        return [RequestView.of(r) for r in self.waiting]

    def request_view(self, request_id: str) -> RequestView:
        """A read-only snapshot of one live request; raises UnknownRequest."""
        return RequestView.of(self.get(request_id))

    @property
    def retained_sessions(self) -> frozenset[str]:
        """Sessions whose cache is retained for their next turn (``session_kv_retention_s``)."""
        return self._retention.sessions() if self._retention is not None else frozenset()

    def get(self, request_id: str) -> Request:
        request = self.live.get(request_id)
        if request is None:
            raise UnknownRequest(f"request {request_id!r} is not live")
        return request

    def stats(self) -> SchedulerStats:
        return SchedulerStats(
            num_running=len(self._running),
            num_waiting=len(self.waiting),
            num_steps_in_flight=len(self.steps),
            num_free_blocks=self.pool.num_free,
            num_pending_blocks=self.pool.num_pending,
            num_total_blocks=self.config.num_blocks,
            prefix_hit_tokens=self._hit_tokens,
            prefix_query_tokens=self._query_tokens,
            num_preemptions=self._preemptions,
            num_finished=self._finished,
            num_aborted=self._aborted,
            num_failed_steps=self._failed_steps,
            num_steps=self.steps.next_step_id,
            num_evictable_blocks=self.pool.num_evictable,
            num_held_blocks=self.config.num_blocks - self.pool.num_free - self.pool.num_pending,
        )

    def check_invariants(self) -> None:
        """Raise :class:`~tokensched.errors.InvariantViolation` if any machine is inconsistent."""
        check_scheduler(self)
