"""Multi-step decoding: a run of decode steps of one batch, planned in one call and applied in one pass.

Why: when only plain decodes run (as in a long-context coding-agent workload
at low concurrency), every step is the same few counter moves, and a
simulator spends more CPU walking steps than the modelled GPU spends running
them. vLLM's ``num_scheduler_steps`` made the same observation for GPUs: plan
once, run k steps, return k steps of tokens.

The contract (used by :meth:`Scheduler.plan_run <tokensched.scheduler.Scheduler.plan_run>`,
:meth:`Scheduler.complete_run <tokensched.scheduler.Scheduler.complete_run>`
and any executor with a ``launch_run`` method, see
:class:`~tokensched.executor.RunExecutor`):

1. ``plan_run(max_steps)`` returns a :class:`DecodeRun` only when single
   steps would plan exactly its steps with nothing else to do: no host tier,
   no admission possible for a while (nothing waiting; or every queued
   request that admission would look at did not fit the same free blocks,
   less those retention protects from it, under a policy whose keys do not
   move with the clock), every running request a decode whose first step of
   the run fits the free blocks, no events to tell. Either nothing is in
   flight (one group: every step runs every row), or, under speculative
   decoding with two steps in flight, one step of decodes is in flight, in
   admission order, and the other decodes wait for it (two groups that
   alternate; the step in flight is the run's step 0). ``admission_shut_until``
   says when admission might open (a retained session's protection lapsing,
   a waiting request outliving the retention window).
2. The executor plans step ``j + depth`` when step ``j`` completes, as the
   single steps would: if :meth:`RunCursor.plan` allows it (the drafts each
   row verifies, capped as the scheduler caps them; None after a step that
   finished a row, at ``max_steps``, once the run's new blocks would leave
   the free blocks short, and, without ``cross_blocks``, once a row would
   need a block it does not hold or after a step that filled, hashed or
   rolled back one; with requests waiting, once rollbacks would leave more
   free blocks than ``admission_slack`` allows) and its clock is still before the
   caller's ``until`` (the next arrival or metrics sample: the moments the
   caller acts between steps) and before ``admission_shut_until``. It
   returns the completed steps as a :class:`RunResult` (with two groups the
   last launched step stays in flight, as it would have).
3. ``complete_run()`` replays the same cursor over the result to validate
   it whole (a bad result changes nothing), then applies the steps in
   single-step order: the steps that only appended tokens in one pass per
   request, the rows of a step that filled, hashed or rolled back a block
   through the per-request code (brought up to date first; a rollback gives
   the block back to the free list there, as the single step does, and the
   next step's plan may take it again), the blocks a step's plan needs
   right after the step whose completion planned it, and a final step that
   finished a request through :meth:`complete
   <tokensched.scheduler.Scheduler.complete>`. The state afterwards is the
   state the single steps would have left (pool, index, eviction order and
   KV events included): the property tests in
   ``tests/property/test_fast_path.py`` check outputs, clocks, pools,
   requests and counters against single steps on the simulator, and
   ``tests/sim/test_runs_in_the_bench.py`` a bench point.

An embedding engine drives it as :meth:`Engine.step_run
<tokensched.engine.Engine.step_run>` does: ``run = scheduler.plan_run(k)``;
run the steps on the device (sampling, drafting and verifying there, the
cursor deciding when to stop) and hand back ``scheduler.complete_run(result)``.
While a run is out the scheduler plans nothing else and refuses ``abort``.
If the device fails the run with nothing to hand back, ``scheduler.fail_run(error)``
fails the steps the run held when it was handed out (the step in flight
before it, if any, and those it planned then) as :meth:`fail
<tokensched.scheduler.Scheduler.fail>` fails single steps, oldest first: their
requests are rolled back for a retry or finished with an error, their blocks
go back, and planning goes on (``tests/property/test_failed_runs.py`` checks
it against single steps failing).

A run may also carry a prefill chunk (``plan_run(..., chunks=True)``, see
:func:`tokensched.run_steps.plan_chunk_run`): its last row is the one request
still prefilling, in no group; each step computes the decodes and then the
next ``min(tokens left, budget the decodes leave, chunk cap)`` positions of
its prompt, which sample nothing. :meth:`RunCursor.plan` plans such a step
only while its chunk spends the whole budget (a single step with budget left
would try to admit) and stops short of the prompt's end (the last chunk
samples the first token: a single step's), and counts the chunk's new blocks
with the decodes'. The executor prices the step as the single step
(``RunCursor.chunks`` says each step's chunk); :meth:`complete_run` computes
the positions, allocates the blocks and commits the full ones per step, in
the single steps' order.

Why: on a DP-attention rank most single steps are a few speculative decodes
beside a chunk of a long prompt, and each costs about ten times a run's step.

Rows with drafts follow the scheduler's rule: a step verifies the drafts
proposed by the previous step, at most ``num_speculative_tokens`` and at most
``room - 1`` (tokens the row may still emit, less the bonus token).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs

from tokensched.errors import InvalidRequest
from tokensched.tokens import INT32_MAX


@attrs.frozen(slots=True)
class DecodeRun:
    """Up to ``max_steps`` decode steps over the rows of the running set.

    Step ``j`` of the run (step id ``first_step_id + j``) schedules the rows
    ``groups[j % len(groups)]``, in that order. One group: every step runs
    every row, one step at a time. Two groups: the running set is split in
    two halves whose steps alternate with one step in flight (speculative
    decoding with two steps in flight plans a row again only once its
    previous step is applied), and the run's step 0 was already launched as
    a single step (``launched == 1``): the executor holds it in flight.

    ``num_computed_tokens[i]`` is row ``i``'s first input position and
    ``last_token_ids[i]`` its token; ``draft_token_ids[i]`` the drafts its
    first step verifies (before the cap of :meth:`RunCursor.plan`);
    ``block_tables[i]`` its blocks, covering positions below ``block_end[i]``
    (read them while the run is out: the run holds the rows' own block lists,
    not copies, since an executor that takes runs rarely reads them and a long
    context holds thousands; :meth:`Scheduler.complete_run` lets go of them);
    ``room[i]`` the tokens it may still emit, ``length_limit[i]`` the total
    tokens (prompt included) at which it finishes, ``stop_token_ids[i]`` the
    ids that finish it (EOS included). ``removed_request_ids`` and
    ``truncated_block_tables`` are what the first new step's plan would have
    carried (as in :class:`~tokensched.plan.StepPlan`).

    With ``cross_blocks`` the run goes on across block boundaries: a step
    whose row needs a new block plans it (the scheduler allocates it when the
    run completes, in the order single steps would have, so an executor that
    needs block ids before the step cannot take such a run: it plans with
    ``cross_blocks=False``), and a step that fills or hashes a block, or
    rolls one back (drafts that took a new block were rejected: the block
    goes back to the free list), is applied by the per-request code inside
    the run. A step after the first
    ``depth`` may start only while the run's steps have allocated at most
    ``spare_blocks`` blocks; a rolled-back block counts as given back. More,
    and the free blocks would be short of one step's worst case plus a block
    a row, where single steps serve the running set by victim key; or, when
    the victim keys keep the rows in the run's order anyway, short of what
    one step's rows could take, where a row would preempt or wait.
    Without it the run ends before a row needs a new block and with a step
    that fills, hashes or rolls back one. A run crosses blocks
    only when that cannot change admission: nothing waits, or the policy is
    static and no session is retained (a run only takes free blocks away).

    ``admission_shut_until``: no step of the run may start at or after this
    clock (single steps might admit a waiting request from then on).
    ``admission_slack``: by how many blocks the free blocks may rise above
    their number at the run's plan before single steps might admit a waiting
    request; a step whose plan would leave more free (a rollback gave back a
    block the step in flight at the run's start took, and no row takes it
    again) is not planned by the run.
    """

    first_step_id: int
    max_steps: int
    block_size: int
    num_speculative_tokens: int
    request_ids: list[str]
    removed_request_ids: tuple[str, ...]
    truncated_block_tables: dict[str, int]
    num_computed_tokens: list[int]
    last_token_ids: list[int]
    draft_token_ids: list[list[int]]
    _block_tables: Sequence[Sequence[int]] | None  # the rows' own lists (no copy); None once the run is completed
    block_end: list[int]
    room: list[int]
    length_limit: list[int]
    stop_token_ids: list[frozenset[int]]
    groups: list[list[int]] = attrs.field(factory=list)  # empty: one group of every row
    launched: int = 0
    cross_blocks: bool = False
    spare_blocks: int = 0
    admission_shut_until: float = math.inf
    admission_slack: float = math.inf
    chunk_tokens: int = 0  # >0: the last row prefills, up to (not reaching) this many known tokens
    chunk_budget: int = 0  # the step's token budget (max_batched_tokens) its chunk fills to the last token
    chunk_cap: int = 0  # the most tokens a chunk takes (the scheduler's chunk size)
    _every_row: list[int] = attrs.field(init=False, repr=False, eq=False)
    _depth: int = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        rows = len(self.request_ids) - (1 if self.chunk_tokens else 0)  # the chunk row is in no group
        object.__setattr__(self, "_every_row", list(range(rows)))  # one group's rows, made once
        object.__setattr__(self, "_depth", max(1, len(self.groups)))  # read on every step a cursor plans

    def group(self, j: int) -> list[int]:
        """The rows step ``j`` of the run schedules (a shared list: read it, do not change it)."""
        groups = self.groups
        if not groups:
            return self._every_row
        return groups[j % len(groups)]

    @property
    def block_tables(self) -> list[tuple[int, ...]]:
        """Each row's blocks as the run's first new step has them; raises InvalidRequest once it is completed."""
        tables = self._block_tables
        if tables is None:
            raise InvalidRequest(f"run from step {self.first_step_id}: block_tables read after complete_run")
        return [tuple(blocks) for blocks in tables]

    def let_go_of_tables(self) -> None:
        """Drop the reference to the rows' block lists (they move on once the run is applied)."""
        object.__setattr__(self, "_block_tables", None)

    @property
    def depth(self) -> int:
        """Steps in flight at once: 1, or 2 when two groups alternate."""
        return self._depth

    def next_chunk(self, at: int, drafts: list[list[int]]) -> int:
        """The chunk row's tokens in a step whose decode rows verify ``drafts``, from its position ``at``.

        The chunk takes what the decode rows leave of the step's budget, up to
        the prompt's last token, as a single step's plan would; 0 when the run
        ends before that step: the last chunk samples, and a chunk capped below
        the budget leaves room a single step would admit into. The one rule
        :meth:`RunCursor.plan` and the scheduler's lean replay both plan by.
        """
        budget = self.chunk_budget - sum(map(len, drafts)) - len(drafts)
        chunk = min(self.chunk_tokens - at, budget, self.chunk_cap)
        if at + chunk >= self.chunk_tokens or chunk < budget or chunk < 2:
            return 0
        return chunk


