"""The overlapped loop over any executor: plan step k+1 while step k runs, apply results in order.

Used by the benchmark, the server and the examples. An engine with its own
loop embeds only the :class:`~tokensched.scheduler.Scheduler` instead (see
``examples/embed.py``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

from tokensched.config import SchedulerConfig
from tokensched.errors import ExecutorError, TokenschedError
from tokensched.executor import Executor, RunExecutor
from tokensched.host_kv import LoadCost
from tokensched.plan import RequestOutput
from tokensched.policies.base import Policy
from tokensched.scheduler import Scheduler


class Engine:
    """Drives one scheduler with one executor, keeping up to ``max_steps_in_flight`` steps launched."""

    def __init__(self, scheduler: Scheduler, executor: Executor) -> None:
        if scheduler.config.block_size != executor.block_size:
            raise TokenschedError(
                f"scheduler block_size {scheduler.config.block_size} != executor block_size {executor.block_size}"
            )
        if scheduler.config.num_blocks > executor.num_kv_blocks:
            raise TokenschedError(
                f"scheduler has {scheduler.config.num_blocks} blocks but the executor holds {executor.num_kv_blocks}"
            )
        self.scheduler = scheduler
        self.executor = executor
        self._launched: deque[int] = deque()
        self._runs = executor if isinstance(executor, RunExecutor) else None

    @classmethod
    def create(cls, executor: Executor, policy: Policy | None = None, **config: object) -> Engine:
        """A scheduler sized by the executor (its block size, block count and clock) and an engine over it."""
        settings: dict[str, object] = {"num_blocks": executor.num_kv_blocks, "block_size": executor.block_size}
        settings.update(config)
        load_cost = executor if isinstance(executor, LoadCost) else None  # the executor prices host loads
        scheduler = Scheduler(
            SchedulerConfig.model_validate(settings), policy=policy, clock=executor.now, load_cost=load_cost
        )
        return cls(scheduler, executor)

    @property
    def num_in_flight(self) -> int:
        return len(self._launched)

    def launch_ready(self) -> int:
        """Plan and launch steps until the scheduler has nothing more or the in-flight limit is reached."""
        scheduler = self.scheduler
        steps = scheduler.steps
        launched = 0
        while True:
            plan = scheduler.plan()
            if plan is None:
                return launched
            self.executor.launch(plan)
            self._launched.append(plan.step_id)
            launched += 1
            if steps.full:  # plan() would say WINDOW_FULL and change nothing else: not asked
                return launched

    def step(self) -> Sequence[RequestOutput]:
        """Launch what can run, then wait for the oldest step and apply it; [] when nothing is in flight."""
        self.launch_ready()
        if not self._launched:
            return []
        step_id = self._launched.popleft()
        try:
            result = self.executor.collect()
        except ExecutorError as error:
            return self.scheduler.fail(step_id, error)  # collect() answers for the oldest step launched
        return self.scheduler.complete(result)

    def step_run(
        self, until: float, max_steps: int = 256, *, cross_blocks: bool = True
    ) -> list[tuple[float, Sequence[RequestOutput]]] | None:
        """Several decode steps in one call when the scheduler and executor allow it, else None.

        Returns each step's end time on the executor's clock and its outputs.
        Steps start only before ``until`` (the caller's next event: an arrival,
        a sample), so a caller that looks at the clock between steps sees the
        same run as with :meth:`step`. None: call :meth:`step` instead.
        ``cross_blocks`` lets a run go on where a row needs a new block (see
        :meth:`Scheduler.plan_run <tokensched.scheduler.Scheduler.plan_run>`):
        pass False for an executor that needs the ids of new blocks before it
        runs a step. A run the executor fails (ExecutorError) fails its
        requests as :meth:`Scheduler.fail_run` says: one entry, their outputs.
        """
        if self._runs is None or len(self._launched) > 1:
            return None
        run = self.scheduler.plan_run(max_steps, cross_blocks=cross_blocks)
        if run is None:
            return None
        try:
            result = self._runs.launch_run(run, until)
        except ExecutorError as error:  # the run and the steps in flight when it began failed together
            self._launched.clear()
            return [(self.executor.now(), self.scheduler.fail_run(error))]
        outputs = self.scheduler.complete_run(result)
        done = len(result.sampled_token_ids)
        self._launched.clear()
        self._launched.extend(range(run.first_step_id + done, run.first_step_id + done + run.depth - 1))
        times = result.end_times or [self.executor.now()] * len(outputs)
        return list(zip(times, outputs, strict=True))

    def run(self) -> Iterator[Sequence[RequestOutput]]:
        """Step until every submitted request has finished; yields each step's outputs."""
        while self.scheduler.has_work:
            if self.launch_ready() == 0 and not self._launched:
                raise TokenschedError("the scheduler has unfinished requests but planned no step (a bug)")
            yield self.step()
