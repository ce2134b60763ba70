"""specs/host.toml against the HostTier, both ways: the slot table is derived by driving a real tier.

Like the block table in ``tests/test_specs.py``, the host slots' table is not
read from the code but observed: a small HostTier beside a small BlockPool is
driven through every call (device allocate / commit / release, host write /
load / drop, launching, completing and failing steps) from every
configuration it can reach. Every configuration reached must pass both
machines' invariant checks, a refused call must change nothing, and each
call must move only the slots it names.
"""

from __future__ import annotations

import pickle
from collections import deque
from collections.abc import Callable
from functools import partial

import attrs
import numpy as np
import pytest

from tokensched.errors import CapacityError, IllegalTransition
from tokensched.machines.blocks import BlockPool, BlockState
from tokensched.machines.host_tier import HostTier, SlotState
from tokensched.machines.spec import MachineSpec, load_spec

_HASHES = (11, 12)  # block b commits content _HASHES[b]: one on the host, one to evict it for
_MAX_LAUNCHES = 2  # write with one step, load with the next


@attrs.define
class _Config:
    host: HostTier
    in_flight: tuple[int, ...] = ()
    launched: int = 0

    def key(self) -> tuple[object, ...]:
        """Both machines' whole state; reuse generations reduced to their ranks (they only grow)."""
        pool = self.host.pool
        gens = {slot: [int(v) for v in getattr(pool, slot)] for slot in type(pool).__slots__ if "gen" in slot}
        rank = {v: i for i, v in enumerate(sorted({v for values in gens.values() for v in values}))}
        pool_key = tuple(
            repr([rank[v] for v in gens[s]]) if s in gens else _repr(getattr(pool, s)) for s in type(pool).__slots__
        )
        host_key = tuple(_repr(getattr(self.host, s)) for s in type(self.host).__slots__ if s != "pool")
        return (*pool_key, *host_key, self.in_flight, self.launched)


def _repr(value: object) -> object:
    return value.tobytes() if isinstance(value, np.ndarray) else repr(value)


Observed = dict[tuple[str, str], set[str]]


def derive_host_table(num_blocks: int = 2, num_slots: int = 1) -> tuple[Observed, set[tuple[str, str]], int]:
    """Drive every call from every reachable configuration; returns observed moves, refusals, configurations."""
    seen: set[tuple[object, ...]] = set()
    legal: Observed = {}
    refused: set[tuple[str, str]] = set()
    start = _Config(HostTier(BlockPool(num_blocks, 2), num_slots))
    todo = deque([(start, start.key())])  # each configuration with its key, computed once

    def probe(
        config: _Config,
        config_key: tuple[object, ...],
        call: Callable[[_Config], dict[int, str] | None],
        events: dict[int, str],
    ) -> None:
        trial = pickle.loads(pickle.dumps(config))  # a deep copy, several times faster
        host = trial.host
        before = [host.state(s) for s in range(num_slots)]
        try:
            events = call(trial) or events
        except (IllegalTransition, CapacityError):
            assert trial.key() == config_key, "a refused call changed the tier or the pool"
            refused.update((before[s].name.lower(), e) for s, e in events.items())
            return
        host.check_invariants()
        host.pool.check_invariants(_holders(host))
        for s in range(num_slots):
            if s in events:
                legal.setdefault((before[s].name.lower(), events[s]), set()).add(host.state(s).name.lower())
            else:
                assert host.state(s) == before[s], f"host slot {s} moved as a side effect"
        key = trial.key()
        if key not in seen:
            seen.add(key)
            todo.append((trial, key))

    while todo:
        config, config_key = todo.popleft()
        host = config.host
        pool = host.pool
        if pool.num_free:
            probe(config, config_key, _allocate, {})
        loading = {host.device_block(s) for s in range(num_slots) if host.state(s) is SlotState.LOADING}
        for b in range(num_blocks):
            if b not in loading:  # the scheduler commits a loaded block when its step completes, not before
                probe(config, config_key, partial(_commit, block=b, block_hash=_HASHES[b % len(_HASHES)]), {})
            if pool.state(b) in (BlockState.OWNED, BlockState.COMMITTED) and pool.refcount(b) > len(
                [x for x in host.writing_blocks() if x == b]
            ):
                probe(config, config_key, partial(_release, block=b), {})
            if config.in_flight:
                victim = host._free[-1] if host._free else (host._evict.order() or [0])[0]
                event = "write" if host._free else "evict_write"
                probe(config, config_key, partial(_write, block=b), {victim: event})
                for s in range(num_slots):
                    probe(config, config_key, partial(_load, slot=s, block=b), {s: "load"})
        for s in range(num_slots):
            probe(config, config_key, partial(_drop, slot=s), {s: "drop"})
        if config.in_flight:
            oldest = config.in_flight[0]
            for failed in (False, True):
                moving = {
                    s: _settle_event(host.state(s), failed)
                    for step, slots in host._in_flight
                    if step <= oldest
                    for s in slots
                }
                probe(config, config_key, partial(_finish_oldest, failed=failed), moving)
        if not config.in_flight and config.launched < _MAX_LAUNCHES:  # one at a time keeps it small
            probe(config, config_key, _launch, {})
    return legal, refused, len(seen)


