"""The machines as declarative data: ``specs/*.toml`` loaded and validated with pydantic.

A spec names a machine's states, events, guards and effects, and lists its
transitions as ``(from, event) -> to`` rows with the guards that must hold and
the effects that follow. The runtime tables (``request.TRANSITIONS``,
``step.TRANSITIONS``, the block pool's behaviour) are checked against these
files by ``tests/test_specs.py``, and ``docs/machines/*.md`` are generated from
them by :mod:`tokensched.machines.specdoc`, so the picture, the words and the
code cannot drift apart unnoticed.

Validation refuses a spec that could not describe a deterministic machine:
unknown names, two transitions for one ``(state, event)``, states the initial
state cannot reach, non-terminal states with no way out, terminal states with
one, and states from which no terminal state (or, for a machine without
terminal states, the initial state) can be reached.

Example::

    >>> from tokensched.machines.spec import load_spec
    >>> load_spec("request").table()[("waiting", "admit")]
    'prefilling'
"""

from __future__ import annotations

import re
import tomllib
from collections import deque
from collections.abc import Iterable, Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tokensched.errors import TokenschedError

MACHINES = ("request", "blocks", "host", "step")
"""The machines that have a spec, in the order the docs list them."""

_NAME = r"^[a-z][a-z0-9_]*$"


