"""Text to token ids and back: a small Protocol, a byte-level default, and a streaming decoder.

The server needs only four things from a tokenizer, so any real one (a
Hugging Face tokenizer, tiktoken, sentencepiece) plugs in through a thin
adapter. The default maps each UTF-8 byte to its own id: it needs no
download, round-trips any text exactly, and fits the tiny torch model, whose
vocabulary is the 256 bytes.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import Protocol, runtime_checkable


class ChatTurn(Protocol):
    """What a chat template reads from one message (the wire model satisfies it)."""

    @property
    def role(self) -> str: ...

    @property
    def text(self) -> str: ...


@runtime_checkable
class Tokenizer(Protocol):
    """What the server needs from a tokenizer.

    ``decode`` must tolerate ids it cannot render (special ids, ids past its
    vocabulary that a random model may sample) by rendering them as nothing or
    as U+FFFD, never by raising: the ids come from the model, not the user.
    """

    @property
    def eos_token_id(self) -> int | None: ...

    @property
    def vocab_size(self) -> int:
        """Ids at or past this are refused in token-id prompts."""
        ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...

    def apply_chat_template(self, messages: Sequence[ChatTurn]) -> list[int]:
        """Token ids of the conversation followed by the prompt for the assistant's next turn."""
        ...


BYTE_VOCAB_SIZE = 256
_PRINTABLE = bytes(range(32, 127))


class ByteTokenizer:
    """One id per UTF-8 byte, optionally an end-of-sequence id past them.

    The chat template is plain text, one ``<|role|>`` header per turn, so that
    a byte-level model sees a stable prefix for every turn of a session (the
    prefix cache then serves the earlier turns).

    ``printable=True`` renders every generated id as one printable ASCII
    character (``id`` folded onto the 95 of them): for executors whose ids
    are not text, like the simulated GPU, whose vocabulary is a real model's.
    One id stays one character, so a client that counts tokens by bytes
    counts what the server generated.

    >>> ByteTokenizer().decode(ByteTokenizer().encode("héllo"))
    'héllo'
    """

    def __init__(self, eos_token_id: int | None = None, *, printable: bool = False) -> None:
        if eos_token_id is not None and eos_token_id < BYTE_VOCAB_SIZE:
            raise ValueError(f"eos_token_id {eos_token_id} would shadow a byte; use an id >= {BYTE_VOCAB_SIZE}")
        self._eos_token_id = eos_token_id
        self._printable = printable

    @property
    def eos_token_id(self) -> int | None:
        return self._eos_token_id

    @property
    def vocab_size(self) -> int:
        return BYTE_VOCAB_SIZE if self._eos_token_id is None else self._eos_token_id + 1

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.decode_bytes(token_ids).decode("utf-8", errors="replace")

    def decode_bytes(self, token_ids: Sequence[int]) -> bytes:
        """The bytes the ids stand for; special ids render as nothing."""
        eos = self._eos_token_id
        if self._printable:
            return bytes(_PRINTABLE[t % len(_PRINTABLE)] for t in token_ids if t != eos and t >= 0)
        return bytes(t for t in token_ids if 0 <= t < BYTE_VOCAB_SIZE)

    def apply_chat_template(self, messages: Sequence[ChatTurn]) -> list[int]:
        return self.encode(render_chat(messages))


def render_chat(messages: Sequence[ChatTurn]) -> str:
    """The plain-text chat template: ``<|role|>\\ntext\\n`` per turn, then ``<|assistant|>\\n``."""
    parts = [f"<|{m.role}|>\n{m.text}\n" for m in messages]
    parts.append("<|assistant|>\n")
    return "".join(parts)


class StreamDecoder:
    """Turns a request's token ids into text pieces as they arrive.

    A byte-level id can be half of a multi-byte character, and a subword
    tokenizer can render a token differently once its neighbour is known, so
    a piece is released only when it is stable: for the byte tokenizer an
    incremental UTF-8 decoder holds back incomplete characters; for any other
    tokenizer the last few ids are re-decoded and text ending in U+FFFD waits
    for the next token. Work per token stays bounded by the window.
    """

    _WINDOW = 6  # ids re-decoded for context by the generic path

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._bytes = tokenizer if isinstance(tokenizer, ByteTokenizer) else None
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._ids: list[int] = []
        self._prefix_offset = 0  # ids before this are context only
        self._read_offset = 0  # ids before this have been released as text

    def push(self, token_ids: Sequence[int]) -> str:
        """Text newly made stable by ``token_ids`` (may be empty)."""
        if self._bytes is not None:
            return self._utf8.decode(self._bytes.decode_bytes(token_ids))
        self._ids.extend(token_ids)
        decode = self._tokenizer.decode
        prefix_text = decode(self._ids[self._prefix_offset : self._read_offset])
        full_text = decode(self._ids[self._prefix_offset :])
        if len(full_text) <= len(prefix_text) or full_text.endswith("\ufffd"):
            return ""
        piece = full_text[len(prefix_text) :]
        self._read_offset = len(self._ids)
        self._prefix_offset = max(0, self._read_offset - self._WINDOW)
        return piece

    def flush(self) -> str:
        """Whatever is held back, rendered as is (at the end of the request)."""
        if self._bytes is not None:
            return self._utf8.decode(b"", final=True)
        rest = self._ids[self._read_offset :]
        if not rest:
            return ""
        prefix_text = self._tokenizer.decode(self._ids[self._prefix_offset : self._read_offset])
        full_text = self._tokenizer.decode(self._ids[self._prefix_offset :])
        self._read_offset = len(self._ids)
        return full_text[len(prefix_text) :]
