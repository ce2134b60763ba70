"""The DP-attention lockstep with decode runs against the same lockstep in single steps: identical everything.

``drive_lockstep`` lets a rank whose scheduler offers a decode run take its
lockstep steps from the run (each step still ends when the slowest rank's
does). Two copies of the same ranks get the same closed-loop sessions (a
session's next turn arrives a think time after its previous answer, its
prompt extending the previous one, so the ranks' prefix caches and the
router see the answers): one driven with runs, one with single steps only.
Every finished turn (tokens, time, reason), the metrics summary (samples
included, taken often enough to fall inside runs), the refusals, and each
rank's scheduler counters, pool, requests and simulated clock must be equal.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tokensched import RequestSpec, Scheduler
from tokensched.benchmark.cluster import _Chains, _Replica
from tokensched.benchmark.dp_attention import _RankRun, drive_lockstep
from tokensched.benchmark.metrics import MetricsCollector
from tokensched.cluster.router import SimRouter
from tokensched.cluster.spec import RouterPolicy
from tokensched.engine import Engine
from tokensched.machines.request import Decoding, Prefilling
from tokensched.plan import FinishReason
from tokensched.policies import PrefixAwarePolicy
from tokensched_sim import Deployment, SimExecutor

EXAMPLES = int(os.environ.get("TOKENSCHED_STATEFUL_EXAMPLES", "500"))
BS = 4
STOP = 3.0  # simulated seconds: a few hundred lockstep rounds of the small model


class _Sessions:
    """Closed-loop sessions: turn ``t + 1`` arrives ``think`` s after turn ``t``'s answer, extending its prompt."""

    def __init__(self, sessions: list[tuple[float, float, list[tuple[int, int]]]]) -> None:
        self.answer_lengths: dict[str, int] = {}
        self.finished: list[tuple[str, tuple[int, ...], float, FinishReason]] = []
        self._turns: dict[str, tuple[int, int]] = {}  # request id -> (session, turn)
        self._sessions = sessions
        self._prompts: dict[int, list[int]] = {}
        self._due: list[tuple[float, str, RequestSpec]] = []
        self.released_at: list[float] = []  # the times turns were released (to report coverage)
        for s, (start, _, turns) in enumerate(sessions):
            self._queue(s, 0, start, [])
            for t, (_, answer) in enumerate(turns):
                self.answer_lengths[f"s{s}t{t}"] = answer

    def _queue(self, s: int, t: int, at: float, context: list[int]) -> None:
        new, answer = self._sessions[s][2][t]
        prompt = [*context, *(7 + (s * 31 + t * 17 + j) % 50 for j in range(new))][-160:]
        self._prompts[s] = prompt
        rid = f"s{s}t{t}"
        spec = RequestSpec(
            request_id=rid,
            prompt_token_ids=prompt,
            max_tokens=answer + 2,
            eos_token_id=0,
            session_id=f"s{s}",
            arrival_time=at,
        )
        self._turns[rid] = (s, t)
        self._due.append((at, rid, spec))
        self._due.sort(key=lambda d: (d[0], d[1]))

    def next_release_time(self) -> float | None:
        return self._due[0][0] if self._due else None

    def release(self, now: float) -> list[RequestSpec]:
        out = []
        while self._due and self._due[0][0] <= now:
            out.append(self._due.pop(0)[2])
        if out:
            self.released_at.append(now)
        return out

    def on_finished(self, request_id: str, tokens: Any, t: float, reason: FinishReason) -> None:
        self.finished.append((request_id, tuple(tokens), t, reason))
        s, turn = self._turns[request_id]
        if reason is not FinishReason.ERROR and turn + 1 < len(self._sessions[s][2]):
            self._queue(s, turn + 1, t + self._sessions[s][1], [*self._prompts[s], *tokens])


def _ranks(n: int, spec_tokens: int, in_flight: int, blocks: int, budget: int, caching: bool, seed: int,
           prefix_aware: bool, lengths: dict[str, int]) -> list[_Replica]:  # fmt: skip
    out = []
    for rank in range(n):
        executor = SimExecutor(
            Deployment(model="dense-8b", gpu="h100", tp=1),
            block_size=BS,
            num_kv_blocks=blocks,
            num_speculative_tokens=spec_tokens,
            output_lengths=lengths.get,
            seed=seed * 10 + rank,
        )
        engine = Engine.create(
            executor,
            PrefixAwarePolicy() if prefix_aware else None,
            max_batched_tokens=budget,
            num_speculative_tokens=spec_tokens,
            max_steps_in_flight=in_flight,
            enable_prefix_caching=caching,
            max_model_len=400,
            max_running=4,
        )
        out.append(_Replica(engine))
    return out