def _holders(host: HostTier) -> dict[int, int]:
    """Requests are not modelled here: every reference is the test's own or a write's."""
    pool = host.pool
    return {b: pool.refcount(b) for b in range(pool.num_blocks)}


def _settle_event(state: SlotState, failed: bool) -> str:
    kind = "write" if state is SlotState.WRITING else "load"
    return f"{kind}_{'failed' if failed else 'done'}"


def _allocate(config: _Config) -> None:
    config.host.pool.allocate_one()


def _commit(config: _Config, block: int, block_hash: int) -> None:
    pool = config.host.pool
    pool.commit([block], [block_hash], [block_hash % 7] * pool.block_size, pool.root(None))


def _release(config: _Config, block: int) -> None:
    config.host.pool.release([block], config.in_flight[-1] if config.in_flight else None)


def _write(config: _Config, block: int) -> None:
    config.host.write(block, config.in_flight[-1])


def _load(config: _Config, slot: int, block: int) -> None:
    config.host.load(slot, block, config.in_flight[-1])


def _drop(config: _Config, slot: int) -> None:
    config.host.drop(slot)


def _launch(config: _Config) -> None:
    config.in_flight = (*config.in_flight, config.launched)
    config.launched += 1


def _finish_oldest(config: _Config, failed: bool) -> None:
    oldest = config.in_flight[0]
    if failed:
        config.host.step_failed(oldest)
    else:
        config.host.step_completed(oldest)
    config.host.pool.step_completed(oldest)
    config.in_flight = config.in_flight[1:]


@pytest.fixture(scope="module")
def spec() -> MachineSpec:
    return load_spec("host")


@pytest.fixture(scope="module")
def host_runs() -> tuple[Observed, set[tuple[str, str]], int]:
    return derive_host_table()


def test_host_slot_states_are_the_code_enum(spec: MachineSpec) -> None:
    assert list(spec.states) == [s.name.lower() for s in SlotState]
    assert SlotState(0).name.lower() == spec.initial


def test_host_tier_behaviour_matches_the_spec_table(
    spec: MachineSpec, host_runs: tuple[Observed, set[tuple[str, str]], int]
) -> None:
    legal, refused, explored = host_runs
    assert explored > 100, f"only {explored} configurations explored"
    nondeterministic = {k: v for k, v in legal.items() if len(v) > 1}
    assert not nondeterministic, f"one (state, event) led to several states: {nondeterministic}"
    derived = {k: next(iter(v)) for k, v in legal.items()}
    expected = spec.table()
    missing = {k: v for k, v in expected.items() if k not in derived}
    extra = {k: v for k, v in derived.items() if expected.get(k) != v}
    assert not missing, f"spec transitions the tier never takes: {missing}"
    assert not extra, f"tier transitions the spec does not have: {extra}"
    guarded = {("resident", "load"), ("free", "write"), ("resident", "evict_write")}  # refused when a guard fails
    assert not (refused & set(expected)) - guarded, f"the tier refused transitions of the spec: {refused}"
    assert {("free", "load"), ("writing", "load"), ("loading", "load"), ("loading", "drop")} <= refused
