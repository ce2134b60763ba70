"""specs/*.toml against the code, in both directions, and the generated docs against the specs.

The request and step machines keep their tables as data (``TRANSITIONS``); the
block machine's table is *derived* here by driving a small real BlockPool
through every call on every block from every configuration it can reach, so
the spec is checked against what the pool does rather than what it says.
"""

from __future__ import annotations

import copy
import importlib.resources
import re
import shutil
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
from pydantic import ValidationError

from tokensched.config import RequestSpec
from tokensched.errors import CapacityError, IllegalTransition
from tokensched.machines import request as request_machine
from tokensched.machines import spec as spec_module
from tokensched.machines import specdoc
from tokensched.machines import step as step_machine
from tokensched.machines.blocks import BlockPool, BlockState
from tokensched.machines.spec import MACHINES, MachineSpec, SpecError, load_all, load_spec, parse_spec
from tokensched.plan import FinishReason

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def specs() -> dict[str, MachineSpec]:
    return load_all()


# ------------------------------------------------------------ request machine
def _request_in(state_name: str) -> request_machine.Request:
    request = request_machine.Request.from_spec(RequestSpec(request_id="r", prompt_token_ids=[1, 2, 3]), 0.0, 0)
    request.state = _make_state(state_name)
    return request


def _make_state(state_name: str) -> request_machine.RequestState:
    cls = {name: cls for cls, name in request_machine.STATE_NAMES.items()}[state_name]
    defaults = {"blocks": [], "reason": FinishReason.STOP}
    state: request_machine.RequestState = cls(**{f.name: defaults.get(f.name, 0) for f in attrs.fields(cls)})
    return state


def test_request_spec_and_transitions_table_agree(specs: dict[str, MachineSpec]) -> None:
    spec = specs["request"]
    assert set(spec.states) == set(request_machine.STATE_NAMES.values())
    assert spec.table() == request_machine.TRANSITIONS


def test_request_states_own_exactly_the_resources_the_spec_lists(specs: dict[str, MachineSpec]) -> None:
    for cls, name in request_machine.STATE_NAMES.items():
        fields = tuple(f.name for f in attrs.fields(cls))
        assert fields == specs["request"].states[name].owns, f"state {name!r}: class fields {fields}"


def test_request_transition_accepts_exactly_the_spec_pairs(specs: dict[str, MachineSpec]) -> None:
    spec = specs["request"]
    table = spec.table()
    for source in spec.states:
        for event in [*spec.events, "no_such_event"]:
            for target in spec.states:
                request = _request_in(source)
                before = request.state
                new_state = _make_state(target)
                if table.get((source, event)) == target:
                    request_machine.transition(request, event, new_state)
                    assert request.state is new_state
                else:
                    with pytest.raises(IllegalTransition) as info:
                        request_machine.transition(request, event, new_state)
                    assert request.state is before, f"{source} --{event}--> {target} was refused but changed state"
                    assert (info.value.state, info.value.event) == (source, event)


def test_held_blocks_are_owned_only_by_states_that_own_blocks(specs: dict[str, MachineSpec]) -> None:
    for name, state in specs["request"].states.items():
        instance = _make_state(name)
        if "blocks" in state.owns:
            instance.blocks.append(7)  # type: ignore[union-attr]
            assert request_machine.held_blocks(instance) == [7]
        else:
            assert request_machine.held_blocks(instance) == []


# --------------------------------------------------------------- step machine
def test_step_spec_and_transitions_table_agree(specs: dict[str, MachineSpec]) -> None:
    spec = specs["step"]
    assert set(spec.states) == {s.value for s in step_machine.StepState}
    assert spec.initial == step_machine.Step(0, [], [], [], [], []).state.value
    assert spec.table() == step_machine.TRANSITIONS


def test_step_move_accepts_exactly_the_spec_pairs(specs: dict[str, MachineSpec]) -> None:
    spec = specs["step"]
    for source in spec.states:
        for event in [*spec.events, "close"]:
            step = step_machine.Step(0, [], [], [], [], [], state=step_machine.StepState(source))
            target = spec.table().get((source, event))
            if target is None:
                with pytest.raises(IllegalTransition):
                    step.move(event)
                assert step.state.value == source
            else:
                step.move(event)
                assert step.state.value == target


# -------------------------------------------------------------- block machine
_HASHES = (11,)  # one content: enough for an indexed copy and a duplicate of it
_MAX_LAUNCHES = 2  # two steps: enough to hold a block for a step behind the oldest