def _state(s: Scheduler) -> Any:
    pool = s.pool
    n = s.config.num_blocks
    requests = []
    for rid, r in s.live.items():
        state = r.state
        cursor = (
            (state.num_computed, state.num_scheduled, state.num_committed, list(state.blocks))
            if type(state) is Prefilling or type(state) is Decoding
            else ()
        )
        requests.append((rid, type(state).__name__, cursor, r.tokens.tolist(), list(r.block_hashes), r.epoch))
    return (
        s.stats(),
        [(int(pool.state(b)), pool.refcount(b), pool.block_hash(b)) for b in range(n)],
        pool.eviction.order(),
        requests,
        list(s.running),
        [r.request_id for r in s.waiting],
    )


sessions = st.lists(
    st.tuples(
        st.floats(0.0, 1.5),  # start
        st.floats(0.0, 0.3),  # think time
        st.lists(st.tuples(st.integers(1, 40), st.integers(1, 60)), min_size=1, max_size=3),  # (new tokens, answer)
    ),
    min_size=1,
    max_size=8,
)


@settings(
    max_examples=max(1, EXAMPLES // 10),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    plan=sessions,
    n=st.integers(2, 3),
    spec_tokens=st.sampled_from([0, 3]),
    in_flight=st.sampled_from([1, 1, 2]),
    blocks=st.integers(24, 80),
    budget=st.sampled_from([8, 16, 64]),
    caching=st.booleans(),
    seed=st.integers(0, 2**16),
    prefix_aware=st.booleans(),
    least_load=st.booleans(),
    sample_s=st.sampled_from([0.01, 0.1, 1.0]),
)
def test_the_lockstep_with_runs_equals_the_lockstep_in_single_steps(
    plan: list[tuple[float, float, list[tuple[int, int]]]],
    n: int,
    spec_tokens: int,
    in_flight: int,
    blocks: int,
    budget: int,
    caching: bool,
    seed: int,
    prefix_aware: bool,
    least_load: bool,
    sample_s: float,
) -> None:
    results = []
    for runs in (False, True):
        workload = _Sessions(plan)
        ranks = _ranks(n, spec_tokens, in_flight, blocks, budget, caching, seed, prefix_aware, workload.answer_lengths)
        router = SimRouter(RouterPolicy.LEAST_LOAD if least_load else RouterPolicy.ROUND_ROBIN, n, seed=seed)
        metrics = MetricsCollector(num_gpus=n, window_start=0.0, window_end=STOP, sample_interval_s=sample_s)
        took, original = _count_run_steps()
        try:
            rejected = drive_lockstep(ranks, router, workload, metrics, _Chains(BS), STOP, runs=runs)  # type: ignore[arg-type]
        finally:
            _RankRun.collect, _RankRun.stats, _RankRun.ended, _RankRun.complete = original  # type: ignore[method-assign]
        if runs:
            event(f"steps taken from runs: {'none' if not took[0] else '1-19' if took[0] < 20 else '20+'}")
            if took[1]:
                event("a sample with a run out that had taken blocks since it began")
            chunked = "none" if not took[2] else "1-9" if took[2] < 10 else "10+"
            event(f"steps taken from runs with a prefill chunk: {chunked}")
            if any(first < t < last for first, last in took[3] for t in workload.released_at):
                event("a turn released (to another rank) while a rank's run went on")
        ranks_state = [(_state(r.scheduler), r.now, r.engine.executor.stats) for r in ranks]  # type: ignore[attr-defined]
        results.append((rejected, workload.finished, metrics.summarize(STOP).model_dump_json(), ranks_state))
    single, with_runs = results
    assert with_runs[0] == single[0]
    assert with_runs[1] == single[1]
    assert with_runs[2] == single[2]
    assert with_runs[3] == single[3]


def _count_run_steps() -> tuple[list[int], Any]:
    """Count the steps ranks take from runs and the samples that read a run's blocks (to report coverage).

    Returns the counters and the methods to restore.
    """
    counter: list[Any] = [0, 0, 0, []]  # run steps, samples reading a run's blocks, chunk steps, run spans
    collect_before, stats_before = _RankRun.collect, _RankRun.stats
    ended_before, complete_before = _RankRun.ended, _RankRun.complete

    def collect(self: _RankRun, rank: _Replica) -> None:
        counter[0] += 1
        steps = self._steps
        counter[2] += len(steps.done) in steps.cursor.chunks  # type: ignore[attr-defined]
        collect_before(self, rank)

    def stats(self: _RankRun, stats: Any) -> Any:
        seen = stats_before(self, stats)
        if seen is not None and seen.kv_usage != stats.kv_usage:
            counter[1] += 1
        return seen

    def span(run: _RankRun) -> None:
        if run._times:
            counter[3].append((run._times[0], run._times[-1]))

    def ended(self: _RankRun, end: float, *args: Any) -> Any:
        going_on = ended_before(self, end, *args)
        if going_on is None:
            span(self)
        return going_on

    def complete(self: _RankRun, *args: Any) -> None:
        complete_before(self, *args)
        span(self)

    _RankRun.collect, _RankRun.stats = collect, stats  # type: ignore[method-assign]
    _RankRun.ended, _RankRun.complete = ended, complete  # type: ignore[method-assign]
    return counter, (collect_before, stats_before, ended_before, complete_before)
