"""Exhaustive small-scope check: every interleaving of the real Scheduler, for tiny bounds.

Explicit-state breadth-first search. From each state it tries every action a
host could take next (submit the next request, plan, complete the oldest step
with every combination of sampled tokens from a tiny alphabet that includes
eos, fail the oldest step, abort each live request), each on a deep copy of
the Scheduler, and deduplicates states by a canonical fingerprint. In every
state reached it checks:

- ``Scheduler.check_invariants()`` (every machine, the pool's books);
- overlap safety: every block that a step in flight writes (its plan's slot
  mapping) is still held by the request it was written for, in the same
  residency, or is PENDING and in nobody's table: it was not handed to
  another request (nor back to the same one) before that step completed;
- liveness: from every state, without aborts or failures, some sequence of
  plans and results finishes every request;
- the policy's promises (:mod:`tokensched.policies.promises`) at every plan.

Where random testing samples, this proves the properties for every schedule
within the bounds. Run it with ``python -m tokensched.testing.exhaustive``.
"""

from __future__ import annotations

import argparse
import itertools
import pickle
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence

import attrs
import numpy as np

from tokensched.config import RequestSpec, SchedulerConfig
from tokensched.errors import ExecutorError, InvariantViolation
from tokensched.machines.blocks import BlockState
from tokensched.machines.request import Request, held_blocks, state_name
from tokensched.machines.step import Step
from tokensched.plan import StepPlan, StepResult, TransferKind
from tokensched.policies import POLICIES
from tokensched.policies.base import Policy
from tokensched.scheduler import Scheduler
from tokensched.testing.promises import observe_plan
from tokensched.tokens import TokenBuffer

EOS = 0


@attrs.frozen
class Bounds:
    """The scope: a handful of tiny requests sharing a prefix, a pool small enough to run out."""

    prompts: tuple[tuple[int, ...], ...] = ((1, 2, 3), (1, 2, 4), (1, 2))
    max_tokens: int = 2
    num_blocks: int = 4
    block_size: int = 2
    max_steps_in_flight: int = 2
    max_batched_tokens: int = 4
    long_prefill_chunk: int | None = 2
    alphabet: tuple[int, ...] = (7, EOS)
    max_step_retries: int = 1
    policy: str = "fcfs"  # a name in tokensched.policies.POLICIES
    priorities: tuple[int, ...] = (0, 0, 0)  # of each prompt's request, for the priority policy
    host_kv_blocks: int = 0  # a host tier (tokensched.machines.host_tier) of this many slots; 0: none
    host_transfer_blocks: int = 2

    def make_policy(self) -> Policy:
        return POLICIES[self.policy]()

    def config(self) -> SchedulerConfig:
        return SchedulerConfig(
            num_blocks=self.num_blocks,
            block_size=self.block_size,
            max_model_len=max(map(len, self.prompts)) + self.max_tokens,
            max_batched_tokens=self.max_batched_tokens,
            max_steps_in_flight=self.max_steps_in_flight,
            long_prefill_chunk=self.long_prefill_chunk,
            max_step_retries=self.max_step_retries,
            host_kv_blocks=self.host_kv_blocks,
            host_transfer_blocks=self.host_transfer_blocks,
        )


Ref = tuple[int, str, int]  # (block, request id, request epoch) a step in flight writes
HOST = ""  # the request id of a Ref for a block a step in flight copies to the host tier (it reads it)


@attrs.define
class Node:
    """One explored state: the scheduler, how many requests were submitted, what steps in flight write."""

    scheduler: Scheduler
    submitted: int
    writes: tuple[tuple[int, frozenset[Ref]], ...]  # per step in flight: (step id, its writes)


@attrs.define
class Report:
    states: int = 0
    edges: int = 0
    depth: int = 0
    finished_states: int = 0
    seconds: float = 0.0
    violations: list[str] = attrs.field(factory=list)
    coverage: Counter[str] = attrs.field(factory=Counter)

    def summary(self) -> str:
        seen = "\n".join(f"  {k}: {v}" for k, v in sorted(self.coverage.items()))
        return (
            f"explored {self.states} states and {self.edges} transitions (depth {self.depth}) "
            f"in {self.seconds:.1f} s; {self.finished_states} with every request finished; "
            f"{len(self.violations)} violations\ncovered (edges, or states for 'states with'):\n{seen}"
        )


Key = tuple[object, ...]


