"""The simulator's decode run walked in one loop: each step taken, the next planned, sampled and priced inline.

Why: a simulated hour runs ~100k decode-run steps of one to three rows, and
walking a :class:`~tokensched_sim.executor.SimRun` a step at a time costs a
chain of calls per step (``collect``, :meth:`RunCursor.take
<tokensched.decode_run.RunCursor.take>`, ``launch_next``, the launcher,
:meth:`RunCursor.plan <tokensched.decode_run.RunCursor.plan>`,
:meth:`TokenSource.sample_run_step
<tokensched_sim.tokens.TokenSource.sample_run_step>`), each fetching the
same attributes again, for a few lines of arithmetic a row. :func:`walk`
does what ``while steps.collect() and clock < until and steps.launch_next()``
does with everything held in locals: the take of step ``j`` and the plan of
step ``j + depth`` (which runs the same rows) in one pass over the rows, then
the draws of that step in a second (only once the step is known to be
launched: the draws are the RNG's order), in the same order and with the
same arithmetic as those methods.

It leaves the cursor, the executor (clock, device, in-flight steps,
statistics) and the token source (RNG, targets) exactly as the step-by-step
walk leaves them: ``tests/sim/test_run_loop.py`` runs random traffic through
both and compares results, cursors, clocks, RNG states and statistics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokensched_sim.executor import SimExecutor, SimRun


def walk(executor: SimExecutor, steps: SimRun, until: float) -> None:
    """Collect ``steps``' oldest step and launch the next until the run ends or the clock reaches ``until``.

    Called after :meth:`SimRun.start`; leaves the steps collected in
    ``steps.done`` and those launched after them in ``steps.pending``, for
    :meth:`SimRun.result`.
    """
    tokens = executor.tokens
    left = tokens._left
    ids = steps.run.request_ids
    if any(request_id not in left for request_id in ids):
        _stepwise(executor, steps, until)  # the step-by-step walk raises where the sampler meets the unknown row
        return
    remaining = [left[request_id] for request_id in ids]  # outputs until EOS, written back when the walk ends
    try:
        _walk(executor, steps, until, remaining)
    finally:
        for request_id, n in zip(ids, remaining, strict=True):
            left[request_id] = n


def _stepwise(executor: SimExecutor, steps: SimRun, until: float) -> None:
    """The step-by-step walk :func:`walk` fuses (its definition)."""
    while steps.collect() and executor._clock < until and steps.launch_next():
        pass


def _walk(executor: SimExecutor, steps: SimRun, until: float, remaining: list[int]) -> None:
    """:func:`walk`'s loop; ``remaining[i]`` stands for the token source's count of row ``i`` throughout."""
    run, cursor = steps.run, steps.cursor
    pending, done = steps.pending, steps.done
    tokens, stats = executor.tokens, executor.stats
    rand = tokens._rng.random
    span, eos, alpha = tokens._span, tokens.eos_token_id, tokens.acceptance_rate
    pricer = executor._decode_cost
    step_time, draft_time = pricer.step_time, pricer.draft_time
    k = run.num_speculative_tokens
    bs = run.block_size
    depth = run.depth
    cross = run.cross_blocks
    max_steps, spare = run.max_steps, run.spare_blocks
    stops, limits = run.stop_token_ids, run.length_limit
    groups = [run.group(g) for g in range(depth)]
    pos, ends, size, room, drafts = cursor.pos, cursor.ends, cursor.size, cursor.room, cursor.drafts
    planned, allocs, touched_steps = cursor.planned, cursor.allocs, cursor.touched
    ks = range(k)
    clock, busy, busy_s = executor._clock, executor._busy_until, stats.busy_s
    launched = query_tokens = sampled_total = verified = tested = accepted_total = 0
    j = len(done)
    try:
        while True:
            step = pending.popleft()
            done.append(step)
            end = step[0]
            if end > clock:
                clock = end
            sampled, proposals = step[1], step[2]
            # Take step j (RunCursor.take) and plan its rows' part of step j + depth (RunCursor.plan).
            rows = groups[j % depth]
            following: list[list[int]] = []  # the drafts each row verifies in step j + depth
            needs: list[tuple[int, int]] | None = None  # blocks step j + depth's plan takes, per row
            special = touched = False
            for r, i in enumerate(rows):
                got_tokens = sampled[r]
                got = len(got_tokens)
                before = pos[i]
                at = pos[i] = before + got
                known = size[i] = size[i] + got
                room_i = room[i] = room[i] - got
                stop = stops[i]
                if (stop and not stop.isdisjoint(got_tokens)) or known >= limits[i]:
                    special = True
                elif at <= ends[i] - bs:  # drafts rejected: the blocks past the computed positions go back
                    end_i = -(-at // bs) * bs
                    cursor.allocated -= (ends[i] - end_i) // bs
                    ends[i] = end_i
                    touched = True
                elif (at + 1) // bs > before // bs:
                    touched = True
                if proposals is not None:
                    mine = drafts[i] = proposals[r][:k]
                else:
                    mine = drafts[i]
                cap = room_i - 1
                if cap > k:
                    cap = k
                if len(mine) > cap:
                    mine = mine[:cap]
                top = at + 1 + len(mine)
                if top > ends[i]:
                    if needs is None:
                        needs = []
                    needs.append((i, -(-top // bs) - ends[i] // bs))
                following.append(mine)
            if touched:
                if cross:
                    touched_steps.append(j)
                else:
                    special = True
            cursor.special = special
            nxt = j + depth
            if (
                special
                or not clock < until
                or nxt >= max_steps
                or (cross and cursor.allocated > spare)
                or (needs and not cross)
            ):
                return
            if needs:
                for i, blocks in needs:
                    ends[i] += blocks * bs
                    cursor.allocated += blocks
                allocs[nxt] = needs
            planned[nxt] = following
            # Launch step j + depth: TokenSource.sample_run_step's draws and sums, then the step's price.
            out: list[list[int]] = []
            proposing: list[int] = []
            proposing_kv = num_tokens = pairs = kv_tokens = 0
            for r, i in enumerate(rows):
                n = remaining[i]
                verify = following[r]
                d = len(verify)
                c, q = pos[i], 1 + d
                num_tokens += q
                pairs += q * c + q * (q + 1) // 2
                kv_tokens += c + q
                accepted = 0
                if d:
                    while accepted < d and rand() < alpha:
                        accepted += 1
                    verified += d
                    tested += accepted + (accepted < d)
                    accepted_total += accepted
                if accepted + 1 >= n:  # the target length falls in this step: end there with EOS
                    row_tokens = [*verify[: n - 1], eos] if n > 1 else [eos]
                    n = 0
                else:
                    t = int(rand() * span)
                    row_tokens = [*verify[:accepted], t + (t >= eos)] if accepted else [t + (t >= eos)]
                    n -= accepted + 1
                sampled_total += len(row_tokens)
                out.append(row_tokens)
                remaining[i] = n
                if n:
                    proposing.append(r)
                    proposing_kv += c + q
            new_drafts: list[list[int]] | None = None
            if k:
                every_row = len(proposing) == len(out)
                new_drafts = [] if every_row else [[] for _ in out]
                for r in proposing:
                    row: list[int] = []
                    for _ in ks:
                        t = int(rand() * span)
                        row.append(t + (t >= eos))
                    if every_row:
                        new_drafts.append(row)
                    else:
                        new_drafts[r] = row
            duration = step_time(len(rows), num_tokens, pairs, kv_tokens)
            if proposing and k:
                duration += draft_time(len(proposing), proposing_kv, k)
            start = busy if busy > clock else clock
            busy = start + duration
            launched += 1
            busy_s += duration
            query_tokens += num_tokens
            pending.append((busy, out, new_drafts, duration))
            j += 1
    finally:
        executor._clock, executor._busy_until = clock, busy
        stats.num_steps += launched
        stats.num_tokens += query_tokens
        stats.busy_s = busy_s
        stats.num_sampled_tokens += sampled_total
        stats.num_drafts_verified += verified
        stats.num_drafts_tested += tested
        stats.num_drafts_accepted += accepted_total
