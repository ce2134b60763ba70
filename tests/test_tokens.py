"""Token ids as int32 buffers: one conversion at the edge, clear errors, sequences that still act like lists."""

from __future__ import annotations

import re
from array import array

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokensched import RequestSpec, Scheduler, SchedulerConfig, StepResult
from tokensched.tokens import TokenBuffer, TokenIds, as_token_array


@pytest.mark.parametrize(
    "tokens",
    [
        [1, 2, 3],
        (1, 2, 3),
        np.array([1, 2, 3], dtype=np.int64),
        np.array([1, 2, 3], dtype=np.uint16),
        array("i", [1, 2, 3]),
    ],
)
def test_every_buffer_kind_becomes_the_same_int32_array(tokens: object) -> None:
    spec = RequestSpec(request_id="a", prompt_token_ids=tokens)
    ids = spec.prompt_token_ids
    assert isinstance(ids, TokenIds) and ids.array.dtype == np.int32
    assert ids == [1, 2, 3] and list(ids) == [1, 2, 3] and ids[1] == 2 and ids[1:] == [2, 3]
    assert spec.model_dump()["prompt_token_ids"] == [1, 2, 3]
    assert RequestSpec.model_validate_json(spec.model_dump_json()) == spec


def test_the_prompt_is_copied_once_so_the_caller_may_reuse_its_buffer() -> None:
    source = np.array([4, 5, 6], dtype=np.int32)
    spec = RequestSpec(request_id="a", prompt_token_ids=source)
    source[0] = 9
    assert spec.prompt_token_ids == [4, 5, 6]
    assert not spec.prompt_token_ids.array.flags.writeable  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        ([], "at least one token"),
        ([1, -2, 3], "position 1 holds -2"),
        ([1, 2, 2**31], "position 2 holds 2147483648"),
        ([1, 2**70], "position 1 holds"),
        ([1, 2.5], "position 1 holds 2.5"),
        ([1, "3"], "position 1 holds '3'"),
        ([1, None], "position 1 holds None"),
        ([1, True, 3], "position 1 holds True"),
        ((0, 1, False), "position 2 holds False"),
        ([2**40, 2.5], "position 0 holds 1099511627776"),
        ([5, np.True_], "position 1 holds"),
        (np.array([0, 5, -1]), "position 2 holds -1"),
        (np.array([1.0, 2.0]), "dtype float64"),
        (np.zeros((2, 2), dtype=np.int32), "one-dimensional"),
        (array("d", [1.0]), "typecode 'd'"),
        ("123", "got <class 'str'>"),
    ],
)
def test_bad_token_ids_name_the_first_bad_position(tokens: object, message: str) -> None:
    with pytest.raises(ValueError, match="prompt_token_ids") as info:
        RequestSpec(request_id="a", prompt_token_ids=tokens)
    assert message in str(info.value)


def _first_bad(tokens: list[object]) -> int | None:
    """The reference: the first item that is not a non-negative int32 ``int`` (bools are not token ids)."""
    return next(
        (i for i, t in enumerate(tokens) if type(t) is bool or not isinstance(t, int) or not 0 <= t < 2**31), None
    )


_ITEMS = st.one_of(
    st.integers(0, 3),  # 0 and 1 sit where a bool would pack
    st.integers(0, 2**31 - 1),
    st.integers(-(2**33), 2**33),
    st.booleans(),
    st.floats(allow_nan=False),
    st.none(),
)


@given(st.lists(_ITEMS, max_size=40), st.integers(0, 3), st.sampled_from([0, 4090, 8200]))
def test_a_list_converts_exactly_or_names_its_first_bad_item(items: list[object], pad: int, long: int) -> None:
    """The C-level packing and the bool check agree with the one-item-at-a-time reference, across chunk borders."""
    tokens = [pad] * long + items
    before = list(tokens)
    bad = _first_bad(tokens)
    if bad is None:
        values = as_token_array(tokens)
        assert values.dtype == np.int32 and values.tolist() == tokens and not values.flags.writeable
    else:
        with pytest.raises(ValueError, match=re.escape(f"position {bad} holds {tokens[bad]!r}")):
            as_token_array(tokens)
    assert tokens == before and all(type(a) is type(b) for a, b in zip(tokens, before, strict=True))


@given(st.lists(st.integers(0, 2**31 - 1), max_size=50), st.lists(st.integers(0, 2**31 - 1), max_size=80))
def test_token_buffer_grows_like_a_list(prompt: list[int], appended: list[int]) -> None:
    buffer = TokenBuffer(as_token_array(prompt))
    model = list(prompt)
    for token in appended:
        buffer.append(token)
        model.append(token)
        assert len(buffer) == buffer.size == len(model) and buffer[-1] == model[-1] == buffer.at(len(model) - 1)
    assert buffer == model and buffer.tolist() == model and buffer.array.tolist() == model
    assert buffer[3:9] == model[3:9]
    snapshot = buffer.snapshot()
    buffer.append(1)
    assert snapshot == model, "a snapshot does not move with the buffer"


@given(
    st.lists(st.integers(0, 99), max_size=40),
    st.lists(st.tuples(st.sampled_from(["append", "extend", "truncate"]), st.integers(0, 50)), max_size=30),
    st.integers(0, 20),
)
def test_a_read_only_prompt_is_shared_until_written_and_never_written(
    prompt: list[int], ops: list[tuple[str, int]], reserve: int
) -> None:
    values = as_token_array(prompt)  # read-only, as a validated spec's prompt
    before = values.copy()
    buffer = TokenBuffer(values, reserve)
    assert np.shares_memory(buffer.array, values) or not len(prompt), "admission copies nothing"
    model = list(prompt)
    for op, x in ops:
        if op == "append":
            buffer.append(x)
            model.append(x)
        elif op == "extend":
            buffer.extend([x, x + 1])
            model.extend([x, x + 1])
        else:
            buffer.truncate(x)
            del model[x:]
        assert buffer.tolist() == model
    assert np.array_equal(values, before), "the prompt is never written"


def test_token_buffer_refuses_an_index_past_its_end() -> None:
    buffer = TokenBuffer(as_token_array([1, 2]))
    with pytest.raises(IndexError):
        buffer[2]


def test_scheduler_runs_a_numpy_prompt_like_a_list() -> None:
    outputs = []
    for prompt in ([1, 2, 3, 4, 5, 6], np.arange(1, 7, dtype=np.int32)):
        s = Scheduler(SchedulerConfig(num_blocks=16, block_size=4), clock=lambda: 0.0)
        s.submit(RequestSpec(request_id="a", prompt_token_ids=prompt, max_tokens=3))
        seen = []
        while (plan := s.plan()) is not None:
            seen.append((plan.token_ids, [list(n.token_ids) for n in plan.new_requests]))
            s.complete(StepResult(plan.step_id, [[7] if x else [] for x in plan.sample]))
        outputs.append(seen)
        assert all(type(t) is int for t, _ in [(t, 0) for row, _ in seen for t in row])
    assert outputs[0] == outputs[1]
