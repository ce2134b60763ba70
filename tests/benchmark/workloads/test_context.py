import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokensched.benchmark.workloads.context import SessionContext, draw_tokens


def _reference_draw(rng: random.Random, count: int, vocab_size: int) -> list[int]:
    """The ids one by one: each pair of random bytes a little-endian word, reduced below the vocabulary."""
    if count <= 0:
        return []
    data = rng.randbytes(2 * count)
    words = [int.from_bytes(data[i : i + 2], "little") for i in range(0, len(data), 2)]
    return [w % vocab_size for w in words] if vocab_size < 1 << 16 else words


@given(
    seed=st.integers(0, 2**32),
    count=st.integers(-2, 3_000),
    vocab_size=st.sampled_from([2, 1_000, 50_000, 65_535, 65_536, 262_144]),
)
@settings(deadline=None)
def test_drawn_tokens_are_the_words_one_by_one_and_the_stream_moves_the_same(
    seed: int, count: int, vocab_size: int
) -> None:
    fast, reference = random.Random(seed), random.Random(seed)
    assert draw_tokens(fast, count, vocab_size).tolist() == _reference_draw(reference, count, vocab_size)
    assert fast.random() == reference.random()  # the same bytes were consumed


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("extend"), st.lists(st.integers(0, 2**31 - 1), max_size=50)),
        st.tuples(st.just("draw"), st.integers(0, 70_000)),
        st.tuples(st.just("truncate"), st.floats(0.0, 1.0)),
        st.tuples(st.just("prompt"), st.none()),
    ),
    max_size=30,
)


@given(ops=_OPS, seed=st.integers(0, 1_000))
@settings(deadline=None)
def test_a_lent_prompt_never_changes_whatever_the_context_does_after(ops: list[tuple[str, object]], seed: int) -> None:
    context, model = SessionContext(), []
    rng, reference_rng = random.Random(seed), random.Random(seed)
    lent: list[tuple[object, list[int]]] = []
    for op, arg in ops:
        if op == "extend":
            assert isinstance(arg, list)
            context.extend(arg)
            model.extend(arg)
        elif op == "draw":
            assert isinstance(arg, int)
            context.draw(rng, arg, 65_536)
            model.extend(_reference_draw(reference_rng, arg, 65_536))
        elif op == "truncate":
            assert isinstance(arg, float)
            keep = int(arg * len(model))
            context.truncate(keep)
            del model[keep:]
        else:
            prompt = context.prompt()
            assert not prompt.array.flags.writeable
            lent.append((prompt, list(model)))
        assert len(context) == len(model)
        assert context.tolist() == model
    for prompt, snapshot in lent:
        assert prompt == snapshot


def test_truncating_past_the_end_is_refused_and_changes_nothing() -> None:
    context = SessionContext()
    context.extend([1, 2, 3])
    with pytest.raises(ValueError, match="cannot keep 4 tokens of a 3-token context"):
        context.truncate(4)
    assert context.tolist() == [1, 2, 3]
