"""Hypothesis strategies for scheduler configs and requests, sized so that shrinking stays readable.

Prompts are drawn from a few shared prefixes plus a random tail, so the prefix
cache is exercised; pools are small so preemption happens.
"""

from __future__ import annotations

from hypothesis import strategies as st

from tokensched.config import RequestSpec, SamplingParams, SchedulerConfig, StepFailurePolicy

EOS = 0
VOCAB = 50
PREFIXES: tuple[tuple[int, ...], ...] = (
    (),
    tuple(range(1, 9)),
    tuple(range(1, 17)),
    tuple(range(20, 33)),
)


@st.composite
def scheduler_configs(
    draw: st.DrawFn,
    max_blocks: int = 24,
    speculative: bool | None = None,
) -> SchedulerConfig:
    """Small pools and budgets: chunking, preemption and overlap all happen within a few dozen steps."""
    block_size = draw(st.sampled_from([1, 2, 4]))
    if speculative is None:  # half the runs without drafts, so decodes overlap (drafts need their last result)
        k_spec = draw(st.sampled_from([0, 0, 0, 1, 2, 3]))
    else:
        k_spec = draw(st.integers(1, 3)) if speculative else 0
    return SchedulerConfig(
        num_blocks=draw(st.integers(12, max_blocks)),
        block_size=block_size,
        max_model_len=48,
        max_batched_tokens=draw(st.integers(4 + k_spec, 24)),
        max_running=draw(st.integers(1, 6)),
        max_steps_in_flight=draw(st.integers(1, 3)),
        enable_prefix_caching=draw(st.booleans()),
        long_prefill_chunk=draw(st.none() | st.integers(1, 8)),
        num_speculative_tokens=k_spec,
        on_step_failure=draw(st.sampled_from(list(StepFailurePolicy))),
        max_step_retries=draw(st.integers(0, 2)),
        session_kv_retention_s=draw(st.none() | st.sampled_from([0.02, 0.1])),
    )


@st.composite
def prompts(draw: st.DrawFn, max_tail: int = 10) -> list[int]:
    prefix = draw(st.sampled_from(PREFIXES))
    tail = draw(st.lists(st.integers(1, VOCAB - 1), min_size=0 if prefix else 1, max_size=max_tail))
    return [*prefix, *tail]


@st.composite
def request_specs(draw: st.DrawFn, request_id: str, max_tokens: int = 8) -> RequestSpec:
    prompt = draw(prompts())
    return RequestSpec(
        request_id=request_id,
        prompt_token_ids=prompt,
        max_tokens=draw(st.integers(1, max_tokens)),
        stop_token_ids=frozenset(draw(st.sets(st.integers(1, VOCAB - 1), max_size=2))),
        eos_token_id=EOS,
        ignore_eos=draw(st.booleans()),
        priority=draw(st.integers(0, 3)),
        session_id=draw(st.none() | st.sampled_from(["a", "b"])),
        sampling=SamplingParams(),
    )