def fingerprint(node: Node) -> Key:
    """Everything that decides what the scheduler can do next, and nothing else.

    Step ids are taken relative to the next one and epochs reduced to "current
    or stale", so states that differ only by how they were reached coincide.
    Free-list and LRU order stay in: they decide which block is handed out next.
    """
    s = node.scheduler
    nxt = s.steps.next_step_id
    pool = s.pool
    blocks = tuple((pool.state(b), pool.refcount(b), pool.block_hash(b)) for b in range(pool.num_blocks))
    pending = tuple((step - nxt, tuple(held)) for step, held in pool._pending)
    steps = tuple(_step_key(step, nxt) for step in s.steps)
    writes = tuple(
        (sid - nxt, tuple(sorted((b, rid, _current(s, rid, e)) for b, rid, e in refs))) for sid, refs in node.writes
    )
    requests = tuple(_request_key(rid, r) for rid, r in s.live.items())
    order = (tuple(r.request_id for r in s.waiting), tuple(s.running))
    # Attributes this module does not know stay in whole: a new field can only split states, never merge them.
    others = tuple((k, repr(v)) for k, v in sorted(vars(s).items()) if k not in _SCHEDULER_KNOWN)
    lists = (repr(pool._free), repr(pool._evict.order()))
    retention = s._retention
    # Its repr is an address, different in every copy: keyed by what it holds, or no two states would coincide.
    retained = None if retention is None else tuple((sid, t, r.request_id) for sid, (t, r) in retention._until.items())
    return (node.submitted, requests, order, blocks, lists, pending, steps, writes, others, retained, _host_key(s, nxt))


def _host_key(s: Scheduler, nxt: int) -> Key:
    if s.host is None:
        return ()
    tier = s.host.tier
    slots = tuple((tier.state(i), tier.slot_hash(i), tier.device_block(i)) for i in range(tier.num_slots))
    in_flight = tuple((step - nxt, tuple(held)) for step, held in tier._in_flight)
    return (slots, in_flight, repr(tier._free), repr(tier._evict.order()))


_SCHEDULER_KNOWN = frozenset(
    {
        "config",
        "policy",
        "clock",
        "pool",
        "steps",
        "_live",
        "waiting",
        "_running",
        "_seq",
        "_retention",
    }  # fingerprinted above (the request tables through the live/running views, which write the columns back)
    | {"_cols", "_fast", "_columnar"}  # the columnar decode path: empty once the views wrote it back; constants
    | {"_removed", "_truncated"}  # only what the next plan reports to the executor
    | {"_hit_tokens", "_query_tokens", "_preemptions", "_finished", "_aborted", "_failed_steps"}  # statistics
    | {"_bs", "_caching", "_chunk", "_k_spec", "_admit_reserve"}  # constants
    | {"host"}  # fingerprinted by _host_key
    | {"_prefix_keys"}  # a function of the waiting requests and the pool's index once flushed (reading the queue does)
)
_REQUEST_SKIPPED = frozenset(
    {"state", "epoch"}  # fingerprinted as state name + fields, and as current-or-stale per step
    | {"planned_in"}  # only compared with the step being planned, which is always a new id
    | {"first_token_time", "finish_time", "num_preemptions", "num_cached_tokens"}  # statistics
)


def _request_key(rid: str, r: Request) -> Key:
    state = r.state
    cursors = tuple(_frozen(getattr(state, f.name)) for f in attrs.fields(type(state)))
    rest = tuple(_frozen(getattr(r, f.name)) for f in attrs.fields(Request) if f.name not in _REQUEST_SKIPPED)
    return (rid, state_name(state), cursors, rest)


def _frozen(value: object) -> object:
    if isinstance(value, tuple) and value and isinstance(value[0], np.ndarray):  # a reuse run: (blocks, generations)
        return tuple(tuple(a.tolist()) for a in value)
    return tuple(value) if isinstance(value, list | TokenBuffer) else repr(value) if isinstance(value, dict) else value


def _step_key(step: Step, nxt: int) -> Key:
    rows = zip(step.requests, step.epochs, step.num_tokens, step.num_drafts, step.samples, strict=True)
    return (step.step_id - nxt, tuple((r.request_id, r.epoch == e, *rest) for r, e, *rest in rows), step.state)


def _current(s: Scheduler, rid: str, epoch: int) -> bool:
    r = s.live.get(rid)
    return r is not None and r.epoch == epoch


# ------------------------------------------------------------------ actions
Action = Callable[[Node], None]


def actions(node: Node, bounds: Bounds) -> Iterator[tuple[str, Action, bool]]:
    """(label, apply, progress) for every action enabled in ``node``; ``progress`` excludes aborts and failures."""
    s = node.scheduler
    if node.submitted < len(bounds.prompts):
        yield f"submit r{node.submitted}", lambda n: submit_next(n, bounds), True
    if not s.steps.full and (s.running or s.waiting):
        yield "plan", plan_step, True
    if len(s.steps):
        oldest = next(iter(s.steps))
        rows = sum(oldest.samples)
        for tokens in itertools.product(bounds.alphabet, repeat=rows):
            yield f"complete step {oldest.step_id} with {list(tokens)}", _completer(tokens), True
        yield f"fail step {oldest.step_id}", _fail, False
    for rid in s.live:
        yield f"abort {rid}", _aborter(rid), False


