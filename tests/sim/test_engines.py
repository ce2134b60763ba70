"""Engine profiles: the per-layer latency floor is re-derived from its published source, not set by hand."""

from __future__ import annotations

import pytest

from tests.sim.helpers import Entry, make_plan, new_request
from tokensched_sim import ENGINES, BatchShape, CostModel, Deployment, ModelSpec, SimExecutor, model_preset
from tokensched_sim.engines import TRTLLM_MIN_LATENCY_LAYER_OVERHEAD_S, TRTLLM_MIN_LATENCY_TPS_PER_USER


def deepseek_r1_min_latency(layer_overhead_s: float) -> CostModel:
    """TensorRT-LLM's min-latency setup: DeepSeek-R1 with NVFP4 experts, BF16 attention, 8x B200 at TP8."""
    r1 = ModelSpec.model_validate({**dict(model_preset("deepseek-v3")), "expert_dtype": "fp4"})
    efficiency = ENGINES["trtllm"].efficiency.model_copy(update={"layer_overhead_s": layer_overhead_s})
    return CostModel(
        Deployment(model=r1, gpu="b200", tp=8, kv_dtype="fp8", attention_dtype="bf16", efficiency=efficiency)
    )


def test_layer_overhead_is_what_the_published_batch_one_step_leaves_over_the_roofline() -> None:
    step = BatchShape.from_counts(num_decode_requests=1, decode_context_tokens=2000)  # ISL 1k + half of OSL 2k
    roofline = deepseek_r1_min_latency(0.0).step_time(step)
    derived = (1 / TRTLLM_MIN_LATENCY_TPS_PER_USER - roofline) / 61
    assert pytest.approx(derived, rel=1e-3) == TRTLLM_MIN_LATENCY_LAYER_OVERHEAD_S
    with_floor = deepseek_r1_min_latency(TRTLLM_MIN_LATENCY_LAYER_OVERHEAD_S).step_time(step)
    assert 1 / with_floor == pytest.approx(TRTLLM_MIN_LATENCY_TPS_PER_USER, rel=1e-3)


def test_every_profile_carries_the_floor_and_its_sources() -> None:
    for name, engine in ENGINES.items():
        assert engine.efficiency.layer_overhead_s == TRTLLM_MIN_LATENCY_LAYER_OVERHEAD_S, name
        assert engine.source, name
    floor = CostModel(Deployment(model="kimi-k2.5", gpu="b200", tp=4, kv_dtype="fp8"))
    none = CostModel(
        Deployment(
            model="kimi-k2.5",
            gpu="b200",
            tp=4,
            kv_dtype="fp8",
            efficiency=floor.efficiency.model_copy(update={"layer_overhead_s": 0.0}),
        )
    )
    one = BatchShape.from_counts(num_decode_requests=1, decode_context_tokens=50_000)
    assert floor.step_time(one) - none.step_time(one) == pytest.approx(61 * TRTLLM_MIN_LATENCY_LAYER_OVERHEAD_S)


def test_an_engine_that_does_not_mix_batches_pays_two_passes_for_a_mixed_step() -> None:
    """SGLang runs prefill and decode batches separately (enable_mixed_chunk=False): a mixed step costs both passes."""
    batch = [Entry("p", 100_000, 8192), Entry("d1", 50_000, 1), Entry("d2", 60_000, 1)]
    new = [new_request(e.request_id, e.computed + e.num_tokens) for e in batch]
    shape = BatchShape.from_plan(make_plan(0, batch))
    prefill, decode = shape.split()
    for engine in ("sglang", "trtllm"):
        deployment = Deployment(model="kimi-k2.5", gpu="b200", tp=8, kv_dtype="fp8", engine=engine)
        executor = SimExecutor(deployment, block_size=16, num_kv_blocks=20_000)
        executor.launch(make_plan(0, batch, new))
        elapsed = executor.collect().elapsed
        model = executor.cost_model
        one_pass = model.step_time(shape)
        two_passes = model.step_time(prefill) + model.step_time(decode)
        assert two_passes > one_pass  # a second pass pays the weights, the latency floor and the overhead again
        assert elapsed == pytest.approx(one_pass if model.engine.mixed_batches else two_passes)
    assert not ENGINES["sglang"].mixed_batches and ENGINES["trtllm"].mixed_batches
