"""FlashInferExecutor on the CPU: import without CUDA, clear errors, and the whole executor with
FlashInfer's real wrapper (kernels swapped for torch ones) pretending to be on a given GPU."""

from __future__ import annotations

import builtins
import subprocess
import sys
from typing import Any

import pytest
import torch

from tests.flashinfer.reference_kernels import torch_kernels
from tests.flashinfer.side_by_side import run_side_by_side, shared_prefix_workload
from tokensched import (
    ExecutorError,
    RequestSpec,
    SchedulerConfig,
    StepFailurePolicy,
    StepPlan,
    available_executors,
    load_executor,
)
from tokensched.engine import Engine
from tokensched.scheduler import Scheduler
from tokensched_flashinfer import FlashInferExecutor, FlashInferUnavailable, PackedLatentCache
from tokensched_flashinfer import executor as executor_module
from tokensched_torch import MLAConfig, PagedLatentCache, StepForward, TorchExecutor

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
# The smallest shapes FlashInfer's kernels take: FA needs a latent multiple of 128 and a rope dim multiple of 64,
# trtllm-gen a latent of 256 or 512.
FA_CFG = MLAConfig.tiny(kv_lora_rank=128, qk_rope_head_dim=64)
TRT_CFG = MLAConfig.tiny(kv_lora_rank=256, qk_rope_head_dim=64)
# Both sides compute in bfloat16 (SDPA against FlashInfer's kernels, here torch ones): logits of a few units
# agree to a few bf16 ulps after two layers.
BF16_ATOL, BF16_RTOL = 6e-2, 2e-2


def test_import_needs_neither_cuda_nor_flashinfer() -> None:
    code = "import sys, tokensched_flashinfer; assert 'flashinfer' not in sys.modules, 'imported flashinfer eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_registered_as_the_flashinfer_executor() -> None:
    assert "flashinfer" in available_executors()
    assert load_executor("flashinfer") is FlashInferExecutor


@no_cuda
def test_construction_without_cuda_says_cuda_is_missing() -> None:
    with pytest.raises(FlashInferUnavailable, match="FlashInferExecutor needs CUDA") as info:
        FlashInferExecutor(FA_CFG)
    assert info.value.missing == "CUDA"
    with pytest.raises(FlashInferUnavailable, match="got device 'cpu'"):
        FlashInferExecutor(FA_CFG, device="cpu")


def _pretend_gpu(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int]) -> None:
    monkeypatch.setattr(executor_module, "require_cuda", lambda device: capability)


