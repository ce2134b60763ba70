"""The FlashInfer attention backend on the CPU: indices against the torch executor's view, and
FlashInfer's real wrapper (kernels swapped for torch ones) against the torch backend."""

from __future__ import annotations

import pytest
import torch

from tests.flashinfer.reference_kernels import _TorchKernel, torch_kernels
from tests.flashinfer.side_by_side import run_side_by_side, shared_prefix_workload
from tokensched import SchedulerConfig, StepPlan
from tokensched_flashinfer import (
    AttentionPlanError,
    FlashInferMLAAttention,
    MLAShape,
    PackedLatentCache,
    build_mla_indices,
    indices_for_plan,
    indices_from_metadata,
)
from tokensched_torch import MLAConfig, MLAModel, ModelRunner, StepForward

CFG = MLAConfig.tiny()
BS = 4


def _config(**changes: object) -> SchedulerConfig:
    base: dict[str, object] = dict(
        num_blocks=64, block_size=BS, max_batched_tokens=32, long_prefill_chunk=12, max_steps_in_flight=2
    )
    return SchedulerConfig.model_validate(base | changes)


@pytest.fixture(scope="module")
def model64() -> MLAModel:
    return MLAModel(CFG).to(torch.float64).eval()


def _attention(backends: tuple[str, ...], flashinfer: object, *, packed: bool = False) -> FlashInferMLAAttention:
    shape = MLAShape(CFG.num_heads, CFG.kv_lora_rank, CFG.qk_rope_head_dim, BS, torch.float64, packed=packed)
    return FlashInferMLAAttention(
        device=torch.device("cpu"),
        shape=shape,
        sm_scale=CFG.softmax_scale,
        backends=backends,
        workspace_bytes=1024,
        flashinfer=flashinfer,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("speculative", [0, 2])
def test_indices_equal_the_torch_executors_view_of_every_scheduler_plan(model64: MLAModel, speculative: int) -> None:
    runner = ModelRunner(model64, 64, BS)
    seen: list[int] = []

    def check(plan: StepPlan, ref: StepForward, _: StepForward | None) -> None:
        meta = ref.meta
        from_plan = indices_for_plan(plan, runner.mirror)
        from_meta = indices_from_metadata(meta)
        for idx in (from_plan, from_meta):
            assert idx.qo_indptr.tolist() == meta.qo_indptr.tolist()
            assert idx.kv_indptr.tolist() == meta.kv_indptr.tolist()
            assert idx.kv_indices.tolist() == meta.kv_indices.tolist()
            assert idx.kv_len.tolist() == meta.kv_lens.tolist() == meta.kv_lens_host
            assert [idx.pages_of(i) for i in range(idx.batch_size)] == [list(t) for t in meta.block_tables_host]
            assert idx.max_q_len == max(meta.qo_lens_host)
        seen.append(plan.num_requests)

    run = run_side_by_side(
        _config(num_speculative_tokens=speculative), runner, None, shared_prefix_workload(CFG.vocab_size), check
    )
    assert run.prefix_hit_tokens > 0 and run.max_chunk_tokens == 12 and run.mixed_steps > 0
    assert len(seen) == len(run.plans) and max(seen) >= 3


def _compare_exactly(plan: StepPlan, ref: StepForward, cand: StepForward | None) -> None:
    assert cand is not None
    torch.testing.assert_close(cand.logits, ref.logits, atol=1e-9, rtol=0)


@pytest.mark.parametrize("speculative", [0, 2])
def test_real_wrapper_with_split_inputs_matches_torch_attention(
    model64: MLAModel, monkeypatch: pytest.MonkeyPatch, speculative: int
) -> None:
    with torch_kernels(monkeypatch) as fi:
        attention = _attention(("fa3", "fa2"), fi)
        run = run_side_by_side(
            _config(num_speculative_tokens=speculative),
            ModelRunner(model64, 64, BS),
            ModelRunner(model64, 64, BS, backend=attention),
            shared_prefix_workload(CFG.vocab_size),
            _compare_exactly,
        )
    assert attention.plans == {"fa3": len(run.plans)}
    # Planned once per step, run once per layer with that plan.
    assert _TorchKernel.log == [("fa3", "plan"), *[("fa3", "run")] * CFG.num_layers] * len(run.plans)


def test_packed_cache_and_dense_metadata_path_matches_torch_attention(
    model64: MLAModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    with torch_kernels(monkeypatch) as fi:
        attention = _attention(("trtllm-gen",), fi, packed=True)
        candidate = ModelRunner(model64, 64, BS, backend=attention)
        candidate.cache = PackedLatentCache(CFG, 64, BS, dtype=torch.float64)
        run = run_side_by_side(
            _config(), ModelRunner(model64, 64, BS), candidate, shared_prefix_workload(CFG.vocab_size), _compare_exactly
        )
    assert attention.plans == {"trtllm-gen": len(run.plans)}


def test_split_cache_is_refused_by_a_packed_only_backend(model64: MLAModel, monkeypatch: pytest.MonkeyPatch) -> None:
    with torch_kernels(monkeypatch) as fi:
        attention = _attention(("trtllm-gen",), fi, packed=True)
        runner = ModelRunner(model64, 64, BS, backend=attention)  # split cache: FlashInfer cannot pack it zero-copy
        with pytest.raises(ValueError, match="zero-copy"):
            run_side_by_side(_config(), runner, None, {0: shared_prefix_workload(CFG.vocab_size)[0]}, lambda *a: None)


def test_a_refused_plan_falls_back_to_the_next_backend(model64: MLAModel, monkeypatch: pytest.MonkeyPatch) -> None:
    with torch_kernels(monkeypatch, refuse={"fa3"}) as fi:
        attention = _attention(("fa3", "fa2"), fi)
        run = run_side_by_side(
            _config(),
            ModelRunner(model64, 64, BS),
            ModelRunner(model64, 64, BS, backend=attention),
            shared_prefix_workload(CFG.vocab_size),
            _compare_exactly,
        )
    assert attention.plans == {"fa2": len(run.plans)}
    assert {backend for backend, call in _TorchKernel.log if call == "run"} == {"fa2"}


def test_no_accepting_backend_raises_with_every_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    with torch_kernels(monkeypatch, refuse={"fa3", "fa2"}) as fi:
        attention = _attention(("fa3", "fa2"), fi)
        idx = build_mla_indices([0, 3, 4], [0, 9], [[1], [2, 3, 4]], BS)
        with pytest.raises(AttentionPlanError, match=r"2 requests \(4 query tokens, longest KV 10\)") as info:
            attention.plan_indices(idx)
    assert "fa3: fa3 declines" in str(info.value) and "fa2: fa2 declines" in str(info.value)
    assert attention.active is None
    with pytest.raises(AttentionPlanError, match="layer 0: forward"):
        attention.forward(0, torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1))


def test_an_empty_batch_plans_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    with torch_kernels(monkeypatch) as fi:
        attention = _attention(("fa2",), fi)
        attention.plan_indices(build_mla_indices([0], [], [], BS))
    assert attention.active is None and not attention.plans and not _TorchKernel.log


def test_flashinfer_accepts_our_csr_and_dense_metadata_as_valid() -> None:
    planning = pytest.importorskip("flashinfer.mla._batch_mla._planning")
    idx = build_mla_indices([0, 5, 6, 9], [16, 31, 0], [[4, 8, 15, 16, 23, 42], [1, 2, 3, 5], [9, 9]], 8)
    csr = planning._validate_csr_metadata(
        qo_indptr=idx.qo_indptr,
        kv_indptr=idx.kv_indptr,
        kv_indices=idx.kv_indices,
        kv_len_arr=idx.kv_len,
        page_size=8,
        device=torch.device("cpu"),
    )
    assert csr.kv_indices.tolist() == [4, 8, 15, 1, 2, 3, 5, 9]
    dense = planning._validate_dense_metadata(
        cum_seq_lens_q=idx.qo_indptr,
        block_tables=idx.dense_block_tables(),
        seq_lens=idx.kv_len,
        max_q_len=idx.max_q_len,
        page_size=8,
        device=torch.device("cpu"),
    )
    assert dense.max_q_len == 5
    assert planning._derive_csr_from_dense(dense, page_size=8).kv_indices.tolist() == csr.kv_indices.tolist()
