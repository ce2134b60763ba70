"""Paged execution equals a dense reference forward of the same model, row for row.

Every test drives a :class:`ModelRunner` with hand-built plans and checks each
logit row it produces against a dense, cache-free, naive-form forward over the
tokens that request has seen (see ``checks.execute_and_check``).
"""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")

from tests.torch.checks import execute_and_check, greedy_result, step  # noqa: E402
from tests.torch.conftest import RunnerFactory  # noqa: E402
from tests.torch.plans import HandPlanner  # noqa: E402
from tokensched_torch import MLAConfig, MLAModel, greedy_reference  # noqa: E402


def prompt(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(256) for _ in range(n)]


@pytest.mark.parametrize("block_size", [1, 3, 4, 16])
@pytest.mark.parametrize("seed", [0, 1])
def test_chunked_prefill_with_arbitrary_chunk_sizes(make_runner: RunnerFactory, block_size: int, seed: int) -> None:
    rng = random.Random(seed)
    runner = make_runner(num_blocks=64, block_size=block_size)
    planner = HandPlanner(64, block_size, seed=seed)
    planner.add("a", prompt(rng, 37))
    while planner.remaining("a") > 1 or not planner.requests["a"].tokens[37:]:
        n = min(rng.randint(1, 13), planner.remaining("a"))
        step(runner, planner, planner.plan({"a": n}))
    for _ in range(3):
        step(runner, planner, planner.plan({"a": 1}))
    assert planner.requests["a"].tokens[37:] == greedy_reference(runner.model, planner.requests["a"].tokens[:37], 4)


def test_mixed_prefill_and_decode_in_one_step(make_runner: RunnerFactory) -> None:
    rng = random.Random(2)
    runner = make_runner()
    planner = HandPlanner(64, 4, seed=2)
    planner.add("decoding", prompt(rng, 9))
    step(runner, planner, planner.plan({"decoding": 9}))
    planner.add("chunked", prompt(rng, 20))
    step(runner, planner, planner.plan({"decoding": 1, "chunked": 7}))
    planner.add("fresh", prompt(rng, 5))
    # (decoding, chunked, fresh): a decode beside a middle chunk and a whole prompt, then beside the
    # last chunk (which samples) and a first decode, then three decodes.
    for sizes, samples in [((1, 6, 5), [1, 0, 1]), ((1, 7, 1), [1, 1, 1]), ((1, 1, 1), [1, 1, 1])]:
        plan = planner.plan(dict(zip(("decoding", "chunked", "fresh"), sizes, strict=True)))
        result = step(runner, planner, plan)
        assert [len(t) for t in result.sampled_token_ids] == samples


def test_prefix_shared_between_requests(make_runner: RunnerFactory) -> None:
    rng = random.Random(3)
    runner = make_runner()
    planner = HandPlanner(64, 4, seed=3)
    system = prompt(rng, 12)
    planner.add("a", [*system, *prompt(rng, 5)])
    step(runner, planner, planner.plan({"a": 17}))
    # b reuses a's first three blocks (12 tokens of KV it never computes) while a decodes in the same step.
    planner.add("b", [*system, *prompt(rng, 6)], share_from="a", shared_blocks=3)
    plan = planner.plan({"a": 1, "b": 6})
    assert plan.new_requests[0].num_cached_tokens == 12 and plan.num_computed_tokens == [17, 12]
    step(runner, planner, plan)
    for _ in range(3):
        step(runner, planner, planner.plan({"a": 1, "b": 1}))
    assert planner.requests["b"].tokens[18:] == greedy_reference(runner.model, planner.requests["b"].tokens[:18], 4)


