"""A Hugging Face tokenizer from local files: ``tokenizer.json`` and, beside it, ``tokenizer_config.json``.

Loaded with the ``tokenizers`` library (no ``transformers``, no network):
the model's own vocabulary and merges, its end-of-sequence token, and its
chat template rendered with Jinja2 in a sandbox, the way ``transformers``
renders it (``trim_blocks`` and ``lstrip_blocks`` on, ``messages``,
``add_generation_prompt``, ``bos_token`` and ``eos_token`` in scope). With no
template in the config the plain ``<|role|>`` template of
:func:`~tokensched.server.tokenizer.render_chat` is used.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokensched.server.tokenizer import ChatTurn, render_chat

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"


class HFTokenizer:
    """Satisfies :class:`~tokensched.server.tokenizer.Tokenizer` over a ``tokenizers.Tokenizer``.

    >>> tok = HFTokenizer.from_path("/models/my-model")   # doctest: +SKIP
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        chat_template: str | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
    ) -> None:
        self._tokenizer = tokenizer
        self._vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)
        self._bos_token = bos_token
        self._eos_token = eos_token
        self._eos_token_id: int | None = tokenizer.token_to_id(eos_token) if eos_token else None
        if eos_token and self._eos_token_id is None:
            raise ValueError(f"the end-of-sequence token {eos_token!r} is not in the tokenizer's vocabulary")
        self._template = _compile(chat_template) if chat_template else None

    @classmethod
    def from_path(cls, path: str | Path) -> HFTokenizer:
        """Load ``path`` (a ``tokenizer.json``, or a folder holding one) and its ``tokenizer_config.json``."""
        from tokenizers import Tokenizer

        path = Path(path)
        file = path / TOKENIZER_FILE if path.is_dir() else path
        if not file.is_file():
            raise ValueError(f"no tokenizer at {str(file)!r}: expected a {TOKENIZER_FILE} or a folder holding one")
        try:
            tokenizer = Tokenizer.from_file(str(file))
        except Exception as exc:  # the library raises a bare Exception on malformed JSON
            raise ValueError(f"cannot load the tokenizer {str(file)!r}: {exc}") from exc
        config: dict[str, Any] = {}
        config_file = file.parent / CONFIG_FILE
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise ValueError(f"cannot read {str(config_file)!r}: {exc}") from exc
        return cls(
            tokenizer,
            chat_template=_template_text(config.get("chat_template")),
            bos_token=_token_text(config.get("bos_token")),
            eos_token=_token_text(config.get("eos_token")),
        )

    @property
    def eos_token_id(self) -> int | None:
        return self._eos_token_id

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` with the tokenizer's own special tokens (a BOS, if its post-processor adds one)."""
        return list(self._tokenizer.encode(text).ids)

    def decode(self, token_ids: Sequence[int]) -> str:
        # ids past the vocabulary come from a model with a bigger one (the simulator): render them as nothing
        vocab = self._vocab_size
        text: str = self._tokenizer.decode([t for t in token_ids if 0 <= t < vocab], skip_special_tokens=True)
        return text

    def apply_chat_template(self, messages: Sequence[ChatTurn]) -> list[int]:
        if self._template is None:
            return list(self._tokenizer.encode(render_chat(messages), add_special_tokens=False).ids)
        turns = [{"role": m.role, "content": m.text} for m in messages]
        try:
            text = self._template.render(
                messages=turns,
                add_generation_prompt=True,
                bos_token=self._bos_token or "",
                eos_token=self._eos_token or "",
            )
        except Exception as exc:  # a template's raise_exception(), or any error inside it
            raise ValueError(f"the chat template refused the conversation: {exc}") from exc
        # the template writes the special tokens itself; do not add them twice
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)


def _compile(source: str) -> Any:
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise ValueError(f"the chat template does not compile: {exc}") from exc


def _template_text(value: object) -> str | None:
    """``chat_template`` is a string, or a list of named templates of which 'default' is the chat one."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        chosen = named.get("default")
        return chosen if isinstance(chosen, str) else None
    raise ValueError(f"chat_template must be a string or a list of named templates, got {type(value).__name__}")


def _token_text(value: object) -> str | None:
    """A special token in the config is its text, or an object whose ``content`` is."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None