@attrs.define
class _Config:
    pool: BlockPool
    in_flight: tuple[int, ...] = ()
    launched: int = 0
    held: frozenset[tuple[int, int]] = frozenset()  # (block, step it waits for)

    def key(self) -> tuple[object, ...]:
        """The pool's whole state, with reuse generations reduced to how they compare.

        Generations count how often a block was handed out and only ever grow;
        two pools whose generations (in every array that holds them) compare
        alike behave alike, so ranking them jointly keeps the search finite.
        """
        pool = self.pool
        slots = type(pool).__slots__
        gens = {slot: [int(v) for v in getattr(pool, slot)] for slot in slots if "gen" in slot}
        rank = {v: i for i, v in enumerate(sorted({v for values in gens.values() for v in values}))}
        return (
            *(repr([rank[v] for v in gens[slot]]) if slot in gens else repr(getattr(pool, slot)) for slot in slots),
            self.in_flight,
            self.launched,
        )


def _indexed_copy(pool: BlockPool, block: int) -> bool:
    """The spec's ``indexed_copy`` guard (the index is private, and PENDING blocks are not matchable)."""
    h = pool.block_hash(block)
    return h is not None and pool._index.get(h) == block


def _release_event(pool: BlockPool, block: int, hold: int | None) -> str:
    if pool.refcount(block) > 1:
        return "release_shared"
    if hold is not None:
        return "release_held"
    return "release_cached" if _indexed_copy(pool, block) else "release_uncached"


Observed = dict[tuple[str, str], set[tuple[str, int, int]]]  # (state, event) -> {(next state, refcount before, after)}


def derive_block_table(num_blocks: int = 2) -> tuple[Observed, set[tuple[str, str]], int]:
    """Drive every BlockPool call on every block from every reachable configuration.

    Two blocks show every transition of the spec (the test below fails on one
    missing); three made the search explode once the pool kept chain links,
    depths and an eviction order (over 80,000 configurations and growing).

    Returns ``(state, event) -> (target, refcount before, refcount after)`` observed, the pairs refused with
    IllegalTransition, and the number of configurations explored. A refused
    call must change nothing, and a call must move only the blocks it names
    (for ``allocate`` the block it returns, for ``step_completed`` the blocks
    held for that step).
    """
    seen: set[tuple[object, ...]] = set()
    legal: Observed = {}
    refused: set[tuple[str, str]] = set()
    todo = deque([_Config(BlockPool(num_blocks))])

    def probe(config: _Config, call: Callable[[_Config], dict[int, str] | None], events: dict[int, str]) -> None:
        trial = copy.deepcopy(config)
        pool = trial.pool
        before = [(pool.state(b), pool.refcount(b)) for b in range(num_blocks)]
        try:
            events = call(trial) or events
        except (IllegalTransition, CapacityError):
            assert trial.key() == config.key(), "a refused call changed the pool"
            refused.update((before[b][0].name.lower(), e) for b, e in events.items())
            return
        for b in range(num_blocks):
            after = pool.state(b)
            if b in events:
                seen_move = (after.name.lower(), before[b][1], pool.refcount(b))
                legal.setdefault((before[b][0].name.lower(), events[b]), set()).add(seen_move)
            else:
                assert (after, pool.refcount(b)) == before[b], f"block {b} moved as a side effect"
        if trial.key() not in seen and max(pool.refcount(b) for b in range(num_blocks)) <= 2:
            seen.add(trial.key())
            todo.append(trial)

    while todo:
        config = todo.popleft()
        pool = config.pool
        hold = config.in_flight[-1] if config.in_flight else None
        for b in range(num_blocks):
            for h in _HASHES:
                probe(config, partial(_commit, block=b, block_hash=h), {b: "commit"})
            probe(config, partial(_share, block=b), {b: "share"})
            probe(config, partial(_release, block=b, hold=hold), {b: _release_event(pool, b, hold)})
        event = "allocate" if pool.counts()[BlockState.FREE] else "evict"
        probe(config, partial(_allocate, event=event), {})
        if config.in_flight:
            oldest = config.in_flight[0]
            settling = {
                b: "settle_cached" if _indexed_copy(pool, b) else "settle_uncached"
                for b, step in config.held
                if step <= oldest
            }
            probe(config, partial(_complete_oldest, settling=settling), {})
        if len(config.in_flight) < 2 and config.launched < _MAX_LAUNCHES:
            probe(config, _launch, {})
    return legal, refused, len(seen)


