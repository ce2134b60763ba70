"""The examples in the simulator's docstrings stay true."""

from __future__ import annotations

import doctest
from types import ModuleType

import pytest

import tokensched_sim
from tokensched_sim import cost, decode_cost, draft, executor


@pytest.mark.parametrize("module", [tokensched_sim, cost, decode_cost, executor, draft], ids=lambda m: m.__name__)
def test_docstring_examples(module: ModuleType) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0
    assert result.failed == 0