class SpecError(TokenschedError, ValueError):
    """A spec file that cannot be read or does not describe a valid machine."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class StateSpec(_Strict):
    description: str = Field(min_length=1)
    owns: tuple[str, ...] = Field(default=(), description="resources valid in this state (and only in it)")


class EventSpec(_Strict):
    description: str = Field(min_length=1)
    call: str | None = Field(default=None, description="the code entry point that fires the event")


class TransitionSpec(_Strict):
    source: str = Field(alias="from")
    event: str
    target: str = Field(alias="to")
    guards: tuple[str, ...] = ()
    effects: tuple[str, ...] = ()


class MachineSpec(_Strict):
    """One machine: its states, events, named guards and effects, transitions and invariants."""

    name: str = Field(pattern=_NAME)
    title: str = Field(min_length=1)
    description: str = Field(min_length=1)
    code: str = Field(min_length=1, description="where the machine lives in the code")
    initial: str
    terminal: tuple[str, ...] = ()
    states: dict[str, StateSpec] = Field(min_length=1)
    events: dict[str, EventSpec] = Field(min_length=1)
    guards: dict[str, str] = Field(default_factory=dict)
    effects: dict[str, str] = Field(default_factory=dict)
    transitions: tuple[TransitionSpec, ...] = Field(min_length=1)
    invariants: tuple[str, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _well_formed(self) -> MachineSpec:
        problems = _name_problems(self) + _transition_problems(self)
        states = set(self.states)
        if self.initial in states and all({t.source, t.target} <= states for t in self.transitions):
            problems += _graph_problems(self)  # only meaningful on a table whose states resolve
        if problems:
            raise ValueError(f"machine {self.name!r}: " + "; ".join(problems))
        return self

    def table(self) -> dict[tuple[str, str], str]:
        """``(state, event) -> next state``, the shape of the runtime tables."""
        return {(t.source, t.event): t.target for t in self.transitions}

    def outgoing(self, state: str) -> list[TransitionSpec]:
        return [t for t in self.transitions if t.source == state]

    def reachable(self, start: str) -> set[str]:
        """States reachable from ``start`` (itself included)."""
        return _reach(self.table(), start)


def _name_problems(spec: MachineSpec) -> list[str]:
    problems: list[str] = []
    for kind, names in (("state", spec.states), ("event", spec.events), ("guard", spec.guards)):
        problems += [f"{kind} name {n!r} is not snake_case" for n in names if not re.match(_NAME, n)]
    problems += [f"effect name {n!r} is not snake_case" for n in spec.effects if not re.match(_NAME, n)]
    if spec.initial not in spec.states:
        problems.append(f"initial state {spec.initial!r} is not a declared state")
    problems += [f"terminal state {t!r} is not a declared state" for t in spec.terminal if t not in spec.states]
    if spec.initial in spec.terminal:
        problems.append(f"initial state {spec.initial!r} cannot be terminal")
    return problems


def _transition_problems(spec: MachineSpec) -> list[str]:
    problems: list[str] = []
    seen: dict[tuple[str, str], int] = {}
    for i, t in enumerate(spec.transitions):
        where = f"transition {i} ({t.source} --{t.event}--> {t.target})"
        if t.source not in spec.states:
            problems.append(f"{where}: unknown state {t.source!r}")
        if t.target not in spec.states:
            problems.append(f"{where}: unknown state {t.target!r}")
        if t.event not in spec.events:
            problems.append(f"{where}: unknown event {t.event!r}")
        problems += [f"{where}: unknown guard {g!r}" for g in t.guards if g not in spec.guards]
        problems += [f"{where}: unknown effect {e!r}" for e in t.effects if e not in spec.effects]
        problems += _duplicates(where, "guard", t.guards) + _duplicates(where, "effect", t.effects)
        key = (t.source, t.event)
        if key in seen:
            problems.append(f"{where}: duplicate ({t.source!r}, {t.event!r}); transition {seen[key]} already has it")
        else:
            seen[key] = i
    used_events = {t.event for t in spec.transitions}
    problems += [f"event {e!r} has no transition" for e in spec.events if e not in used_events]
    used_guards = {g for t in spec.transitions for g in t.guards}
    problems += [f"guard {g!r} is used by no transition" for g in spec.guards if g not in used_guards]
    used_effects = {e for t in spec.transitions for e in t.effects}
    problems += [f"effect {e!r} is used by no transition" for e in spec.effects if e not in used_effects]
    return problems


def _duplicates(where: str, kind: str, names: Iterable[str]) -> list[str]:
    names = list(names)
    return [f"{where}: {kind} {n!r} listed twice" for n in sorted(set(names)) if names.count(n) > 1]


def _graph_problems(spec: MachineSpec) -> list[str]:
    table = spec.table()
    problems: list[str] = []
    reachable = _reach(table, spec.initial)
    problems += [f"state {s!r} is unreachable from {spec.initial!r}" for s in spec.states if s not in reachable]
    terminal = set(spec.terminal)
    for state in spec.states:
        out = [key for key in table if key[0] == state]
        if state in terminal and out:
            problems.append(f"terminal state {state!r} has outgoing transitions {sorted(e for _, e in out)}")
        elif state not in terminal and not out:
            problems.append(f"state {state!r} has no outgoing transition but is not terminal")
    goal = terminal or {spec.initial}
    what = "a terminal state" if terminal else f"the initial state {spec.initial!r}"
    for state in spec.states:
        if state in reachable and state not in goal and not (_reach(table, state) - {state}) & goal:
            problems.append(f"state {state!r} cannot reach {what}")
    return problems


def _reach(table: Mapping[tuple[str, str], str], start: str) -> set[str]:
    seen = {start}
    todo = deque([start])
    while todo:
        state = todo.popleft()
        for (source, _), target in table.items():
            if source == state and target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


# ------------------------------------------------------------------- loading
def specs_dir() -> Traversable:
    """Where the spec files are: inside the installed package, else the repository's ``specs/``.

    A wheel carries them as ``tokensched/_specs`` (pyproject force-includes
    them); a source checkout or an editable install reads ``<repo>/specs``.
    """
    packaged = resources.files("tokensched") / "_specs"
    if packaged.is_dir():
        return packaged
    repo = repo_specs_dir()
    if repo is None:
        raise SpecError("no specs found: neither tokensched/_specs nor <repo>/specs exists")
    return repo


def repo_specs_dir() -> Path | None:
    """``<repo>/specs`` when running from a source checkout, else None."""
    repo = Path(__file__).resolve().parents[2] / "specs"
    return repo if repo.is_dir() else None


def parse_spec(text: str, source: str) -> MachineSpec:
    """Parse and validate one spec's TOML text; ``source`` names it in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{source}: not valid TOML: {e}") from e
    try:
        return MachineSpec.model_validate(data)
    except ValidationError as e:
        details = "; ".join(f"{'.'.join(map(str, err['loc'])) or '<spec>'}: {err['msg']}" for err in e.errors())
        raise SpecError(f"{source}: {details}") from e


def load_spec(name: str, directory: Traversable | Path | None = None) -> MachineSpec:
    """The validated spec of machine ``name`` (``request``, ``blocks`` or ``step``)."""
    base = directory if directory is not None else specs_dir()
    path = base / f"{name}.toml"
    if not path.is_file():
        raise SpecError(f"no spec for machine {name!r} at {path}")
    spec = parse_spec(path.read_text(encoding="utf-8"), str(path))
    if spec.name != name:
        raise SpecError(f"{path}: declares machine {spec.name!r}, expected {name!r}")
    return spec


def load_all(directory: Traversable | Path | None = None) -> dict[str, MachineSpec]:
    """Every machine's spec, keyed by name, in :data:`MACHINES` order."""
    return {name: load_spec(name, directory) for name in MACHINES}