def _commit(config: _Config, block: int, block_hash: int) -> None:
    pool = config.pool
    pool.commit([block], [block_hash], [0] * pool.block_size, pool.root(None))


def _share(config: _Config, block: int) -> None:
    config.pool.share([block])


def _allocate(config: _Config, event: str) -> dict[int, str]:
    return {config.pool.allocate_one(): event}


def _release(config: _Config, block: int, hold: int | None) -> None:
    config.pool.release([block], hold)
    if hold is not None and config.pool.state(block) is BlockState.PENDING:
        config.held |= {(block, hold)}


def _launch(config: _Config) -> None:
    config.in_flight = (*config.in_flight, config.launched)
    config.launched += 1


def _complete_oldest(config: _Config, settling: dict[int, str]) -> dict[int, str]:
    oldest = config.in_flight[0]
    config.pool.step_completed(oldest)
    config.in_flight = config.in_flight[1:]
    config.held = frozenset((b, step) for b, step in config.held if step > oldest)
    return settling


def test_block_states_are_the_code_enum(specs: dict[str, MachineSpec]) -> None:
    assert list(specs["blocks"].states) == [s.name.lower() for s in BlockState]
    assert BlockState(0).name.lower() == specs["blocks"].initial


@pytest.fixture(scope="module")
def block_runs() -> tuple[Observed, set[tuple[str, str]], int]:
    return derive_block_table()


def test_block_pool_behaviour_matches_the_spec_table(
    specs: dict[str, MachineSpec], block_runs: tuple[Observed, set[tuple[str, str]], int]
) -> None:
    legal, refused, explored = block_runs
    assert explored > 100, f"only {explored} pool configurations explored"
    targets = {k: {target for target, _, _ in v} for k, v in legal.items()}
    nondeterministic = {k: v for k, v in targets.items() if len(v) > 1}
    assert not nondeterministic, f"one (state, event) led to several states: {nondeterministic}"
    derived = {k: next(iter(v)) for k, v in targets.items()}
    expected = specs["blocks"].table()
    missing = {k: v for k, v in expected.items() if k not in derived}
    extra = {k: v for k, v in derived.items() if expected.get(k) != v}
    assert not missing, f"spec transitions the pool never takes: {missing}"
    assert not extra, f"pool transitions the spec does not have: {extra}"
    assert not refused & set(expected), f"the pool refused transitions of the spec: {refused & set(expected)}"


def test_block_pool_refcounts_follow_the_spec_effects(
    specs: dict[str, MachineSpec], block_runs: tuple[Observed, set[tuple[str, str]], int]
) -> None:
    """``refcount_up``/``refcount_down``/``refcount_one`` in the spec are what each call does; no effect, no change."""
    legal, _, _ = block_runs
    for t in specs["blocks"].transitions:
        for _, before, after in legal[(t.source, t.event)]:
            if "refcount_up" in t.effects:
                expected = before + 1
            elif "refcount_down" in t.effects:
                expected = before - 1
            elif "refcount_one" in t.effects:
                expected = 1
            else:
                expected = before
            assert after == expected, f"{t.source} --{t.event}-->: refcount {before} -> {after}, spec says {expected}"


# ----------------------------------------------------------------- validation
_MINIMAL: dict[str, Any] = {
    "name": "toy",
    "title": "Toy",
    "description": "A toy machine.",
    "code": "nowhere",
    "initial": "a",
    "terminal": ["c"],
    "invariants": ["none"],
    "states": {"a": {"description": "A."}, "b": {"description": "B."}, "c": {"description": "C."}},
    "events": {"go": {"description": "Go."}, "stop": {"description": "Stop."}},
    "guards": {"ready": "Ready."},
    "effects": {"tick": "Tick."},
    "transitions": [
        {"from": "a", "event": "go", "to": "b", "guards": ["ready"]},
        {"from": "b", "event": "stop", "to": "c", "effects": ["tick"]},
    ],
}


