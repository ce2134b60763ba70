"""FlashInfer's real MLA kernels against the torch executor (needs CUDA; skipped cleanly without it).

Each kernel this GPU offers is checked twice: alone, on random paged batches
against float64 attention, and inside the executor, whose logits must equal the
torch executor's within bfloat16 tolerance on scheduler-built steps that mix
chunked prefills, prefix-cache hits, decodes and speculative verification.
"""

from __future__ import annotations

import random

import pytest
import torch

from tests.flashinfer.reference_kernels import reference_attention
from tests.flashinfer.side_by_side import run_side_by_side, shared_prefix_workload
from tokensched import RequestSpec, SchedulerConfig, StepPlan
from tokensched.engine import Engine
from tokensched_flashinfer import FlashInferExecutor, FlashInferMLAAttention, MLAShape, build_mla_indices
from tokensched_flashinfer.arch import BACKENDS, backend_rejection
from tokensched_torch import MLAConfig, StepForward, TorchExecutor

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available"),
]

CFG = MLAConfig.deepseek_attention()  # latent 512, rope 64, 16 heads: the shapes FlashInfer's kernels target
# Both executors run in bfloat16 with fp32 accumulation; the CPU rehearsal of this comparison (test_executor.py)
# sees differences of ~0.02 on logits of a few units.
BF16_ATOL, BF16_RTOL = 6e-2, 2e-2


def _usable(block_size: int, packed: bool) -> list[str]:
    capability = torch.cuda.get_device_capability()
    shape = MLAShape(CFG.num_heads, CFG.kv_lora_rank, CFG.qk_rope_head_dim, block_size, torch.bfloat16, packed=packed)
    return [b for b in BACKENDS if backend_rejection(b, capability, shape) is None]


def _kernel_cases() -> list[tuple[str, int]]:
    if not torch.cuda.is_available():
        return [("fa2", 16)]  # collected only to be skipped
    return [(b, bs) for bs in (16, 64) for b in _usable(bs, packed=True)]


@pytest.mark.parametrize(("backend", "block_size"), _kernel_cases())
def test_kernel_matches_float64_attention_on_a_random_mixed_batch(backend: str, block_size: int) -> None:
    device = torch.device("cuda")
    rng = random.Random(block_size)
    gen = torch.Generator(device="cpu").manual_seed(block_size)
    num_blocks, ckv_dim, kpe_dim, heads = 256, CFG.kv_lora_rank, CFG.qk_rope_head_dim, CFG.num_heads
    # A decode, a long decode, a chunk over a cached prefix, a fresh prefill, a 3-token verification.
    q_lens, computed = [1, 1, 37, 70, 3], [5, 900, 64, 0, 130]
    free = list(range(num_blocks))
    rng.shuffle(free)
    tables = [[free.pop() for _ in range(-(-(q + c) // block_size) + 1)] for q, c in zip(q_lens, computed, strict=True)]
    offsets = [0]
    for q in q_lens:
        offsets.append(offsets[-1] + q)
    idx = build_mla_indices(offsets, computed, tables, block_size)
    packed_cache = torch.randn(num_blocks, block_size, ckv_dim + kpe_dim, generator=gen).to(device, torch.bfloat16)
    ckv, kpe = packed_cache[..., :ckv_dim], packed_cache[..., ckv_dim:]
    q_nope = torch.randn(offsets[-1], heads, ckv_dim, generator=gen).to(device, torch.bfloat16)
    q_pe = torch.randn(offsets[-1], heads, kpe_dim, generator=gen).to(device, torch.bfloat16)
    sm_scale = CFG.softmax_scale
    shape = MLAShape(heads, ckv_dim, kpe_dim, block_size, torch.bfloat16, packed=True)
    attention = FlashInferMLAAttention(device=device, shape=shape, sm_scale=sm_scale, backends=(backend,))
    attention.plan_indices(idx)
    out = attention.forward(0, q_nope, q_pe, ckv, kpe)
    pages = [idx.pages_of(i) for i in range(idx.batch_size)]
    kv_lens = idx.kv_len.tolist()
    expected = reference_attention(q_lens, kv_lens, pages, block_size, sm_scale, q_nope, q_pe, ckv, kpe)
    assert attention.plans == {backend: 1}
    torch.testing.assert_close(out.float(), expected.float(), atol=2e-2, rtol=2e-2)


def _executor_cases() -> list[tuple[str, int, int]]:
    if not torch.cuda.is_available():
        return [("auto", 16, 0)]
    cases = [("auto", 16, 0), ("auto", 64, 2)]
    cases += [(b, 64, 0) for b in _usable(64, packed=True)]
    return cases


@pytest.mark.parametrize(("backend", "block_size", "speculative"), _executor_cases())
def test_logits_equal_the_torch_executors_on_mixed_steps(backend: str, block_size: int, speculative: int) -> None:
    flash = FlashInferExecutor(CFG, num_blocks=128, block_size=block_size, attention_backend=backend)
    reference = TorchExecutor(CFG, num_blocks=128, block_size=block_size, device="cuda", dtype=torch.bfloat16)
    config = SchedulerConfig(
        num_blocks=128,
        block_size=block_size,
        max_batched_tokens=64,
        long_prefill_chunk=24,
        num_speculative_tokens=speculative,
    )

    def check(plan: StepPlan, ref: StepForward, cand: StepForward | None) -> None:
        assert cand is not None
        torch.testing.assert_close(cand.logits.float(), ref.logits.float(), atol=BF16_ATOL, rtol=BF16_RTOL)

    run = run_side_by_side(config, reference.runner, flash.runner, shared_prefix_workload(CFG.vocab_size), check)
    assert run.prefix_hit_tokens > 0 and run.mixed_steps > 0 and run.max_chunk_tokens == 24
    assert sum(flash.attention.plans.values()) == len(run.plans)
    if backend != "auto":
        assert set(flash.attention.plans) == {backend}


def test_engine_with_a_background_worker_finishes_every_request() -> None:
    flash = FlashInferExecutor(CFG, num_blocks=256, block_size=16, background=True)
    try:
        engine = Engine.create(flash, max_batched_tokens=256)
        for i in range(12):
            prompt = [(7 * i + j) % CFG.vocab_size for j in range(40 + 13 * i)]
            engine.scheduler.submit(RequestSpec(request_id=f"r{i}", prompt_token_ids=prompt, max_tokens=10))
        finished = [out for outs in engine.run() for out in outs if out.finished]
    finally:
        flash.close()
    assert len(finished) == 12 and all(out.num_output_tokens == 10 for out in finished)
    engine.scheduler.check_invariants()
