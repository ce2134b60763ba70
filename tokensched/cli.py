"""The ``tokensched`` command: a typer app whose subcommands are thin layers over the library.

``tokensched bench`` (:mod:`tokensched.benchmark.cli`) sweeps load levels of the
coding-agent workload over the simulated GPU for each engine profile and writes
``bench.json`` and ``bench.png`` into the output folder. Add a
subcommand with ``@app.command()``; keep the work in the library.
"""

from __future__ import annotations

from typing import Annotated

import typer

from tokensched.benchmark.cli import bench_command
from tokensched.cluster.cli import cluster_command
from tokensched.server.cli import serve_command

app = typer.Typer(
    name="tokensched",
    help="A typed finite-state-machine scheduler for LLM inference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """A typed finite-state-machine scheduler for LLM inference."""


app.command("bench")(bench_command)


@app.command()
def specs(
    check: Annotated[bool, typer.Option(help="exit 1 if docs/machines is stale instead of writing it")] = False,
) -> None:
    """Regenerate the machines' Mermaid diagrams and docs (docs/machines/) from specs/."""
    from tokensched.machines.specdoc import main as specdoc_main

    raise typer.Exit(specdoc_main(["--check"] if check else []))


app.command("serve")(serve_command)
app.command("cluster")(cluster_command)


def main() -> None:
    """Entry point of the ``tokensched`` script."""
    app()
