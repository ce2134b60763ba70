"""The byte tokenizer and the streaming decoder: text survives being cut into arbitrary pieces."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokensched.server.tokenizer import ByteTokenizer, ChatTurn, StreamDecoder, Tokenizer, render_chat
from tokensched.server.wire import ChatMessage


def stream(tokenizer: Tokenizer, ids: Sequence[int], cuts: Sequence[int]) -> str:
    decoder = StreamDecoder(tokenizer)
    pieces = []
    start = 0
    for cut in sorted(set(cuts)):
        pieces.append(decoder.push(ids[start:cut]))
        start = cut
    pieces.append(decoder.push(ids[start:]))
    pieces.append(decoder.flush())
    return "".join(pieces)


@given(st.text(), st.lists(st.integers(min_value=0, max_value=400)))
def test_byte_stream_decoding_reassembles_any_text_however_it_is_cut(text: str, cuts: list[int]) -> None:
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode(text)
    assert stream(tokenizer, ids, [c for c in cuts if c <= len(ids)]) == text


def test_a_half_character_is_held_back_until_its_other_half_arrives() -> None:
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode("é")  # two bytes
    decoder = StreamDecoder(tokenizer)
    assert decoder.push(ids[:1]) == ""
    assert decoder.push(ids[1:]) == "é"


def test_special_and_out_of_range_ids_render_as_nothing() -> None:
    tokenizer = ByteTokenizer(eos_token_id=256)
    assert tokenizer.decode([104, 256, 105, 9999, -1]) == "hi"
    assert tokenizer.vocab_size == 257


def test_printable_mode_renders_every_id_but_eos_as_one_ascii_character() -> None:
    tokenizer = ByteTokenizer(eos_token_id=256, printable=True)
    text = tokenizer.decode([0, 10, 255, 256, 150_000])
    assert len(text) == 4
    assert all(32 <= ord(ch) < 127 for ch in text)


def test_an_eos_id_inside_the_byte_range_is_refused() -> None:
    with pytest.raises(ValueError, match="shadow a byte"):
        ByteTokenizer(eos_token_id=10)


class WordTokenizer:
    """A subword-like tokenizer: ids name whole words and some ids are half a character."""

    words: ClassVar[list[str]] = ["hello", " world", "\xe2", "\x82\xac", "!"]  # ids 2+3 together make the euro sign

    @property
    def eos_token_id(self) -> int | None:
        return None

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError  # the decoder never encodes

    def decode(self, token_ids: Sequence[int]) -> str:
        raw = "".join(self.words[t] for t in token_ids).encode("latin-1")
        return raw.decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: Sequence[ChatTurn]) -> list[int]:
        raise NotImplementedError


def test_generic_tokenizers_stream_without_splitting_a_character() -> None:
    tokenizer = WordTokenizer()
    decoder = StreamDecoder(tokenizer)
    assert decoder.push([0]) == "hello"
    assert decoder.push([1]) == " world"
    assert decoder.push([2]) == ""  # half of the euro sign waits
    assert decoder.push([3]) == "€"
    assert decoder.push([4, 0]) == "!hello"
    assert decoder.flush() == ""


@given(st.lists(st.sampled_from([0, 1, 4]), max_size=30), st.lists(st.integers(0, 30)))
def test_generic_stream_equals_whole_decode(ids: list[int], cuts: list[int]) -> None:
    tokenizer = WordTokenizer()
    assert stream(tokenizer, ids, [c for c in cuts if c <= len(ids)]) == tokenizer.decode(ids)


def test_the_chat_template_ends_with_the_assistant_header_and_keeps_earlier_turns_a_prefix() -> None:
    first = [ChatMessage(role="system", content="be brief"), ChatMessage(role="user", content="hi")]
    second = [*first, ChatMessage(role="assistant", content="hello"), ChatMessage(role="user", content="more")]
    one, two = render_chat(first), render_chat(second)
    assert one == "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n"
    assert two.startswith(one)
    assert ByteTokenizer().apply_chat_template(first) == list(one.encode())
