"""Stop strings: found across piece boundaries, never leaked, nothing else held back for long."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tokensched.server.generation import StopMatcher


def run(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = []
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        out.append(text)
        if stopped:
            return "".join(out), True
    out.append(matcher.flush())
    return "".join(out), False


def test_a_stop_string_split_across_pieces_is_found_and_not_sent() -> None:
    assert run(["STOP"], ["abc ST", "O", "P and more"]) == ("abc ", True)


def test_a_near_miss_is_released_once_it_cannot_be_a_stop() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("abc ST") == ("abc ", False)
    assert matcher.feed("OX") == ("STOX", False)


def test_the_earliest_of_several_stop_strings_wins() -> None:
    assert run(["world", "lo"], ["hello world"]) == ("hel", True)


def test_without_stop_strings_everything_passes_straight_through() -> None:
    matcher = StopMatcher([])
    assert matcher.feed("abc") == ("abc", False)
    assert matcher.flush() == ""


alphabet = st.text(alphabet="abST", max_size=12)


@given(st.lists(alphabet, max_size=8), st.text(alphabet="abST", min_size=1, max_size=3))
def test_streamed_output_is_the_text_before_the_stop_string_however_it_is_split(pieces: list[str], stop: str) -> None:
    whole = "".join(pieces)
    hit = whole.find(stop)
    assert run([stop], pieces) == ((whole[:hit], True) if hit >= 0 else (whole, False))


def test_with_several_stop_strings_the_first_one_completed_ends_the_output() -> None:
    # "b" completes before "abc" does, as it would for a client reading the stream
    assert run(["abc", "b"], ["a", "b", "c"]) == ("a", True)
