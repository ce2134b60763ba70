"""Checking a decode run's result before it is applied: the cursor's replay, and the same in one lean pass.

Why: :meth:`Scheduler.complete_run <tokensched.scheduler.Scheduler.complete_run>`
must refuse a malformed :class:`~tokensched.decode_run.RunResult` whole, and
learn from it what the scheduler's single steps would have done (the drafts
each step verified, the blocks each step's plan took, the steps that filled,
hashed or rolled back a block, whether the last one finished a row). The
reference for all of that is a :class:`~tokensched.decode_run.RunCursor`
replayed over the result with ``check=True`` (:func:`reference_replay`).
On the bench's workloads a run holds a few rows and ~16 steps, so that
replay's cost is its per-step calls and per-token checks, not its
arithmetic: :func:`replay` does the same arithmetic in one loop with the
cursor's lists held locally and checks every token in bulk at the end.

It stays exactly equivalent by construction: the lean pass only ever
*accepts* (returning a cursor in the state the reference leaves) or gives
up; on any doubt (a row count, a token count, a token of the wrong type or
range, a step past the end, drafts with speculation off) it hands the
result to :func:`reference_replay`, which raises the reference's error
naming step and request. ``tests/property/test_run_replay.py`` checks,
over runs the simulator produces and corrupted copies of them, that both
accept the same results with the same cursor state and refuse the same
results with the same message.
"""

from __future__ import annotations

from tokensched.decode_run import DecodeRun, RunCursor, RunResult
from tokensched.errors import InvalidRequest
from tokensched.tokens import INT32_MAX


def replay(run: DecodeRun, result: RunResult) -> RunCursor:
    """The cursor after ``result``'s steps, as :func:`reference_replay` leaves it; raises its InvalidRequest."""
    cursor = RunCursor(run)
    try:
        accepted = _lean_replay(run, result, cursor)
    except TypeError:  # a malformed row or token: the reference names it
        accepted = False
    return cursor if accepted else reference_replay(run, result)


def reference_replay(run: DecodeRun, result: RunResult) -> RunCursor:
    """Replay ``result`` step by step through a checking :class:`RunCursor` (the definition :func:`replay` meets).

    Raises :class:`InvalidRequest` for a malformed step, or a step after one
    that ended the run (or after which the run could not plan its next step).
    The caller has checked that ``result`` has as many steps of drafts and of
    times as of tokens, and at least one.
    """
    first = run.first_step_id
    steps, proposals = result.sampled_token_ids, result.draft_token_ids
    count = len(steps)
    depth = run.depth
    cursor = RunCursor(run)
    for j in range(depth):
        cursor.plan(j)
    for j in range(count):
        go_on = cursor.take(j, steps[j], proposals[j], check=True)
        if j < count - 1 and (not go_on or cursor.plan(j + depth) is None):
            raise InvalidRequest(f"run from step {first}: step {first + j + 1} is past the end of the run")
    return cursor


def _lean_replay(run: DecodeRun, result: RunResult, cursor: RunCursor) -> bool:
    """The cursor's walk over every step in one loop, tokens checked at the end; False: let the reference decide.

    Step ``j``'s row loop is :meth:`RunCursor.take`'s with the cursor's
    lists held locally, and it plans each row's part of step ``j + depth``
    as :meth:`RunCursor.plan` would (that step runs the same rows), kept
    aside until the whole step is known not to end the run. What
    :func:`~tokensched.decode_run._check_step` checks per step is checked
    here as counts per row and, for the tokens, as one pass over all of them
    (types, then range).
    """
    steps, proposals = result.sampled_token_ids, result.draft_token_ids
    count = len(steps)
    depth = run.depth
    for j in range(depth):
        if cursor.plan(j) is None:
            return False
    k = run.num_speculative_tokens
    bs = run.block_size
    cross = run.cross_blocks
    max_steps, spare, slack = run.max_steps, run.spare_blocks, run.admission_slack
    stops, limits = run.stop_token_ids, run.length_limit
    pos, ends, size, room, drafts = cursor.pos, cursor.ends, cursor.size, cursor.room, cursor.drafts
    planned, allocs, chunks = cursor.planned, cursor.allocs, cursor.chunks
    # A run with a chunk row (one group: its last row, in no group's rows) plans each step's chunk as
    # RunCursor.plan does, after the decode rows (DecodeRun.next_chunk).
    chunk_tokens = run.chunk_tokens
    c = len(run.request_ids) - 1
    touched_steps = cursor.touched
    seen: list[int] = []  # every sampled and proposed token, checked in bulk below
    last = count - 1
    groups = [run.group(g) for g in range(depth)]
    for j in range(count):
        rows = groups[j % depth]
        sampled = steps[j]
        proposed = proposals[j]
        verified = planned[j]
        n = len(rows)
        if len(sampled) != n:
            return False
        if proposed is not None and (len(proposed) != n or (not k and any(proposed))):
            return False
        plans = j < last  # the reference plans step j + depth only when another step follows
        following: list[list[int]] = []  # what each row verifies in step j + depth
        needs: list[tuple[int, int]] | None = None  # blocks step j + depth's plan takes, per row
        special = touched = False
        for r, i in enumerate(rows):
            tokens = sampled[r]
            got = len(tokens)
            if not 1 <= got <= 1 + len(verified[r]):
                return False
            seen += tokens
            before = pos[i]
            at = pos[i] = before + got
            known = size[i] = size[i] + got
            room[i] -= got
            stop = stops[i]
            if (stop and not stop.isdisjoint(tokens)) or known >= limits[i]:
                special = True
            elif at <= ends[i] - bs:
                end = -(-at // bs) * bs
                cursor.allocated -= (ends[i] - end) // bs
                ends[i] = end
                touched = True
            elif (at + 1) // bs > before // bs:
                touched = True
            if proposed is not None:
                row = proposed[r]
                seen += row
                mine = drafts[i] = row[:k]
            else:
                mine = drafts[i]
            if plans:
                cap = room[i] - 1
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
        if chunk_tokens:
            pos[c] += chunks[j]  # the chunk row samples nothing: its positions move by the chunk
        if plans:
            after = j + depth
            if special or after >= max_steps or (cross and cursor.allocated > spare) or (needs and not cross):
                return False  # the reference's plan(j + depth) gives None: a step past the end
            chunk = 0
            if chunk_tokens:
                chunk = run.next_chunk(pos[c], following)
                if not chunk:
                    return False  # the last chunk, or budget left: the reference's plan gives None
                top = pos[c] + chunk
                if top > ends[c]:
                    if needs is None:
                        needs = []
                    needs.append((c, -(-top // bs) - ends[c] // bs))
            taken = sum(n for _, n in needs) if needs else 0
            if cursor.allocated + taken < 0 and cursor.allocated + taken < -slack:
                return False  # admission might open at plan(j + depth): a step past the end
            if needs:
                for i, blocks in needs:
                    ends[i] += blocks * bs
                cursor.allocated += taken
                allocs[after] = needs
            if chunk:
                chunks[after] = chunk
            planned[after] = following
    return set(map(type, seen)) == {int} and min(seen) >= 0 and max(seen) <= INT32_MAX
