"""A Hugging Face tokenizer from local files: a small BPE trained here with ``tokenizers``, and its chat template."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import MODEL, live_server
from tokensched.server.cli import Backend, build_app
from tokensched.server.hf_tokenizer import HFTokenizer
from tokensched.server.launch import sim_backend
from tokensched.server.settings import ServerSettings
from tokensched.server.tokenizer import StreamDecoder

tokenizers = pytest.importorskip("tokenizers")

CORPUS = ["the quick brown fox jumps over the lazy dog", "hello world, hello tokens", "schedulers schedule requests"]
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tokenizer.json (byte-level BPE, 300 ids) and tokenizer_config.json with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    path = tmp_path_factory.mktemp("model")
    tok.save(str(path / "tokenizer.json"))
    config = {"chat_template": TEMPLATE, "bos_token": "<s>", "eos_token": {"content": "</s>"}}
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def test_text_round_trips_and_the_special_tokens_are_found(model_dir: Path) -> None:
    tok = HFTokenizer.from_path(model_dir)
    ids = tok.encode("hello world, the quick fox")
    assert tok.decode(ids) == "hello world, the quick fox"
    assert len(ids) < len("hello world, the quick fox")  # merges were learned: fewer ids than bytes
    assert tok.eos_token_id == tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json")).token_to_id("</s>")
    assert tok.vocab_size <= 300
    assert tok.decode([*ids, 10**6]) == "hello world, the quick fox"  # an id past the vocabulary renders as nothing


def test_the_chat_template_is_rendered_and_tokenized_once(model_dir: Path) -> None:
    tok = HFTokenizer.from_path(model_dir / "tokenizer.json")
    raw = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))

    class Turn:
        def __init__(self, role: str, text: str) -> None:
            self.role, self.text = role, text

    ids = tok.apply_chat_template([Turn("system", "be brief"), Turn("user", "hello world")])
    expected = "<s><|system|>be brief</s><|user|>hello world</s><|assistant|>"
    assert ids == raw.encode(expected, add_special_tokens=False).ids
    assert ids[0] == raw.token_to_id("<s>") and ids[-1] == raw.token_to_id("<|assistant|>")


def test_streamed_pieces_add_up_to_the_whole_text(model_dir: Path) -> None:
    tok = HFTokenizer.from_path(model_dir)
    ids = tok.encode("schedulers schedule the lazy requests")
    decoder = StreamDecoder(tok)
    pieces = [decoder.push([i]) for i in ids]
    assert "".join(pieces) + decoder.flush() == "schedulers schedule the lazy requests"


@pytest.mark.parametrize(
    ("files", "needle"),
    [
        ({}, "no tokenizer at"),
        ({"tokenizer.json": "{not json"}, "cannot load the tokenizer"),
    ],
)
def test_a_missing_or_broken_tokenizer_is_a_clear_error(tmp_path: Path, files: dict[str, str], needle: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=needle):
        HFTokenizer.from_path(tmp_path)


def test_an_unknown_eos_token_is_refused(model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text((model_dir / "tokenizer.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<nope>"}))
    with pytest.raises(ValueError, match="'<nope>' is not in the tokenizer's vocabulary"):
        HFTokenizer.from_path(tmp_path)


def test_the_server_uses_the_template_and_counts_usage_in_the_tokenizers_tokens(model_dir: Path) -> None:
    runner, _ = sim_backend(num_kv_blocks=256, realtime=None)
    tok = HFTokenizer.from_path(model_dir)
    raw = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    with live_server(runner, tok) as live:
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "hello world"}], "max_tokens": 3}
        answer = httpx.post(live.v1 + "/chat/completions", json=chat, timeout=30).json()
        rendered = "<s><|user|>hello world</s><|assistant|>"
        assert answer["usage"]["prompt_tokens"] == len(raw.encode(rendered, add_special_tokens=False).ids)
        assert answer["usage"]["completion_tokens"] == 3
        completion = {"model": MODEL, "prompt": "the lazy dog", "max_tokens": 2}
        answer = httpx.post(live.v1 + "/completions", json=completion, timeout=30).json()
        assert answer["usage"]["prompt_tokens"] == len(raw.encode("the lazy dog").ids)
        too_big = {"model": MODEL, "prompt": [tok.vocab_size], "max_tokens": 1}
        refused = httpx.post(live.v1 + "/completions", json=too_big, timeout=30)
        assert refused.status_code == 400
        assert "outside the vocabulary" in refused.json()["error"]["message"]


def test_a_template_that_raises_is_a_400_naming_messages(model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text((model_dir / "tokenizer.json").read_text())
    template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first turn must be the user') }}{% endif %}x"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    runner, _ = sim_backend(num_kv_blocks=256, realtime=None)
    with live_server(runner, HFTokenizer.from_path(tmp_path)) as live:
        chat = {"model": MODEL, "messages": [{"role": "assistant", "content": "hi"}], "max_tokens": 1}
        refused = httpx.post(live.v1 + "/chat/completions", json=chat, timeout=30)
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "messages"
        assert "first turn must be the user" in refused.json()["error"]["message"]


def test_serve_loads_the_tokenizer_from_its_path(model_dir: Path) -> None:
    app = build_app(Backend.SIM, ServerSettings(), num_blocks=64, tokenizer_path=str(model_dir))
    assert isinstance(app.state.tokenizer, HFTokenizer)