def submit_next(node: Node, bounds: Bounds) -> None:
    i = node.submitted
    spec = RequestSpec(
        request_id=f"r{i}",
        prompt_token_ids=list(bounds.prompts[i]),
        max_tokens=bounds.max_tokens,
        eos_token_id=EOS,
        priority=bounds.priorities[i % len(bounds.priorities)],
    )
    node.scheduler.submit(spec)
    node.submitted += 1


def plan_step(node: Node) -> None:
    s = node.scheduler
    plan, _ = observe_plan(s)  # raises PromiseBroken, which the search reports as a violation
    if plan is not None:
        node.writes = (*node.writes, (plan.step_id, frozenset(_plan_writes(s, plan))))


def _plan_writes(s: Scheduler, plan: StepPlan) -> Iterator[Ref]:
    owner = {b: new.request_id for new in plan.new_requests for b in new.block_ids}
    for t in plan.kv_transfers:  # a load writes its device block; a store reads its one
        if t.kind is TransferKind.LOAD:
            yield t.device_block, owner[t.device_block], s.live[owner[t.device_block]].epoch
        else:
            yield t.device_block, HOST, 0
    for i, rid in enumerate(plan.request_ids):
        epoch = s.live[rid].epoch
        for slot in plan.slot_mapping[plan.token_offsets[i] : plan.token_offsets[i + 1]]:
            yield slot // plan.block_size, rid, epoch


def _completer(tokens: tuple[int, ...]) -> Action:
    def complete(node: Node) -> None:
        step = next(iter(node.scheduler.steps))
        it = iter(tokens)
        rows = [[next(it)] if sample else [] for sample in step.samples]
        node.scheduler.complete(StepResult(step_id=step.step_id, sampled_token_ids=rows))
        node.writes = node.writes[1:]

    return complete


def _fail(node: Node) -> None:
    step_id = next(iter(node.scheduler.steps)).step_id
    node.scheduler.fail(step_id, ExecutorError(step_id, "injected"))
    node.writes = node.writes[1:]


def _aborter(rid: str) -> Action:
    def abort(node: Node) -> None:
        node.scheduler.abort(rid)

    return abort


# ------------------------------------------------------------------- checks
def check(node: Node) -> list[str]:
    """Every property that must hold in every reachable state."""
    s = node.scheduler
    problems: list[str] = []
    try:
        s.check_invariants()
    except InvariantViolation as e:
        problems.append(str(e))
    holders: dict[int, list[str]] = {}
    for rid, r in s.running.items():
        for b in held_blocks(r.state):
            holders.setdefault(b, []).append(rid)
    for step_id, refs in node.writes:
        for block, rid, epoch in refs:
            if rid == HOST:
                if s.pool.state(block) is not BlockState.COMMITTED:
                    problems.append(
                        f"step {step_id} copies block {block} to host, but it is {s.pool.state(block).name}"
                    )
            elif _current(s, rid, epoch) and rid in s.running:
                if holders.get(block) != [rid]:
                    problems.append(f"step {step_id} writes block {block} for {rid}, now held by {holders.get(block)}")
            elif block in holders or s.pool.state(block) is not BlockState.PENDING:
                problems.append(
                    f"step {step_id} still writes block {block} for {rid} (left), but it is "
                    f"{s.pool.state(block).name} and held by {holders.get(block, [])}"
                )
    return problems


def _note_edge(report: Report, before: Node, after: Node) -> None:
    """Which machine transitions this edge took, and the scheduler events worth counting."""
    sa, sb = before.scheduler, after.scheduler
    for block in range(sa.pool.num_blocks):
        a, b = sa.pool.state(block), sb.pool.state(block)
        if a is not b:
            report.coverage[f"block {a.name.lower()}->{b.name.lower()}"] += 1
    for rid, request in sa.live.items():
        after_request = sb.live.get(rid)
        a_name = state_name(request.state)
        b_name = state_name(after_request.state) if after_request is not None else "finished"
        if a_name != b_name:
            report.coverage[f"request {a_name}->{b_name}"] += 1
    if sa.host is not None and sb.host is not None:
        for slot in range(sa.host.tier.num_slots):
            a_slot, b_slot = sa.host.tier.state(slot), sb.host.tier.state(slot)
            if a_slot is not b_slot:
                report.coverage[f"host {a_slot.name.lower()}->{b_slot.name.lower()}"] += 1
    stats_a, stats_b = sa.stats(), sb.stats()
    if stats_b.num_preemptions > stats_a.num_preemptions:
        report.coverage["preemptions"] += 1
    if stats_b.prefix_hit_tokens > stats_a.prefix_hit_tokens:
        report.coverage["prefix hits"] += 1