def test_construction_without_flashinfer_says_flashinfer_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    _pretend_gpu(monkeypatch, (9, 0))
    real_import = builtins.__import__

    def refuse(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] == "flashinfer":
            raise ImportError("No module named 'flashinfer'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)
    with pytest.raises(FlashInferUnavailable, match="needs flashinfer") as info:
        FlashInferExecutor(FA_CFG, device="cpu")
    assert info.value.missing == "flashinfer"


def test_construction_on_an_old_gpu_says_the_architecture_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    _pretend_gpu(monkeypatch, (7, 5))
    with pytest.raises(FlashInferUnavailable, match="SM75: fa2 needs SM80 or newer") as info:
        FlashInferExecutor(FA_CFG, device="cpu")
    assert info.value.missing == "GPU architecture"


def test_construction_with_an_unsupported_model_shape_or_dtype_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    _pretend_gpu(monkeypatch, (9, 0))
    with pytest.raises(FlashInferUnavailable, match=r"got \(32, 16\)") as info:
        FlashInferExecutor(MLAConfig.tiny(), device="cpu")
    assert info.value.missing == "a supported MLA shape"
    with pytest.raises(FlashInferUnavailable, match=r"float16 or bfloat16, the model runs in torch\.float32"):
        FlashInferExecutor(FA_CFG, device="cpu", dtype="float32")


def test_packed_cache_keeps_the_parents_attributes_and_writes_into_one_tensor() -> None:
    split = PagedLatentCache(FA_CFG, 3, 4)
    packed = PackedLatentCache(FA_CFG, 3, 4)
    assert set(vars(split)) <= set(vars(packed))
    ckv = torch.randn(2, FA_CFG.kv_lora_rank)
    kpe = torch.randn(2, FA_CFG.qk_rope_head_dim)
    packed.write(1, torch.tensor([5, 11]), ckv, kpe)
    assert torch.equal(packed.packed[1].view(-1, 192)[5], torch.cat((ckv[0], kpe[0])))
    assert torch.equal(packed.packed[1].view(-1, 192)[11], torch.cat((ckv[1], kpe[1])))
    assert packed.ckv[1].data_ptr() == packed.packed[1].data_ptr()
    assert not packed.packed[0].any()


def _side_by_side(flash: FlashInferExecutor, cfg: MLAConfig, block_size: int, speculative: int = 0) -> int:
    reference = TorchExecutor(cfg, num_blocks=96, block_size=block_size, dtype=torch.bfloat16)
    config = SchedulerConfig(
        num_blocks=96,
        block_size=block_size,
        max_batched_tokens=48,
        long_prefill_chunk=20,
        num_speculative_tokens=speculative,
    )
    worst = [0.0]

    def check(plan: StepPlan, ref: StepForward, cand: StepForward | None) -> None:
        assert cand is not None
        torch.testing.assert_close(cand.logits, ref.logits, atol=BF16_ATOL, rtol=BF16_RTOL)
        worst[0] = max(worst[0], float((cand.logits.float() - ref.logits.float()).abs().max()))

    run = run_side_by_side(config, reference.runner, flash.runner, shared_prefix_workload(cfg.vocab_size), check)
    print(f"worst logit difference over {len(run.plans)} steps: {worst[0]:.4f}")
    assert run.prefix_hit_tokens > 0 and run.mixed_steps > 0 and run.max_chunk_tokens == 20
    return len(run.plans)


def test_hopper_executor_runs_fa3_on_the_split_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    _pretend_gpu(monkeypatch, (9, 0))
    with torch_kernels(monkeypatch):
        flash = FlashInferExecutor(FA_CFG, num_blocks=96, block_size=16, device="cpu", workspace_bytes=1024)
        assert flash.backends == ("fa3", "fa2") and flash.capability == (9, 0)
        assert type(flash.runner.cache) is PagedLatentCache
        steps = _side_by_side(flash, FA_CFG, 16, speculative=2)
    assert flash.attention.plans == {"fa3": steps}


def test_blackwell_executor_runs_trtllm_gen_on_a_packed_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    _pretend_gpu(monkeypatch, (10, 0))
    with torch_kernels(monkeypatch):
        flash = FlashInferExecutor(TRT_CFG, num_blocks=96, block_size=32, device="cpu", workspace_bytes=1024)
        assert flash.backends == ("trtllm-gen", "fa2")
        assert isinstance(flash.runner.cache, PackedLatentCache)
        assert flash.runner.cache.num_blocks == 96 and flash.num_kv_blocks == 96
        steps = _side_by_side(flash, TRT_CFG, 32)
    assert flash.attention.plans == {"trtllm-gen": steps}


def test_blackwell_with_small_blocks_uses_fa2_and_the_split_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    _pretend_gpu(monkeypatch, (10, 0))
    with torch_kernels(monkeypatch):
        flash = FlashInferExecutor(TRT_CFG, num_blocks=8, block_size=16, device="cpu", workspace_bytes=1024)
    assert flash.backends == ("fa2",) and type(flash.runner.cache) is PagedLatentCache


def test_engine_runs_to_completion_and_a_refused_step_fails_through_the_scheduler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _pretend_gpu(monkeypatch, (8, 0))
    with torch_kernels(monkeypatch) as fi:
        flash = FlashInferExecutor(FA_CFG, num_blocks=32, block_size=16, device="cpu", workspace_bytes=1024)
        engine = Engine.create(flash, max_batched_tokens=64)
        for i in range(3):
            engine.scheduler.submit(RequestSpec(request_id=f"r{i}", prompt_token_ids=[i + 1] * 20, max_tokens=4))
        finished = [out for outs in engine.run() for out in outs if out.finished]
        assert sorted(out.request_id for out in finished) == ["r0", "r1", "r2"]
        assert all(out.num_output_tokens == 4 for out in finished)

        monkeypatch.setattr(fi.mla._batch_mla._wrapper._BACKEND_TYPES["fa2"], "refuse", {"fa2"})
        sched = Scheduler(SchedulerConfig(num_blocks=32, block_size=16, on_step_failure=StepFailurePolicy.ERROR))
        sched.submit(RequestSpec(request_id="x", prompt_token_ids=[1, 2, 3]))
        plan = sched.plan()
        assert plan is not None
        flash.launch(plan)
        with pytest.raises(ExecutorError, match=r"step 0: AttentionPlanError: no FlashInfer MLA backend accepted"):
            flash.collect()
