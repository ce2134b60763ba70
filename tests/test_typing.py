"""mypy refuses ``.blocks`` where a request state has none and matches that miss states; it takes buffer prompts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api")

CASE = Path(__file__).parent / "typing_cases" / "blocks_on_waiting.py"


def test_mypy_refuses_blocks_on_states_without_them_and_non_exhaustive_matches() -> None:
    stdout, _, status = api.run(["--strict", "--no-incremental", "--cache-dir=/dev/null", str(CASE)])
    assert status == 1, stdout
    errors = re.findall(r":(\d+): error: (.*)\[([a-z-]+)\]", stdout)
    lines = {int(line) for line, _, _ in errors}
    assert lines == {8, 12, 22}, stdout  # exactly the three marked lines, nothing else (buffer prompts pass)
    assert any(code == "attr-defined" and '"Waiting" has no attribute "blocks"' in msg for _, msg, code in errors)
    assert {msg.split('"')[1] for line, msg, code in errors if line == "12" and code == "union-attr"} == {
        "Waiting",
        "Preempted",
        "Finished",
    }
    assert any(line == "22" and "Preempted | Finished" in msg for line, msg, _ in errors)
