"""The running set's next tokens planned in one hoisted loop: the fast path of ``Scheduler._schedule_running``.

Why: a single step in the simulator's DP-attention hours is a handful of
speculative decodes beside one prefill chunk (36k such rank steps an hour),
and each decode row went through the general loop's tests and then a call
of the step builder, a dozen attribute look-ups to append its columns. Here
what is fixed for the step (the builder's column lists and their ``append``
methods, the pool, the budget's bounds) is looked up once, and a decode row
appends its columns in the loop itself; a prefill chunk still goes through
:meth:`StepBuilder.add <tokensched.step_builder.StepBuilder.add>` (its
tokens may become an array part), after which the lists are looked up again.

The decisions are the reference's, made in the same order: the same order
of service (admission order, or the policy's victim key when blocks may run
short), the same preemptions (``Scheduler._make_room``), the same blocks
taken from the pool in the same order, the same columns and counters. The
per-request path alone (``Scheduler(fast_decode=False)``) never uses this;
``tests/property/test_plan_fast_paths.py`` drives both with the same traffic
and asserts identical plans, outputs, requests and pools after every step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tokensched.machines.request import Decoding, Prefilling, Request
from tokensched.plan import NO_BLOCKS, NO_DRAFTS, PLACEHOLDER_TOKEN
from tokensched.step_builder import StepBuilder

if TYPE_CHECKING:
    from tokensched.scheduler import Scheduler


def schedule_running(sched: Scheduler, builder: StepBuilder) -> tuple[int, bool]:
    """``sched._schedule_running(builder)``: the budget left and whether admission must wait."""
    bs = sched._bs
    pool = sched.pool
    budget = sched.config.max_batched_tokens
    chunk_cap = sched._chunk
    k_spec = sched._k_spec
    running = sched._running
    order: list[Request]
    if pool.num_free >= -(-budget // bs) + len(running):
        order = list(running.values())
    else:
        ctx = sched.policy_context()
        victim_key = sched.policy.victim_key
        order = sorted(running.values(), key=lambda r: victim_key(r, ctx))
    step_id = builder.step_id
    add = builder.add
    # The builder's columns; the per-token ones are looked up again after a chunk (it may start new lists).
    token_ids, slots = builder.token_ids, builder.slots
    offset = builder.offsets[-1]
    request_ids, num_computed, offsets = builder.request_ids, builder.num_computed, builder.offsets
    new_block_ids, sample, drafts_col = builder.new_blocks, builder.sample, builder.drafts
    requests, epochs, num_tokens, num_drafts = builder.requests, builder.epochs, builder.num_tokens, builder.num_drafts
    starved = False
    preempted = False
    for index, request in enumerate(order):
        if budget <= 0:
            break
        state = request.state
        if type(state) is not Decoding and type(state) is not Prefilling:
            continue  # preempted earlier in this loop
        if k_spec and request.inflight_steps:
            continue  # its drafts come with the result still in flight
        pos = state.num_scheduled
        known = request.tokens.size
        room = request.max_tokens - (known - request.num_prompt_tokens) - request.inflight_samples
        chunk = pos < known - 1 or (pos == known - 1 and type(state) is Prefilling)
        drafts = NO_DRAFTS
        if chunk:
            n = min(known - pos, budget, chunk_cap)  # a prefill chunk (prompt, or recompute)
            is_sample = pos + n == known
            if is_sample and room <= 0:
                continue  # max_tokens reached by steps in flight
        else:
            if room <= 0:
                continue  # max_tokens reached by steps in flight
            n = 1  # a decode; its input is a placeholder while the previous step is in flight
            if k_spec and request.draft_tokens:
                cap = k_spec  # min(k_spec, room - 1, budget - 1), both at least 0 here
                if room <= cap:
                    cap = room - 1
                if budget <= cap:
                    cap = budget - 1
                proposed = request.draft_tokens
                drafts = tuple(proposed) if len(proposed) <= cap else tuple(proposed[:cap])
                n += len(drafts)
        blocks = state.blocks
        end = pos + n
        if end > len(blocks) * bs:  # positions past its blocks: take more
            need = (end + bs - 1) // bs - len(blocks)
            if starved or pool.num_free < need:
                if starved:
                    continue  # a better-ranked request waits for blocks: do not take them from under it
                before = sched._preemptions
                served = sched._make_room(need, order, index)
                preempted = preempted or sched._preemptions != before
                if not served:
                    starved = True
                    continue
            if need == 1:
                block = pool.allocate_one()
                blocks.append(block)
                new_blocks: tuple[int, ...] = (block,)
            else:
                new_blocks = tuple(pool.allocate(need))
                blocks.extend(new_blocks)
        else:
            new_blocks = NO_BLOCKS
        if chunk:
            add(request, blocks, pos, n, new_blocks, is_sample, drafts)
            token_ids, slots = builder.token_ids, builder.slots
            offset = offsets[-1]
        else:
            # StepBuilder.add of a decode and its drafts, all sampled (see there).
            token_ids.append(request.last_token if pos == known - 1 else PLACEHOLDER_TOKEN)
            first = pos // bs
            if drafts:
                token_ids.extend(drafts)
                if (end - 1) // bs == first:  # all in one block
                    base = (blocks[first] - first) * bs
                    slots.extend(range(base + pos, base + end))
                else:
                    builder.extend_slots(blocks, pos, end)
            else:
                slots.append((blocks[first] - first) * bs + pos)
            offset += n
            request_ids.append(request.request_id)
            num_computed.append(pos)
            offsets.append(offset)
            new_block_ids.append(new_blocks)
            sample.append(True)
            drafts_col.append(drafts)
            requests.append(request)
            epochs.append(request.epoch)
            num_tokens.append(n)
            num_drafts.append(n - 1)
            request.planned_in = step_id
            request.inflight_steps += 1
            request.inflight_samples += n
        state.num_scheduled = end
        budget -= n
    return budget, preempted or starved