@attrs.frozen(slots=True)
class RunResult:
    """The steps an executor completed of a :class:`DecodeRun`: ``[step][row of its group]`` tokens.

    ``draft_token_ids[j]`` holds the drafts step ``j`` proposed (None: the
    executor proposes none); ``elapsed[j]`` the seconds step ``j`` took and
    ``end_times[j]`` the executor's clock when it ended (empty if unknown).
    With two groups, the step after the last one here is still in flight on
    the executor (launched as the single steps would have), and the
    scheduler keeps it open as a single step.
    """

    first_step_id: int
    sampled_token_ids: list[list[list[int]]]
    draft_token_ids: list[list[list[int]] | None]
    elapsed: list[float | None]
    end_times: list[float] = attrs.field(factory=list)


class RunCursor:
    """Walks a :class:`DecodeRun` step by step, as the scheduler's single steps would.

    For step ``j`` the executor calls :meth:`plan` when the scheduler would
    plan it and :meth:`take` when its result is applied; the scheduler
    replays the same calls over a :class:`RunResult` (``check=True``)
    before applying it.
    """

    __slots__ = (
        "_k",
        "allocated",
        "allocs",
        "chunks",
        "drafts",
        "ends",
        "planned",
        "pos",
        "room",
        "run",
        "size",
        "special",
        "touched",
    )

    def __init__(self, run: DecodeRun) -> None:
        self.run = run
        self._k = run.num_speculative_tokens
        self.pos = list(run.num_computed_tokens)  # positions computed (the next step's first input)
        self.ends = list(run.block_end)  # positions below this are covered by the row's blocks
        self.size = [p + 1 for p in self.pos]  # tokens known
        self.room = list(run.room)
        self.drafts = [list(d) for d in run.draft_token_ids]
        self.special = False  # a step finished a row (or, not crossing, filled, hashed or rolled back a block)
        self.planned: dict[int, list[list[int]]] = {}  # step -> the drafts each row of its group verifies
        self.allocated = 0  # blocks the run's steps allocated so far, less those rolled back
        self.allocs: dict[int, list[tuple[int, int]]] = {}  # step -> (row, blocks) its plan allocates, in row order
        self.touched: list[int] = []  # steps that filled, hashed or rolled back a block (per-request code for those)
        self.chunks: dict[int, int] = {}  # step -> the tokens its chunk row prefills (a run with a chunk row)

    def plan(self, j: int) -> list[list[int]] | None:
        """The drafts each row of step ``j``'s group verifies, or None when the run ends before step ``j``."""
        run = self.run
        if self.special or j >= run.max_steps:
            return None
        cross = run.cross_blocks
        if cross and j >= run._depth and self.allocated > run.spare_blocks:
            return None  # the free blocks ran short: single steps would serve the rows by victim key
        k = self._k
        ends = self.ends
        pos = self.pos
        room = self.room
        all_drafts = self.drafts
        out: list[list[int]] = []
        needs: list[tuple[int, int]] | None = None
        groups = run.groups
        for i in groups[j % len(groups)] if groups else run._every_row:
            drafts = all_drafts[i]
            cap = room[i] - 1
            if cap > k:
                cap = k
            step = drafts[:cap] if len(drafts) > cap else drafts
            top = pos[i] + 1 + len(step)
            if top > ends[i]:
                if not cross:
                    return None  # it would need a block it does not hold: the scheduler plans that step
                if needs is None:
                    needs = []
                needs.append((i, -(-top // run.block_size) - ends[i] // run.block_size))
            out.append(step)
        chunk = 0
        if run.chunk_tokens:
            c = len(run.request_ids) - 1
            chunk = run.next_chunk(pos[c], out)
            if not chunk:
                return None  # the last chunk samples (and may leave budget to admit): single steps take it
            top = pos[c] + chunk
            if top > ends[c]:
                if needs is None:
                    needs = []
                needs.append((c, -(-top // run.block_size) - ends[c] // run.block_size))
        taken = sum(n for _, n in needs) if needs else 0
        if self.allocated + taken < 0 and self.allocated + taken < -run.admission_slack:
            return None  # more free blocks than at the run's plan: single steps would try a waiting request
        if needs:
            bs = run.block_size
            for i, n in needs:
                ends[i] += n * bs
            self.allocated += taken
            self.allocs[j] = needs
        if chunk:
            self.chunks[j] = chunk
        self.planned[j] = out
        return out

    def take(self, j: int, sampled: list[list[int]], proposals: list[list[int]] | None, *, check: bool = False) -> bool:
        """Apply step ``j``'s tokens (planned before); returns whether the run may go on after it.

        With ``check`` a malformed step raises :class:`InvalidRequest`
        before this cursor changes.
        """
        run = self.run
        rows = run.group(j)
        if check:
            _check_step(run, j, rows, self.planned[j], sampled, proposals)
        stops, limits, ends = run.stop_token_ids, run.length_limit, self.ends
        pos, size, room, drafts = self.pos, self.size, self.room, self.drafts
        k = self._k
        bs = run.block_size
        special = touched = False
        for r, i in enumerate(rows):
            tokens = sampled[r]
            got = len(tokens)
            before = pos[i]
            at = pos[i] = before + got  # 1 + accepted drafts, with or without drafts
            known = size[i] = size[i] + got
            room[i] -= got
            stop = stops[i]
            if (stop and not stop.isdisjoint(tokens)) or known >= limits[i]:
                special = True  # a finish
            elif at <= ends[i] - bs:  # drafts rejected: the blocks past the computed positions go back
                end = -(-at // bs) * bs
                self.allocated -= (ends[i] - end) // bs
                ends[i] = end
                touched = True
            elif (at + 1) // bs > before // bs:
                touched = True  # a block's tokens all known (hashed) or all computed (committed)
            if proposals is not None:
                drafts[i] = proposals[r][:k]
        if touched:
            if run.cross_blocks:
                self.touched.append(j)
            else:
                special = True
        chunk = self.chunks.get(j)
        if chunk:
            pos[-1] += chunk  # the chunk row samples nothing: its positions move by the chunk
        self.special = special
        return not special


def _check_step(
    run: DecodeRun,
    index: int,
    rows: list[int],
    drafts: list[list[int]],
    sampled: list[list[int]],
    proposals: list[list[int]] | None,
) -> None:
    """Refuse a malformed step of a run result whole, naming the step and request."""
    where = f"run from step {run.first_step_id}, step {run.first_step_id + index}"
    n = len(rows)
    ids = run.request_ids
    if len(sampled) != n:
        raise InvalidRequest(f"{where}: {len(sampled)} rows of sampled tokens for {n} requests")
    if proposals is not None and len(proposals) != n:
        raise InvalidRequest(f"{where}: {len(proposals)} rows of drafts for {n} requests")
    for r, tokens in enumerate(sampled):
        if not 1 <= len(tokens) <= 1 + len(drafts[r]):
            raise InvalidRequest(
                f"{where}: request {ids[rows[r]]!r} sampled {len(tokens)} tokens; expected 1 to {1 + len(drafts[r])}"
            )
        for token in tokens:
            if type(token) is not int or token < 0 or token > INT32_MAX:
                raise InvalidRequest(f"{where}: request {ids[rows[r]]!r} sampled token {token!r}")
    if proposals is not None:
        if not run.num_speculative_tokens and any(proposals):
            raise InvalidRequest(f"{where}: drafts proposed but num_speculative_tokens is 0")
        for row in proposals:
            for token in row:
                if type(token) is not int or token < 0 or token > INT32_MAX:
                    raise InvalidRequest(f"{where}: draft token {token!r}")