def _note_state(report: Report, node: Node) -> None:
    s = node.scheduler
    if s.pool.num_pending:
        report.coverage["states with pending blocks"] += 1
    if s.steps.full:
        report.coverage["states with max steps in flight"] += 1


# -------------------------------------------------------------------- search
def explore(
    bounds: Bounds | None = None,
    max_states: int = 1_000_000,
    policy: Policy | None = None,
    settings: Mapping[str, object] | None = None,
) -> Report:
    """Breadth-first search of every state reachable within ``bounds``; returns what it found.

    ``policy`` replaces the one ``bounds`` names, and ``settings`` override
    fields of its config: how a bench profile (a configured policy and the
    scheduler settings of the stack it mirrors) is checked the same way.
    """
    bounds = bounds or Bounds()
    started = time.perf_counter()
    report = Report()
    config = bounds.config()
    if settings:
        config = SchedulerConfig.model_validate({**config.model_dump(), **settings})
    root = Node(Scheduler(config, policy=policy or bounds.make_policy(), clock=_clock), 0, ())
    root_key = fingerprint(root)
    parent: dict[Key, tuple[Key, str] | None] = {root_key: None}
    depth = {root_key: 0}
    progress_edges: dict[Key, list[Key]] = {}
    finished: list[Key] = []
    todo = deque([(root, root_key)])
    while todo and len(parent) < max_states:
        node, key = todo.popleft()
        if node.submitted == len(bounds.prompts) and not node.scheduler.has_work:
            finished.append(key)
        for label, apply, progress in actions(node, bounds):
            child = _clone(node)
            try:
                apply(child)
            except Exception as e:  # any exception from a legal action is a bug
                report.violations.append(f"{label}: {type(e).__name__}: {e}\n{_path(parent, key)}")
                continue
            report.edges += 1
            _note_edge(report, node, child)
            child_key = fingerprint(child)
            if progress:
                progress_edges.setdefault(child_key, []).append(key)
            if child_key in parent:
                continue
            parent[child_key] = (key, label)
            depth[child_key] = depth[key] + 1
            _note_state(report, child)
            for problem in check(child):
                report.violations.append(f"{problem}\n{_path(parent, child_key)}")
            todo.append((child, child_key))
    report.states = len(parent)
    report.depth = max(depth.values())
    report.finished_states = len(finished)
    stuck = set(parent) - _backward_reach(progress_edges, finished)
    for key in sorted(stuck, key=lambda k: depth[k])[:3]:
        report.violations.append(f"no way to finish every request without aborts from:\n{_path(parent, key)}")
    report.seconds = time.perf_counter() - started
    return report


def _clock() -> float:
    return 0.0  # a module-level function, so that a Scheduler pickles


def _clone(node: Node) -> Node:
    """A deep copy; pickling is several times faster than ``copy.deepcopy`` and copies the same graph."""
    clone: Node = pickle.loads(pickle.dumps(node, pickle.HIGHEST_PROTOCOL))
    return clone


def _backward_reach(edges: dict[Key, list[Key]], goals: list[Key]) -> set[Key]:
    seen = set(goals)
    todo = deque(goals)
    while todo:
        for prev in edges.get(todo.popleft(), ()):
            if prev not in seen:
                seen.add(prev)
                todo.append(prev)
    return seen


def _path(parent: dict[Key, tuple[Key, str] | None], key: Key) -> str:
    labels: list[str] = []
    link = parent.get(key)
    while link is not None:
        key, label = link
        labels.append(label)
        link = parent.get(key)
    return "  path: " + " -> ".join(reversed(labels))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--max-tokens", type=int, default=Bounds().max_tokens)
    parser.add_argument("--num-blocks", type=int, default=Bounds().num_blocks)
    parser.add_argument("--steps-in-flight", type=int, default=Bounds().max_steps_in_flight)
    parser.add_argument("--policy", choices=sorted(POLICIES), default=Bounds().policy)
    parser.add_argument("--priorities", type=int, nargs="+", default=list(Bounds().priorities))
    args = parser.parse_args(argv)
    bounds = Bounds(
        max_tokens=args.max_tokens,
        num_blocks=args.num_blocks,
        max_steps_in_flight=args.steps_in_flight,
        policy=args.policy,
        priorities=tuple(args.priorities),
    )
    report = explore(bounds)
    print(f"bounds: {bounds}")
    print(report.summary())
    for violation in report.violations[:5]:
        print(f"VIOLATION: {violation}")
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
