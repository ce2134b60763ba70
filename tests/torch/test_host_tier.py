"""Paged == dense (1e-9 in float64) for a session whose prefix went to the host tier and came back.

The real Scheduler (with a host tier) plans; a ModelRunner with a host pool
executes each plan and every logit row is checked against a dense forward of
the same model (``checks.execute_and_check``). The session's first turn is
written back to host, evicted from the device by another request, and its
next turn loads it: its rows still equal the dense forward. Without the copy
(the negative control) they do not.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tests.torch.checks import execute_and_check, greedy_result  # noqa: E402
from tokensched import RequestSpec, Scheduler, SchedulerConfig  # noqa: E402
from tokensched.plan import TransferKind  # noqa: E402
from tokensched_torch import MLAConfig, MLAModel, ModelRunner, TorchMLAAttention  # noqa: E402
from tokensched_torch.host_pool import HostKVPool  # noqa: E402

BS = 4
PROMPT_A = [(7 * i + 3) % 200 for i in range(16)]


def run_session(model: MLAModel) -> tuple[int, int]:
    """A, then B, then C evicting A's blocks, then A's next turn; returns (blocks loaded, rows checked)."""
    scheduler = Scheduler(
        SchedulerConfig(
            num_blocks=8,
            block_size=BS,
            max_batched_tokens=64,
            max_model_len=64,
            host_kv_blocks=8,
            admission_reserve=0.0,
        ),
        clock=lambda: 0.0,
    )
    runner = ModelRunner(model, 8, BS, backend=TorchMLAAttention(model.cfg.softmax_scale), host_kv_blocks=8)
    loads = rows = 0
    turns = [("a", PROMPT_A), ("b", [90, 91]), ("c", list(range(40, 68))), ("a2", [*PROMPT_A, 20, 21])]
    for rid, prompt in turns:
        scheduler.submit(RequestSpec(request_id=rid, prompt_token_ids=prompt, max_tokens=2))
        while scheduler.has_work:
            plan = scheduler.plan()
            assert plan is not None
            loads += sum(t.kind is TransferKind.LOAD for t in plan.kv_transfers)
            forward = execute_and_check(runner, plan)
            rows += plan.num_tokens
            result = greedy_result(plan, forward)
            runner.finish(plan, result)
            scheduler.complete(result)
            scheduler.check_invariants()
    return loads, rows


def test_a_prefix_back_from_host_gives_the_dense_logits(model: MLAModel) -> None:
    loads, rows = run_session(model)
    assert loads == 4 and rows > 0


def test_without_the_load_copy_the_rows_differ(model: MLAModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control: a load that copies nothing leaves stale KV, and the check catches it."""
    real = HostKVPool._copy

    def stores_only(self: HostKVPool, transfers: list) -> None:  # type: ignore[type-arg]
        real(self, [t for t in transfers if t.kind is TransferKind.STORE])

    monkeypatch.setattr(HostKVPool, "_copy", stores_only)
    with pytest.raises(AssertionError):
        run_session(model)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (pinned host pool, copy stream)")
def test_the_round_trip_on_cuda_gives_the_dense_logits() -> None:
    model = MLAModel(MLAConfig()).double().cuda()
    loads, _ = run_session(model)
    assert loads == 4
