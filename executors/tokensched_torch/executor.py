"""TorchExecutor: runs StepPlans with a real MLA model in PyTorch, on CPU or CUDA.

``launch`` runs the step (synchronously, or on one background worker thread
with ``background=True`` so the host can plan the next step meanwhile) and
queues its result; ``collect`` returns results in launch order. A single worker
runs steps strictly in order, so step k has recorded its tokens before step k+1
resolves its placeholders.

Example::

    executor = TorchExecutor(MLAConfig(), num_blocks=256, block_size=16, dtype=torch.float64)
    executor.launch(plan)
    result = executor.collect()
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

import attrs
import torch

from tokensched.errors import ExecutorError, TokenschedError
from tokensched.executor import WallClock
from tokensched.plan import StepPlan, StepResult
from tokensched_torch.attention import MLAAttentionBackend
from tokensched_torch.drafter import Drafter, NgramDrafter
from tokensched_torch.model import MLAConfig, MLAModel
from tokensched_torch.runner import ModelRunner
from tokensched_torch.sampling import SampleRequest, choose_tokens, request_seed

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(_DTYPES)}") from None


class TorchExecutor(WallClock):
    """The tokensched Executor over :class:`~tokensched_torch.model.MLAModel` and a paged latent cache.

    ``num_speculative_tokens > 0`` makes it propose that many drafts per request
    after every sampling step (with ``drafter``, by default n-gram prompt lookup);
    the scheduler's ``num_speculative_tokens`` should match. ``attention`` swaps
    the attention backend (the FlashInfer executor passes its own). A ``model``
    passed in is moved to ``device`` and ``dtype`` in place (``nn.Module.to``).
    Sampling draws are fixed by (request seed, position), so a seeded request
    samples the same tokens however it is batched, chunked or preempted.
    ``host_kv_blocks`` sizes the host pool a scheduler's host tier copies blocks
    to and from (:class:`~tokensched_torch.host_pool.HostKVPool`); match
    ``SchedulerConfig.host_kv_blocks``.
    """

    def __init__(
        self,
        model_config: MLAConfig | None = None,
        *,
        num_blocks: int = 512,
        block_size: int = 16,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str = torch.float32,
        seed: int = 0,
        num_speculative_tokens: int = 0,
        drafter: Drafter | None = None,
        model: MLAModel | None = None,
        attention: MLAAttentionBackend | None = None,
        background: bool = False,
        check_plans: bool = True,
        host_kv_blocks: int = 0,
    ) -> None:
        if model is None:
            model = MLAModel(model_config or MLAConfig())
        elif model_config is not None and model_config != model.cfg:
            raise ValueError("pass model_config or a model, not two different configs")
        self.model = model.to(device=torch.device(device), dtype=resolve_dtype(dtype)).eval()
        self.runner = ModelRunner(
            self.model,
            num_blocks,
            block_size,
            backend=attention,
            check_plans=check_plans,
            host_kv_blocks=host_kv_blocks,
        )
        self.seed = seed
        self.num_speculative_tokens = num_speculative_tokens
        self.drafter: Drafter = drafter or NgramDrafter()
        self._seeds: dict[str, int] = {}
        self._pending: deque[tuple[int, StepResult | ExecutorError | Future[StepResult | ExecutorError]]] = deque()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokensched-torch") if background else None

    @property
    def block_size(self) -> int:
        return self.runner.cache.block_size

    @property
    def num_kv_blocks(self) -> int:
        return self.runner.cache.num_blocks

    @property
    def num_in_flight(self) -> int:
        return len(self._pending)

    def launch(self, plan: StepPlan) -> None:
        if self._worker is None:
            self._pending.append((plan.step_id, self._run_guarded(plan)))
        else:
            self._pending.append((plan.step_id, self._worker.submit(self._run_guarded, plan)))

    def collect(self) -> StepResult:
        if not self._pending:
            raise TokenschedError("collect() called with no step in flight")
        _, outcome = self._pending.popleft()
        if isinstance(outcome, Future):
            outcome = outcome.result()
        if isinstance(outcome, ExecutorError):
            raise outcome
        return outcome

    def close(self) -> None:
        """Stop the background worker (if any) after the steps already launched."""
        if self._worker is not None:
            self._worker.shutdown(wait=True)

    def __enter__(self) -> TorchExecutor:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _run_guarded(self, plan: StepPlan) -> StepResult | ExecutorError:
        try:
            return self._run(plan)
        except Exception as exc:  # reported through collect(), carrying the step id
            error = ExecutorError(plan.step_id, f"{type(exc).__name__}: {exc}")
            error.__cause__ = exc
            return error

    def _run(self, plan: StepPlan) -> StepResult:
        started = time.perf_counter()
        for request_id in plan.removed_request_ids:
            self._seeds.pop(request_id, None)
        for new in plan.new_requests:
            self._seeds[new.request_id] = request_seed(self.seed, new.request_id, new.sampling)
        forward = self.runner.execute(plan)
        requests = self.runner.mirror.requests
        to_sample: list[SampleRequest] = []
        for i, request_id in enumerate(plan.request_ids):
            if not plan.sample[i]:
                continue
            drafts = plan.draft_token_ids[i]
            end = plan.num_computed_tokens[i] + plan.num_scheduled_tokens(i)
            to_sample.append(
                SampleRequest(
                    row_start=forward.row_offsets[i],
                    drafts=drafts,
                    params=requests[request_id].sampling,
                    seed=self._seeds[request_id],
                    first_position=end - len(drafts),
                )
            )
        chosen, chosen_logprobs = choose_tokens(forward.logits, to_sample)
        sampled: list[list[int]] = []
        logprobs: list[list[float]] | None = [] if chosen_logprobs is not None else None
        k = 0
        for i in range(plan.num_requests):
            if plan.sample[i]:
                sampled.append(chosen[k])
                if logprobs is not None and chosen_logprobs is not None:
                    logprobs.append(chosen_logprobs[k])
                k += 1
            else:
                sampled.append([])
                if logprobs is not None:
                    logprobs.append([])
        result = StepResult(step_id=plan.step_id, sampled_token_ids=sampled, logprobs=logprobs)
        self.runner.finish(plan, result)
        proposals = self._propose(plan, sampled) if self.num_speculative_tokens else None
        return attrs.evolve(result, draft_token_ids=proposals, elapsed=time.perf_counter() - started)

    def _propose(self, plan: StepPlan, sampled: list[list[int]]) -> list[list[int]]:
        requests = self.runner.mirror.requests
        k = self.num_speculative_tokens
        return [
            self.drafter.propose(requests[request_id].token_ids, k) if tokens else []
            for request_id, tokens in zip(plan.request_ids, sampled, strict=True)
        ]
