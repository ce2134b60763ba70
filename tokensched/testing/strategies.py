"""Hypothesis strategies for scheduler configs and requests, sized so that shrinking stays readable.

Prompts are drawn from a few shared prefixes plus a random tail, so the prefix
cache is exercised; pools are small so preemption happens.

Uniform draws rarely land on the edges where the budget and block rules
change, so the strategies lean toward them on purpose:

- budgets a few tokens above one decode with its drafts, so a step's token
  budget is filled exactly (also while a speculative row grows);
- prompts that end exactly on a block edge (their last block is full, and the
  first sampled token opens a new one);
- requests whose worst case fills the pool exactly, or overshoots it by one
  block (the capacity check's edge, with and without drafts).

:mod:`tokensched.testing.machine` counts how often each edge is reached
(:data:`BOUNDARY_EVENTS`) so a test run can show that it was.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import event
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

BOUNDARY_EVENTS: Counter[str] = Counter()
"""How often each boundary was reached, over every state-machine run in this process (printed by CI)."""


def boundary(name: str) -> None:
    """Record that a run reached boundary ``name`` (a hypothesis event, and a count for the run's summary)."""
    BOUNDARY_EVENTS[name] += 1
    event(f"boundary: {name}")


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
    # A third of the budgets hold one to three decodes with their drafts: filled exactly, often.
    budget = draw(st.integers(1 + k_spec, 3 * (1 + k_spec)) | st.integers(4 + k_spec, 24) | st.integers(4 + k_spec, 24))
    return SchedulerConfig(
        num_blocks=draw(st.integers(12, max_blocks)),
        block_size=block_size,
        max_model_len=48,
        max_batched_tokens=budget,
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
def prompts(draw: st.DrawFn, max_tail: int = 10, block_size: int | None = None) -> list[int]:
    """A shared prefix plus a tail; with ``block_size``, a third end exactly on a block edge."""
    prefix = draw(st.sampled_from(PREFIXES))
    tail = draw(st.lists(st.integers(1, VOCAB - 1), min_size=0 if prefix else 1, max_size=max_tail))
    prompt = [*prefix, *tail]
    if block_size is not None and block_size > 1 and draw(st.integers(0, 2)) == 0:
        extra = -len(prompt) % block_size
        prompt += draw(st.lists(st.integers(1, VOCAB - 1), min_size=extra, max_size=extra))
    return prompt


@st.composite
def request_specs(
    draw: st.DrawFn, request_id: str, max_tokens: int = 8, config: SchedulerConfig | None = None
) -> RequestSpec:
    """A request; with ``config``, one in eight is sized to the pool's edge (fits exactly, or one block short)."""
    max_new = draw(st.integers(1, max_tokens))
    if config is not None and draw(st.integers(0, 7)) == 0:
        prompt = draw(_pool_edge_prompt(config, max_new))
    else:
        prompt = draw(prompts(block_size=config.block_size if config is not None else None))
    return RequestSpec(
        request_id=request_id,
        prompt_token_ids=prompt,
        max_tokens=max_new,
        stop_token_ids=frozenset(draw(st.sets(st.integers(1, VOCAB - 1), max_size=2))),
        eos_token_id=EOS,
        ignore_eos=draw(st.booleans()),
        priority=draw(st.integers(0, 3)),
        session_id=draw(st.none() | st.sampled_from(["a", "b"])),
        sampling=SamplingParams(),
    )


@st.composite
def _pool_edge_prompt(draw: st.DrawFn, config: SchedulerConfig, max_tokens: int) -> list[int]:
    """A prompt whose worst case (prompt + max_tokens - 1 positions) needs the whole pool, or one block more."""
    bs = config.block_size
    blocks = config.num_blocks + draw(st.integers(0, 1))
    length = blocks * bs - draw(st.integers(0, bs - 1)) - max_tokens + 1
    length = max(1, min(length, config.max_model_len - max_tokens))
    return draw(st.lists(st.integers(1, VOCAB - 1), min_size=length, max_size=length))
