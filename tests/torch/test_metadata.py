"""The per-step metadata the attention backends consume (the FlashInfer CSR conventions)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tests.torch.plans import HandPlanner  # noqa: E402
from tokensched.errors import InvalidRequest  # noqa: E402
from tokensched_torch import MLAStepMetadata  # noqa: E402


def test_metadata_follows_the_flashinfer_csr_layout() -> None:
    planner = HandPlanner(16, 4)
    planner.free = [9, 2, 7, 5, 11, 0][::-1]
    planner.add("a", list(range(6)))
    planner.add("b", list(range(3)))
    first = planner.plan({"a": 6, "b": 2})
    # a holds blocks 9, 2; b holds 7.
    meta = MLAStepMetadata.build(first, [(9, 2), (7,)], torch.device("cpu"))
    assert meta.qo_indptr.tolist() == [0, 6, 8]
    assert meta.kv_lens.tolist() == [6, 2]
    assert meta.kv_indptr.tolist() == [0, 2, 3]
    assert meta.kv_indices.tolist() == [9, 2, 7]
    assert meta.positions.tolist() == [0, 1, 2, 3, 4, 5, 0, 1]
    assert meta.slot_mapping.tolist() == [36, 37, 38, 39, 8, 9, 28, 29]
    assert meta.qo_indptr.dtype == meta.kv_indices.dtype == torch.int32


def test_a_block_table_shorter_than_the_kv_is_refused() -> None:
    planner = HandPlanner(16, 4)
    planner.add("a", list(range(6)))
    plan = planner.plan({"a": 6})
    with pytest.raises(InvalidRequest, match="needs 2 blocks"):
        MLAStepMetadata.build(plan, [planner.requests["a"].blocks[:1]], torch.device("cpu"))


def test_a_slot_mapping_that_disagrees_with_the_block_table_is_refused() -> None:
    planner = HandPlanner(16, 4)
    planner.add("a", list(range(6)))
    plan = planner.plan({"a": 6})
    wrong_table = list(reversed(planner.requests["a"].blocks))
    with pytest.raises(InvalidRequest, match="position 0 maps to slot"):
        MLAStepMetadata.build(plan, [wrong_table], torch.device("cpu"))
