"""One step's forward pass: plan in, logits of the rows that sample out.

The runner owns the model, the paged cache, the attention backend and the
:class:`~tokensched.executor.RequestMirror` (block tables, token histories,
placeholder resolution). Sampling and drafting live in the executor on top, so
tests can compare the runner's logits with the dense reference directly.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from tokensched.errors import InvalidRequest
from tokensched.executor import RequestMirror
from tokensched.plan import StepPlan, StepResult
from tokensched_torch.attention import MLAAttentionBackend, MLAStepMetadata, TorchMLAAttention
from tokensched_torch.cache import PagedLatentCache
from tokensched_torch.host_pool import HostKVPool
from tokensched_torch.model import MLAModel


@attrs.frozen(slots=True)
class StepForward:
    """The logits one step produced.

    Request ``i`` owns ``logits[row_offsets[i]:row_offsets[i + 1]]``: every one
    of its tokens with ``all_logits``, else ``len(drafts) + 1`` rows (its last
    tokens) when it samples and none when it does not.
    """

    token_ids: list[int]  # the plan's tokens with placeholders resolved
    logits: Tensor
    row_offsets: list[int]
    meta: MLAStepMetadata


class ModelRunner:
    """Runs plans through an :class:`MLAModel` over a :class:`PagedLatentCache`."""

    def __init__(
        self,
        model: MLAModel,
        num_blocks: int,
        block_size: int,
        *,
        backend: MLAAttentionBackend | None = None,
        check_plans: bool = True,
        host_kv_blocks: int = 0,
    ) -> None:
        self.model = model
        self.cache = PagedLatentCache(model.cfg, num_blocks, block_size, device=model.device, dtype=model.dtype)
        self.host = HostKVPool(self.cache, host_kv_blocks) if host_kv_blocks else None  # the host KV tier
        self.backend: MLAAttentionBackend = backend or TorchMLAAttention(model.cfg.softmax_scale)
        self.mirror = RequestMirror()
        self.check_plans = check_plans

    @property
    def device(self) -> torch.device:
        return self.model.device

    def execute(self, plan: StepPlan, *, all_logits: bool = False) -> StepForward:
        if plan.block_size != self.cache.block_size:
            raise InvalidRequest(
                f"step {plan.step_id}: plan block_size {plan.block_size} != cache block_size {self.cache.block_size}"
            )
        tokens = self.mirror.begin(plan)
        tables = [self.mirror.block_table(r) for r in plan.request_ids]
        meta = MLAStepMetadata.build(plan, tables, self.device, check=self.check_plans)
        token_t = torch.tensor(tokens, dtype=torch.int64)
        if self.check_plans and tokens:
            lo, hi = int(token_t.min()), int(token_t.max())
            if lo < 0 or hi >= self.model.cfg.vocab_size:
                raise InvalidRequest(
                    f"step {plan.step_id}: token ids span [{lo}, {hi}], outside the vocabulary [0, "
                    f"{self.model.cfg.vocab_size}) (an unresolved placeholder is -1)"
                )
        rows, row_offsets = self._logit_rows(plan, all_logits)
        if plan.kv_transfers:  # loads land before attention reads them
            if self.host is None:
                raise InvalidRequest(f"step {plan.step_id}: host KV transfers but the runner has no host pool")
            self.host.apply(plan.kv_transfers, plan.step_id)
        self.backend.plan(meta)
        with torch.inference_mode():
            hidden = self.model.forward_paged(token_t.to(self.device), meta, self.cache, self.backend)
            if not all_logits:
                hidden = hidden[torch.tensor(rows, dtype=torch.int64, device=self.device)]
            logits = self.model.compute_logits(hidden)
        return StepForward(token_ids=tokens, logits=logits, row_offsets=row_offsets, meta=meta)

    @staticmethod
    def _logit_rows(plan: StepPlan, all_logits: bool) -> tuple[list[int], list[int]]:
        if all_logits:
            return list(range(plan.num_tokens)), list(plan.token_offsets)
        rows: list[int] = []
        offsets = [0]
        for i in range(plan.num_requests):
            if plan.sample[i]:
                end = plan.token_offsets[i + 1]
                rows.extend(range(end - len(plan.draft_token_ids[i]) - 1, end))
            offsets.append(len(rows))
        return rows, offsets

    def finish(self, plan: StepPlan, result: StepResult) -> None:
        """Record the tokens a step accepted, so the next plan's placeholders resolve."""
        self.mirror.finish(plan, result)
