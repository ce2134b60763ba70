"""The examples are runnable programs; run them as a user would."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("script", ["embed.py", "custom_policy.py"])
def test_example_runs(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script)], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "the example printed nothing"


def test_embed_example_answers_every_request() -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import embed
    finally:
        sys.path.pop(0)
    answers = embed.main()
    assert sorted(answers) == [f"req-{i}" for i in range(4)]
    for tokens in answers.values():
        assert 1 <= len(tokens) <= 8
        assert all(b == (a + 1) % 100 for a, b in itertools.pairwise(tokens))
