"""Generate ``docs/machines/*.md`` (Mermaid diagrams and tables) from ``specs/*.toml``.

The docs are a pure function of the specs, so they are regenerated, never
edited, and a test fails when the committed copies are stale::

    python -m tokensched.machines.specdoc            # rewrite docs/machines/
    python -m tokensched.machines.specdoc --check    # exit 1 if any doc is stale

:func:`main` is what the ``tokensched specs`` command calls.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tokensched.machines.spec import MACHINES, MachineSpec, SpecError, load_all, repo_specs_dir


def render(spec: MachineSpec) -> str:
    """The markdown page of one machine (deterministic: same spec, same bytes)."""
    lines = [
        f"# {spec.title}",
        "",
        f"<!-- Generated from specs/{spec.name}.toml by `python -m tokensched.machines.specdoc`; do not edit. -->",
        "",
        _paragraph(spec.description),
        "",
        f"Code: {_cell(spec.code)}.",
        "",
        "```mermaid",
        *mermaid(spec),
        "```",
        "",
        "## States",
        "",
    ]
    with_owns = any(s.owns for s in spec.states.values())
    header = ["State", "Description"] + (["Owns"] if with_owns else [])
    rows = []
    for name, state in spec.states.items():
        marks = " (initial)" if name == spec.initial else " (terminal)" if name in spec.terminal else ""
        row = [f"`{name}`{marks}", _cell(state.description)]
        if with_owns:
            row.append(", ".join(f"`{o}`" for o in state.owns) or "nothing")
        rows.append(row)
    lines += _table(header, rows)
    lines += ["", "## Events", ""]
    with_call = any(e.call for e in spec.events.values())
    header = ["Event", "Description"] + (["Fired by"] if with_call else [])
    rows = []
    for name, event in spec.events.items():
        row = [f"`{name}`", _cell(event.description)]
        if with_call:
            row.append(f"`{event.call}`" if event.call else "")
        rows.append(row)
    lines += _table(header, rows)
    lines += ["", "## Transitions", "", "Every (state, event) pair not listed raises `IllegalTransition`.", ""]
    rows = [
        [
            f"`{t.source}`",
            f"`{t.event}`",
            f"`{t.target}`",
            ", ".join(f"`{g}`" for g in t.guards),
            ", ".join(f"`{e}`" for e in t.effects),
        ]
        for t in spec.transitions
    ]
    lines += _table(["From", "Event", "To", "Guards", "Effects"], rows)
    if spec.guards:
        lines += ["", "## Guards", ""]
        lines += _table(["Guard", "Holds when"], [[f"`{g}`", _cell(d)] for g, d in spec.guards.items()])
    if spec.effects:
        lines += ["", "## Effects", ""]
        lines += _table(["Effect", "What changes"], [[f"`{e}`", _cell(d)] for e, d in spec.effects.items()])
    lines += ["", "## Invariants", ""]
    lines += [f"{i}. {_cell(text)}" for i, text in enumerate(spec.invariants, 1)]
    return "\n".join(lines) + "\n"


def mermaid(spec: MachineSpec) -> list[str]:
    """A ``stateDiagram-v2`` of the machine, one arrow per transition, events as labels."""
    out = ["stateDiagram-v2", f"    [*] --> {spec.initial}"]
    out += [f"    {t.source} --> {t.target}: {t.event}" for t in spec.transitions]
    out += [f"    {t} --> [*]" for t in spec.terminal]
    return out


def _paragraph(text: str) -> str:
    return " ".join(text.split())


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def default_out_dir() -> Path:
    """``<repo>/docs/machines`` in a source checkout, else ``./docs/machines``."""
    repo_specs = repo_specs_dir()
    root = repo_specs.parent if repo_specs is not None else Path.cwd()
    return root / "docs" / "machines"


def rendered() -> dict[str, str]:
    """File name -> contents for every machine's page."""
    return {f"{name}.md": render(spec) for name, spec in load_all().items()}


def stale(out_dir: Path) -> list[str]:
    """Pages under ``out_dir`` that are missing or differ from what the specs generate."""
    return [
        name
        for name, text in rendered().items()
        if not (out_dir / name).is_file() or (out_dir / name).read_text(encoding="utf-8") != text
    ]


def write(out_dir: Path) -> list[str]:
    """Regenerate every page under ``out_dir``; returns the pages that changed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, text in rendered().items():
        path = out_dir / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(name)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """Regenerate (or with ``--check`` verify) the machine docs; returns the exit status."""
    parser = argparse.ArgumentParser(prog="tokensched specs", description="Generate docs/machines from specs/.")
    parser.add_argument("--check", action="store_true", help="exit 1 if any page is stale instead of writing")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <repo>/docs/machines)")
    args = parser.parse_args(argv)
    out_dir: Path = args.out if args.out is not None else default_out_dir()
    try:
        if args.check:
            bad = stale(out_dir)
            if bad:
                print(f"stale machine docs in {out_dir}: {', '.join(bad)}", file=sys.stderr)
                print("regenerate them with: python -m tokensched.machines.specdoc", file=sys.stderr)
                return 1
            print(f"machine docs in {out_dir} are up to date ({len(MACHINES)} machines)")
            return 0
        changed = write(out_dir)
    except SpecError as e:
        print(f"invalid spec: {e}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(changed) or 'nothing (up to date)'} in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
