"""Real tokens: the tiny MLA model behind the server answers exactly what greedy decoding says."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("torch")

from openai import OpenAI

from tests.server.conftest import MODEL, Live, live_server, scrape
from tokensched.server.launch import torch_backend
from tokensched_torch import TorchExecutor, greedy_reference


@pytest.fixture(scope="module")
def torch_server() -> Iterator[Live]:
    with live_server(*torch_backend(num_blocks=256, check_invariants=True)) as live:
        yield live


def reference_text(live: Live, prompt: str, max_tokens: int) -> str:
    executor = live.runner.executor
    assert isinstance(executor, TorchExecutor)
    ids = greedy_reference(executor.model, live.tokenizer.encode(prompt), max_tokens)
    return live.tokenizer.decode(ids)


def test_greedy_stream_matches_the_dense_reference(torch_server: Live) -> None:
    api = OpenAI(base_url=torch_server.v1, api_key="unused", max_retries=0, timeout=60.0)
    prompt = "The scheduler said: "
    stream = api.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0, stream=True)
    text = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
    assert text == reference_text(torch_server, prompt, 24)


def test_greedy_chat_matches_the_dense_reference(torch_server: Live) -> None:
    api = OpenAI(base_url=torch_server.v1, api_key="unused", max_retries=0, timeout=60.0)
    messages = [{"role": "user", "content": "hi there"}]
    chat = api.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0)  # type: ignore[arg-type]
    rendered = "<|user|>\nhi there\n<|assistant|>\n"
    assert chat.choices[0].message.content == reference_text(torch_server, rendered, 16)
    assert chat.usage is not None and chat.usage.completion_tokens == 16


def test_a_stop_string_cuts_the_answer_just_before_it(torch_server: Live) -> None:
    api = OpenAI(base_url=torch_server.v1, api_key="unused", max_retries=0, timeout=60.0)
    prompt = "stop here: "
    full = reference_text(torch_server, prompt, 32)
    stop = next(full[i : i + 2] for i in range(8, 30) if "\ufffd" not in full[i : i + 2])
    answer = api.completions.create(model=MODEL, prompt=prompt, max_tokens=32, temperature=0, stop=stop)
    assert answer.choices[0].text == full[: full.find(stop)]
    assert answer.choices[0].finish_reason == "stop"


def test_speculative_decoding_reports_vllms_draft_counters() -> None:
    from tokensched.server import EngineRunner
    from tokensched.server.tokenizer import ByteTokenizer
    from tokensched_torch import MLAConfig

    executor = TorchExecutor(MLAConfig.tiny(init_seed=0), num_blocks=128, num_speculative_tokens=2)
    runner = EngineRunner.create(executor, config={"num_speculative_tokens": 2})
    with live_server(runner, ByteTokenizer(), metrics_prefix="vllm") as live:
        api = OpenAI(base_url=live.v1, api_key="unused", max_retries=0, timeout=60.0)
        prompt = "abcabcabcabcabcabcabcabc"  # n-gram lookup always finds something to propose
        done = api.completions.create(
            model=MODEL, prompt=prompt, max_tokens=24, temperature=0, extra_body={"ignore_eos": True}
        )
        assert done.usage is not None and done.usage.completion_tokens == 24
        samples = scrape(live)
    assert samples["vllm:spec_decode_num_drafts_total"] >= 1
    assert samples["vllm:spec_decode_num_draft_tokens_total"] <= 2 * samples["vllm:spec_decode_num_drafts_total"]
    assert samples["vllm:spec_decode_num_accepted_tokens_total"] <= samples["vllm:spec_decode_num_draft_tokens_total"]