def test_prefix_shared_between_turns_of_a_session(make_runner: RunnerFactory) -> None:
    rng = random.Random(4)
    runner = make_runner()
    planner = HandPlanner(64, 4, seed=4)
    planner.add("turn1", prompt(rng, 10))
    step(runner, planner, planner.plan({"turn1": 10}))
    for _ in range(5):
        step(runner, planner, planner.plan({"turn1": 1}))
    turn1 = planner.requests["turn1"]
    computed = turn1.num_scheduled  # the last sampled token was never fed back, so its KV is absent
    history = list(turn1.tokens)
    planner.finish("turn1", keep_blocks=True)
    planner.add("turn2", [*history, *prompt(rng, 7)], cached_blocks=turn1.blocks[: computed // 4])
    plan = planner.plan({"turn2": planner.remaining("turn2")})
    assert plan.removed_request_ids == ("turn1",) and plan.num_computed_tokens == [computed // 4 * 4]
    step(runner, planner, plan)
    step(runner, planner, planner.plan({"turn2": 1}))


def test_preemption_and_recompute(make_runner: RunnerFactory) -> None:
    rng = random.Random(5)
    runner = make_runner(num_blocks=12)
    planner = HandPlanner(12, 4, seed=5)
    planner.add("victim", prompt(rng, 11))
    planner.add("other", prompt(rng, 6))
    step(runner, planner, planner.plan({"victim": 11, "other": 6}))
    for _ in range(3):
        step(runner, planner, planner.plan({"victim": 1, "other": 1}))
    victim_blocks = list(planner.requests["victim"].blocks)
    planner.preempt("victim")
    # other runs on and takes a block the victim gave back (next to be popped), overwriting its contents.
    planner.free = [b for b in planner.free if b not in victim_blocks] + victim_blocks
    plan = planner.plan({"other": 1})
    assert plan.removed_request_ids == ("victim",)
    step(runner, planner, plan)
    for _ in range(5):
        step(runner, planner, planner.plan({"other": 1}))
    assert set(planner.requests["other"].blocks) & set(victim_blocks)
    # The victim comes back in full (prompt + 4 outputs) and recomputes in two chunks.
    plan = planner.plan({"victim": 9, "other": 1})
    assert plan.new_requests[0].num_output_tokens == 4 and len(plan.new_requests[0].token_ids) == 15
    step(runner, planner, plan)
    step(runner, planner, planner.plan({"victim": planner.remaining("victim"), "other": 1}))
    for _ in range(2):
        step(runner, planner, planner.plan({"victim": 1}))
    victim = planner.requests["victim"]
    assert victim.tokens[11:] == greedy_reference(runner.model, victim.tokens[:11], len(victim.tokens) - 11)


def test_scattered_out_of_order_block_ids(make_runner: RunnerFactory) -> None:
    rng = random.Random(6)
    runner = make_runner(num_blocks=40)
    planner = HandPlanner(40, 4, seed=6)
    planner.free = [3, 31, 0, 17, 8, 39, 22, 5, 12, 1, 27, 14][::-1]  # popped from the end
    planner.add("a", prompt(rng, 13))
    planner.add("b", prompt(rng, 9))
    step(runner, planner, planner.plan({"a": 5, "b": 9}))
    step(runner, planner, planner.plan({"a": 8, "b": 1}))
    table = planner.requests["a"].blocks
    assert table != sorted(table) and 0 in planner.requests["a"].blocks + planner.requests["b"].blocks
    for _ in range(3):
        step(runner, planner, planner.plan({"a": 1, "b": 1}))


def test_two_steps_in_flight_resolve_placeholders(make_runner: RunnerFactory) -> None:
    rng = random.Random(7)
    runner = make_runner()
    planner = HandPlanner(64, 4, seed=7)
    planner.add("a", prompt(rng, 6))
    planner.add("b", prompt(rng, 3))
    previous = planner.plan({"a": 6, "b": 3})
    for _ in range(4):
        # Plan the next step before the previous one has run: its inputs are placeholders.
        nxt = planner.plan({"a": 1, "b": 1})
        assert nxt.token_ids == [-1, -1]
        step(runner, planner, previous)
        previous = nxt
    step(runner, planner, previous)
    a = planner.requests["a"]
    assert a.tokens[6:] == greedy_reference(runner.model, a.tokens[:6], 5)


def test_draft_rows_match_dense_and_greedy_verification_keeps_greedy_tokens(make_runner: RunnerFactory) -> None:
    rng = random.Random(8)
    runner = make_runner()
    planner = HandPlanner(64, 4, seed=8)
    planner.add("a", prompt(rng, 7))
    step(runner, planner, planner.plan({"a": 7}))
    expected = greedy_reference(runner.model, planner.requests["a"].tokens[:7], 12)
    while len(planner.requests["a"].tokens) < 7 + 12:
        have = len(planner.requests["a"].tokens) - 7
        # Half-right drafts: the true continuation with one wrong token somewhere (or none).
        drafts = list(expected[have : have + 3])
        if drafts and rng.random() < 0.6:
            bad = rng.randrange(len(drafts))
            drafts[bad] = (drafts[bad] + 1) % 256
        step(runner, planner, planner.plan({"a": 1 + len(drafts)}, drafts={"a": drafts}))
    assert planner.requests["a"].tokens[7:] == expected[: len(planner.requests["a"].tokens) - 7]


@pytest.mark.parametrize(
    "cfg",
    [
        MLAConfig(num_experts=4, num_experts_per_tok=2, num_shared_experts=1, first_dense_layers=1),
        MLAConfig(q_lora_rank=None, num_heads=2, kv_lora_rank=24, qk_rope_head_dim=8, v_head_dim=12),
    ],
    ids=["moe", "full-rank-q"],
)
def test_model_variants_match_dense(make_runner: RunnerFactory, cfg: MLAConfig) -> None:
    rng = random.Random(9)
    runner = make_runner(m=MLAModel(cfg).double())
    planner = HandPlanner(64, 4, seed=9)
    planner.add("a", prompt(rng, 10))
    planner.add("b", prompt(rng, 4))
    step(runner, planner, planner.plan({"a": 6, "b": 4}))
    step(runner, planner, planner.plan({"a": 4, "b": 1}))
    step(runner, planner, planner.plan({"a": 1, "b": 1}))


@pytest.mark.parametrize("seed", range(4))
def test_random_schedules_match_dense(make_runner: RunnerFactory, seed: int) -> None:
    """Everything at once: random chunking, arrivals, prefix hits, preemption, placeholders, drafts."""
    rng = random.Random(100 + seed)
    block_size = rng.choice([1, 2, 4, 5])
    runner = make_runner(num_blocks=96, block_size=block_size)
    planner = HandPlanner(96, block_size, seed=seed)
    shared = prompt(rng, 3 * block_size + 1)
    in_flight = None
    for n in range(24):
        reqs = planner.requests
        if len(reqs) < 3 and rng.random() < 0.5:
            rid = f"r{n}"
            donor = next((r for r in reqs.values() if r.tokens[: len(shared)] == shared), None)
            if donor is not None and donor.num_scheduled >= len(shared) and rng.random() < 0.7:
                planner.add(rid, [*shared, *prompt(rng, 3)], share_from=donor.request_id, shared_blocks=3)
            else:
                planner.add(rid, [*shared, *prompt(rng, rng.randint(1, 9))] if rng.random() < 0.6 else prompt(rng, 7))
        idle = [r for r in reqs.values() if r.in_flight == 0 and r.num_scheduled and rng.random() < 0.1]
        if in_flight is None and idle:
            planner.preempt(idle[0].request_id)
        chunks: dict[str, int] = {}
        drafts: dict[str, list[int]] = {}
        for r in list(reqs.values()):
            left = planner.remaining(r.request_id)
            if r.in_flight and (in_flight is None or left != 1 or rng.random() < 0.5):
                continue  # at most one placeholder step per request
            if left > 1:
                chunks[r.request_id] = min(left, rng.randint(1, 8))
            elif left == 1:
                d = prompt(rng, rng.randint(0, 2)) if not r.in_flight else []
                chunks[r.request_id] = 1 + len(d)
                drafts[r.request_id] = d
        if not chunks:
            continue
        plan = planner.plan(chunks, drafts)
        if in_flight is not None:
            step(runner, planner, in_flight)
        in_flight = plan if rng.random() < 0.5 else None
        if in_flight is None:
            step(runner, planner, plan)
        for r in list(reqs.values()):
            if len(r.tokens) - r.num_prompt >= 6 and r.in_flight == 0 and rng.random() < 0.5:
                planner.finish(r.request_id, keep_blocks=rng.random() < 0.3)
    if in_flight is not None:
        step(runner, planner, in_flight)


def test_greedy_result_helper_accepts_matching_drafts(make_runner: RunnerFactory) -> None:
    """The test helper itself: a draft equal to the argmax is accepted and the next row gives the bonus."""
    rng = random.Random(10)
    runner = make_runner()
    planner = HandPlanner(64, 4, seed=10)
    planner.add("a", prompt(rng, 5))
    step(runner, planner, planner.plan({"a": 5}))
    truth = greedy_reference(runner.model, planner.requests["a"].tokens[:5], 3)
    plan = planner.plan({"a": 3}, drafts={"a": truth[1:3]})
    result = greedy_result(plan, execute_and_check(runner, plan))
    assert result.sampled_token_ids == [
        [*truth[1:3], greedy_reference(runner.model, [*planner.requests["a"].tokens, *truth[1:3]], 1)[0]]
    ]