def _with(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(_MINIMAL)
    data.update(changes)
    return data


def test_minimal_spec_is_valid() -> None:
    assert MachineSpec.model_validate(_MINIMAL).table() == {("a", "go"): "b", ("b", "stop"): "c"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_with(transitions=[*_MINIMAL["transitions"], {"from": "x", "event": "go", "to": "c"}]), "unknown state 'x'"),
        (_with(transitions=[*_MINIMAL["transitions"], {"from": "a", "event": "jump", "to": "c"}]), "unknown event"),
        (
            _with(transitions=[*_MINIMAL["transitions"], {"from": "a", "event": "go", "to": "c"}]),
            "duplicate ('a', 'go')",
        ),
        (
            _with(transitions=[{"from": "a", "event": "go", "to": "c"}, {"from": "b", "event": "stop", "to": "c"}]),
            "state 'b' is unreachable",
        ),
        (
            _with(transitions=[*_MINIMAL["transitions"], {"from": "c", "event": "go", "to": "a"}]),
            "terminal state 'c' has outgoing",
        ),
        (
            _with(
                transitions=[
                    {"from": "a", "event": "go", "to": "b"},
                    {"from": "b", "event": "stop", "to": "b"},
                    {"from": "a", "event": "stop", "to": "c"},
                ]
            ),
            "state 'b' cannot reach a terminal",
        ),
        (_with(terminal=[]), "state 'c' has no outgoing transition"),
        (_with(initial="z"), "initial state 'z' is not a declared state"),
        (_with(guards={"ready": "Ready.", "unused": "Never."}), "guard 'unused' is used by no transition"),
        (_with(events={**_MINIMAL["events"], "idle": {"description": "Idle."}}), "event 'idle' has no transition"),
        (
            _with(
                transitions=[
                    {"from": "a", "event": "go", "to": "b", "guards": ["nope"]},
                    {"from": "b", "event": "stop", "to": "c", "effects": ["tick"]},
                ]
            ),
            "unknown guard 'nope'",
        ),
        (_with(colour="red"), "Extra inputs are not permitted"),
    ],
)
def test_invalid_specs_are_refused_with_a_clear_message(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        MachineSpec.model_validate(data)


def test_parse_spec_names_the_file_at_fault() -> None:
    with pytest.raises(SpecError, match=r"^toy\.toml: not valid TOML"):
        parse_spec("name = ", "toy.toml")
    text = (REPO / "specs" / "step.toml").read_text().replace('initial = "planned"', 'initial = "nowhere"')
    with pytest.raises(SpecError, match=r"^toy\.toml: .*initial state 'nowhere' is not a declared state"):
        parse_spec(text, "toy.toml")


# -------------------------------------------------------------------- loading
def test_specs_load_from_the_repository() -> None:
    directory = spec_module.specs_dir()
    assert sorted(p.name for p in directory.iterdir() if p.name.endswith(".toml")) == sorted(
        f"{m}.toml" for m in MACHINES
    )


def test_packaged_specs_win_over_the_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    packaged = tmp_path / "_specs"
    shutil.copytree(REPO / "specs", packaged)
    text = (packaged / "step.toml").read_text().replace('title = "Step lifecycle"', 'title = "Packaged steps"')
    (packaged / "step.toml").write_text(text)
    monkeypatch.setattr(importlib.resources, "files", lambda package: tmp_path)
    assert load_spec("step").title == "Packaged steps"


def test_a_spec_must_declare_the_machine_its_file_names(tmp_path: Path) -> None:
    shutil.copy(REPO / "specs" / "step.toml", tmp_path / "request.toml")
    with pytest.raises(SpecError, match="declares machine 'step', expected 'request'"):
        load_spec("request", tmp_path)


# ----------------------------------------------------------------------- docs
def test_committed_machine_docs_are_up_to_date() -> None:
    stale = specdoc.stale(REPO / "docs" / "machines")
    assert not stale, f"stale {stale}: run `python -m tokensched.machines.specdoc` and commit docs/machines/"


def test_specdoc_check_fails_on_stale_docs_and_write_fixes_them(tmp_path: Path) -> None:
    assert specdoc.main(["--check", "--out", str(tmp_path)]) == 1
    assert specdoc.main(["--out", str(tmp_path)]) == 0
    assert specdoc.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "step.md").write_text("edited by hand\n")
    assert specdoc.main(["--check", "--out", str(tmp_path)]) == 1


def test_docs_draw_every_transition(specs: dict[str, MachineSpec]) -> None:
    for spec in specs.values():
        page = specdoc.render(spec)
        assert "```mermaid\nstateDiagram-v2\n" in page
        for t in spec.transitions:
            assert f"    {t.source} --> {t.target}: {t.event}\n" in page
        for text in spec.invariants:
            assert " ".join(text.split()) in page
