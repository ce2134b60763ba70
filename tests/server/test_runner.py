"""The engine thread on its own: intake, delivery, abort, refusal, shutdown and a crashing executor."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import httpx
import pytest

from tests.server.conftest import MODEL, live_server, wait_for
from tokensched import QueueFull, RequestOutput, RequestSpec, StepPlan
from tokensched.errors import InvalidRequest
from tokensched.plan import FinishReason
from tokensched.server import ByteTokenizer, EngineRunner, EngineStopped
from tokensched.testing import FakeExecutor

TIMEOUT = 20.0


class Outputs:
    """A sink that the engine thread fills and the test drains with bounded waits."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[RequestOutput] = queue.SimpleQueue()

    def __call__(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            self.queue.put(output)

    def until_finished(self, count: int = 1) -> dict[str, list[RequestOutput]]:
        by_request: dict[str, list[RequestOutput]] = {}
        finished = 0
        while finished < count:
            output = self.queue.get(timeout=TIMEOUT)
            by_request.setdefault(output.request_id, []).append(output)
            finished += output.finished
        return by_request


def spec(request_id: str, max_tokens: int = 8, prompt_len: int = 20) -> RequestSpec:
    return RequestSpec(request_id=request_id, prompt_token_ids=list(range(1, prompt_len + 1)), max_tokens=max_tokens)


@pytest.fixture
def runner() -> Iterator[EngineRunner]:
    # paced: 10 ms per step of wall time, so a 10,000-token request stays live for the whole test
    executor = FakeExecutor(num_kv_blocks=1024, vocab_size=200, step_time=0.01)
    runner = EngineRunner.create(executor, realtime=1.0, check_invariants=True, config={"max_waiting": 2})
    runner.start()
    yield runner
    runner.stop()
    assert runner.error is None
    assert not runner.running


def test_a_submitted_request_streams_its_tokens_to_its_sink(runner: EngineRunner) -> None:
    sink = Outputs()
    runner.submit([spec("a", max_tokens=8)], sink).result(TIMEOUT)
    outputs = sink.until_finished()["a"]
    assert sum(len(o.new_token_ids) for o in outputs) == 8
    assert outputs[-1].finish_reason is FinishReason.LENGTH
    assert all(not o.finished for o in outputs[:-1])


def test_a_refused_submission_raises_in_the_caller_and_admits_nothing(runner: EngineRunner) -> None:
    sink = Outputs()
    runner.submit([spec("a", max_tokens=10_000)], sink).result(TIMEOUT)  # occupies the engine
    with pytest.raises(InvalidRequest, match="already has this id"):
        runner.submit([spec("b"), spec("a")], sink).result(TIMEOUT)
    assert wait_for(lambda: runner.stats.num_running + runner.stats.num_waiting == 1)
    runner.abort(["a"])
    assert sink.until_finished()["a"][-1].finish_reason is FinishReason.ABORT


def test_a_full_waiting_queue_refuses_with_queue_full() -> None:
    runner = EngineRunner.create(
        FakeExecutor(num_kv_blocks=1024), realtime=1.0, config={"max_running": 1, "max_waiting": 1}
    )
    runner.start()
    try:
        sink = Outputs()
        runner.submit([spec("a", max_tokens=10_000)], sink).result(TIMEOUT)
        assert wait_for(lambda: runner.stats.num_running == 1)
        runner.submit([spec("b", max_tokens=10_000)], sink).result(TIMEOUT)
        with pytest.raises(QueueFull):
            runner.submit([spec("c")], sink).result(TIMEOUT)
    finally:
        runner.stop()
    finished = sink.until_finished(2)  # stopping aborts what is left
    assert {outputs[-1].finish_reason for outputs in finished.values()} == {FinishReason.ABORT}


def test_aborting_unknown_or_finished_requests_is_harmless(runner: EngineRunner) -> None:
    sink = Outputs()
    runner.submit([spec("a", max_tokens=2)], sink).result(TIMEOUT)
    sink.until_finished()
    runner.abort(["a", "never-seen"])
    runner.submit([spec("b", max_tokens=2)], sink).result(TIMEOUT)
    assert sink.until_finished()["b"][-1].finish_reason is FinishReason.LENGTH


def test_submitting_to_a_stopped_runner_fails_fast() -> None:
    runner = EngineRunner.create(FakeExecutor(num_kv_blocks=16))
    with pytest.raises(EngineStopped, match="not running"):
        runner.submit([spec("a")], Outputs()).result(TIMEOUT)


class CrashingExecutor(FakeExecutor):
    """Raises a plain error (not an ExecutorError) from its third launch on: a bug, not a failed step."""

    def launch(self, plan: StepPlan) -> None:
        if len(self.launched) >= 2:
            raise RuntimeError("device fell off the bus")
        super().launch(plan)


def test_an_engine_crash_fails_live_requests_and_refuses_new_ones() -> None:
    runner = EngineRunner.create(CrashingExecutor(num_kv_blocks=64))
    runner.start()
    sink = Outputs()
    runner.submit([spec("a", max_tokens=50)], sink).result(TIMEOUT)
    assert sink.until_finished()["a"][-1].finish_reason is FinishReason.ERROR
    assert wait_for(lambda: not runner.running)
    assert isinstance(runner.error, RuntimeError)
    with pytest.raises(EngineStopped, match="device fell off the bus"):
        runner.submit([spec("b")], sink).result(TIMEOUT)


def test_over_http_a_crash_is_a_500_then_503_and_health_says_so() -> None:
    runner = EngineRunner.create(CrashingExecutor(num_kv_blocks=64, vocab_size=200))
    app_settings = {"model_name": MODEL}
    with (
        pytest.raises(AssertionError, match="engine thread crashed"),
        live_server(runner, ByteTokenizer(), **app_settings) as live,
    ):
        body = {"model": MODEL, "prompt": "boom", "max_tokens": 50}
        failed = httpx.post(live.v1 + "/completions", json=body, timeout=TIMEOUT)
        assert failed.status_code == 500
        assert httpx.get(live.url + "/health", timeout=TIMEOUT).status_code == 503
        refused = httpx.post(live.v1 + "/completions", json=body, timeout=TIMEOUT)
        assert refused.status_code == 503
        assert "device fell off the bus" in refused.json()["error"]["message"]


def test_a_failed_step_under_the_error_policy_ends_the_stream_with_an_error_event() -> None:
    runner = EngineRunner.create(
        FakeExecutor(num_kv_blocks=64, vocab_size=200, fail_prob=1.0), config={"on_step_failure": "error"}
    )
    with live_server(runner, ByteTokenizer()) as live:
        body = {"model": MODEL, "prompt": "x", "max_tokens": 5, "stream": True}
        with httpx.stream("POST", live.v1 + "/completions", json=body, timeout=TIMEOUT) as response:
            lines = [line for line in response.iter_lines() if line]
        assert any('"error"' in line for line in lines)
        assert lines[-1] == "data: [DONE]"
        whole = httpx.post(live.v1 + "/completions", json=body | {"stream": False}, timeout=TIMEOUT)
        assert whole.status_code == 500
        assert whole.json()["error"]["type"] == "server_error"
